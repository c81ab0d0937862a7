"""Stage gan_cs: compressive sensing of the test set at one measurement count m, with every generator.

y = A x + noise (A Gaussian, N(0, 1/m) entries; gan.cs.noise_std in the generator's [-1, 1] units). Each
generator (dense, lip@k, random@k, rewind@k) recovers x_hat = G(z_hat) by CSGM: Adam on z from gan.cs.restarts
starts per image, the same starts for every generator, the restart kept by its measurement loss. Beside them:
FISTA in the 2-D DCT, its lambda picked on gan.tune_face (not a test image), and the adjoint A^T y (scaled to
the least-squares fit along it) as the no-prior reference.

    python -m stages.gan_cs --m 1000 --rounds outs/gan/rounds --testset outs/gan/testset --faces data/faces \
        --out outs/gan/cs/m1000
"""

from __future__ import annotations

from pathlib import Path

import torch

from lipcore.fista import fista_dct, pick_lambda
from lipcore.gan import face_image
from lipcore.runtime import resolve_device

from .plumbing import artifacts, entry, gan_study, layout
from .plumbing.params import Params, load_params


def main(argv: list[str] | None = None) -> None:
    ap = entry.parser(__doc__)
    ap.add_argument("--m", type=int, required=True, help="measurements (one of gan.cs.m)")
    ap.add_argument("--rounds", type=Path, required=True)
    ap.add_argument("--testset", type=Path, required=True)
    ap.add_argument("--faces", type=Path, required=True, help="directory holding gan.tune_face")
    ap.add_argument("--out", type=Path, required=True)
    args = entry.start(ap, argv)
    layout.GAN_CS_OUT.check(args.out)
    params = load_params(args.params)
    x, names, kinds, a, y = gan_study.measured_testset(params, args.testset, args.m)
    nets = gan_study.generators(params, args.rounds)
    z0 = gan_study.start_latents(params, args.m, len(names))

    recovered, rows, curves = {}, {}, {}
    for method, net in nets.items():
        got = gan_study.search(params, net, a, y, z0)
        recovered[method] = got.x
        rows[method] = gan_study.per_image(got.x, x, names, {"measurement_loss": got.loss})
        curves[method] = gan_study.search_curve(got, gan_study.curve_every(params))

    fista = params.gan.fista
    tune = face_image(args.faces / f"{params.gan.tune_face}.png")[None]
    tune_a, tune_y = gan_study.measurements(params, args.m, tune, stream="tune")
    lam, tried, recovered["fista"] = fista_baseline(params, a, y, tuple(x.shape[1:]), (tune_a, tune_y, tune))
    rows["fista"] = gan_study.per_image(recovered["fista"], x, names)
    recovered["adjoint"] = adjoint(a, y, x.shape)
    rows["adjoint"] = gan_study.per_image(recovered["adjoint"], x, names)

    results = {
        "m": args.m,
        "images": names,
        "kinds": kinds,
        "fista": {"lambda": lam, "lambdas": list(fista.lambdas), "tune_mse": tried, "tune_face": params.gan.tune_face},
        "methods": rows,
        # has the search flattened before its end? each generator's mean measurement loss over the test images
        "search_curve": {"every": gan_study.curve_every(params), "methods": curves},
    }
    with layout.GAN_CS_OUT.write(args.out) as tmp:
        artifacts.write_numerics(tmp, params.device)  # the latent search and FISTA: fp32
        gan_study.write_recoveries(tmp, recovered, results)


def fista_baseline(
    params: Params, a: torch.Tensor, y: torch.Tensor, shape: tuple[int, int, int], tuning: tuple[torch.Tensor, ...]
) -> tuple[float, list[float], torch.Tensor]:
    """FISTA-DCT on params.device (the matrix products of 300 iterations x 5 lambdas are slow on one CPU thread):
    lambda picked on the tuning image (its A, y, x), then the test set recovered; (lambda, tune MSEs, images on CPU)."""
    fista = params.gan.fista
    device = resolve_device(params.device)
    tune_a, tune_y, tune = (t.to(device) for t in tuning)
    lam, tried = pick_lambda(tune_a, tune_y, tune, fista.lambdas, fista.iterations)
    return lam, tried, fista_dct(a.to(device), y.to(device), shape, lam, fista.iterations).cpu()


def adjoint(a: torch.Tensor, y: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A^T y scaled per image by the least-squares step along it (what an image looks like with no prior)."""
    back = y @ a
    fwd = back @ a.T
    scale = (fwd * y).sum(1, keepdim=True) / fwd.square().sum(1, keepdim=True).clamp_min(1e-12)
    return (scale * back).view(shape).clamp(-1, 1)


if __name__ == "__main__":
    entry.run(main)
