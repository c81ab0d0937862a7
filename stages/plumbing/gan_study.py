"""What the GAN study's stages share: the test set, the round directories, the measurements and the latent search.

Every random draw comes from a stream named after what it is for (lipcore.seeding), so that every stage that
needs the same thing draws the same thing: gan_cs and gan_dip see the same A and y at each m; every generator is
searched from the same starting latents, so per-image differences between generators are paired.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lipcore import io, prune
from lipcore.csgm import N_PIXELS, Recovery, check_measurements, gaussian_matrix, measure, recover, with_outliers
from lipcore.gan import IMAGE_SIZE, LATENT_DIM, DCGANGenerator, face_image, in_range_images, load_generator
from lipcore.gan_prune import rewound
from lipcore.metrics import mse, psnr_from_mse
from lipcore.runtime import resolve_device
from lipcore.seeding import generator

from . import artifacts, layout
from .params import Params

SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)  # the generator's images
KINDS = ("in_range", "face")

# ---------------------------------------------------------------- the test set


def make_testset(params: Params, dense: nn.Module, faces: Path) -> tuple[Tensor, list[str], list[str]]:
    """(images (N, 3, 64, 64) in [-1, 1], names, kinds): gan.in_range images of the dense generator from a latent
    stream no training step draws from, then the real faces gan.faces."""
    gan = params.gan
    x = [in_range_images(dense, gan.in_range, generator(params.seed, "gan", "in_range"))]
    names = [f"G{i}" for i in range(gan.in_range)]
    x += [face_image(Path(faces) / f"{name}.png")[None] for name in gan.faces]
    names += list(gan.faces)
    kinds = ["in_range"] * gan.in_range + ["face"] * len(gan.faces)
    return torch.cat(x), names, kinds


def save_testset(out: Path, x: Tensor, names: list[str], kinds: list[str]) -> None:
    io.save_tensors(out / layout.TESTSET, {"x": x}, {"names": names, "kinds": kinds})
    io.save_png(((torch.cat(list(x), dim=-1) + 1) / 2)[None], out / layout.TESTSET_PNG)  # side by side


def load_testset(testset: Path) -> tuple[Tensor, list[str], list[str]]:
    path = Path(testset) / layout.TESTSET
    tensors, meta = io.load_tensors(path)
    artifacts.require(tensors, ("x",), path)
    artifacts.require(meta, ("names", "kinds"), path)
    x = tensors["x"]
    if x.dim() != 4 or tuple(x.shape[1:]) != SHAPE or len(meta["names"]) != x.shape[0]:
        raise ValueError(f"{path}: expected N 64x64 RGB images with N names, got {tuple(x.shape)}; rerun gan_prepare")
    return x, list(meta["names"]), list(meta["kinds"])


# ---------------------------------------------------------------- round directories


def load_round(
    round_dir: Path, k: int, which: str = "lip", parent_optional: bool = False
) -> tuple[DCGANGenerator, prune.Mask | None]:
    """Round k's generator and mask ('lip' or its 'random' control); round 0: the pretrained generator, no mask.

    The mask is refused unless its real sparsity is the one its metadata and metrics.json record, and (LIP's,
    from round 2) it is nested in round k-1's beside it; parent_optional: skip that when round k-1's mask is
    absent (gan_imp_round, whose inputs are round 0 and round k-1)."""
    round_dir = Path(round_dir)
    record = artifacts.read_gan_record(round_dir)
    if record["round"] != k:
        raise ValueError(f"{round_dir} holds GAN round {record['round']}, expected round {k}; check the chain")
    files = {"lip": (layout.GENERATOR, layout.MASK), "random": (layout.RANDOM_GENERATOR, layout.RANDOM_MASK)}
    weights, mask_file = files[which]
    net = load_generator(round_dir / weights)
    if k == 0:
        return net, None
    path = round_dir / mask_file
    mask, meta = prune.load_mask(path, net)
    artifacts.check_mask_sparsity(path, mask, meta, record["sparsity"], round_dir / layout.FIT_METRICS, k)
    if which == "lip":
        artifacts.check_parent_nesting(path, mask, k, lambda parent: prune.load_mask(parent, net)[0], parent_optional)
    return net, mask


def generators(params: Params, rounds: Path) -> dict[str, nn.Module]:
    """Every generator the study scores, by method name: dense; lip@k (IMP, distilled), random@k (random mask of
    round k's layer-wise sparsity, distilled) and rewind@k (round k's mask on the pretrained weights, no
    retraining; unless gan.rewind is off) for every scored round (gan.scored; default every round of gan.chain)."""
    dense, _ = load_round(layout.gan_round_dir(0, rounds), 0)
    nets: dict[str, nn.Module] = {"dense": dense}
    for k in params.gan.scored_rounds:
        lip, mask = load_round(layout.gan_round_dir(k, rounds), k)
        random, _ = load_round(layout.gan_round_dir(k, rounds), k, "random")
        nets.update({f"lip@{k}": lip, f"random@{k}": random})
        if params.gan.rewind:
            nets[f"rewind@{k}"] = rewound(dense, mask)
    return nets


# ---------------------------------------------------------------- measurements and the latent search


def measurements(
    params: Params, m: int, x: Tensor, outliers: bool = False, stream: str = "test"
) -> tuple[Tensor, Tensor]:
    """A (m, 12288) with N(0, 1/m) entries and y = A x + noise, drawn from streams named by m (and `stream`: the
    tuning image is measured by another A); with `outliers`, the robust setting's last gan.cs.outliers rows
    replaced by all-ones rows measuring gan.cs.outlier_value."""
    cs = params.gan.cs
    a = gaussian_matrix(m, N_PIXELS, generator(params.seed, "gan", "A", stream, m))
    y = measure(a, x, cs.noise_std, generator(params.seed, "gan", "noise", stream, m))
    if outliers:
        a, rows = with_outliers(a, cs.outliers, cs.outlier_value)
        y = y.clone()
        y[:, rows] = cs.outlier_value
    return a, y


def measured_testset(params: Params, testset: Path, m: int) -> tuple[Tensor, list[str], list[str], Tensor, Tensor]:
    """The test set and its measurements at m, as gan_cs and gan_dip both see them: (x, names, kinds, A, y)."""
    check_measurements("--m", (m,))
    x, names, kinds = load_testset(testset)
    return x, names, kinds, *measurements(params, m, x)


def start_latents(params: Params, m: int, images: int) -> Tensor:
    """The starting latents of every search at m (images x restarts rows): the same for every generator."""
    return torch.randn(images * params.gan.cs.restarts, LATENT_DIM, generator=generator(params.seed, "gan", "z0", m))


def search(params: Params, net: nn.Module, a: Tensor, y: Tensor, z0: Tensor, loss: str = "ls") -> Recovery:
    """CSGM on `net` for every image at once, on params.device; the result on the CPU."""
    cs = params.gan.cs
    device = resolve_device(params.device)
    net = net.to(device)
    got = recover(
        net,
        a.to(device),
        y.to(device),
        latent_dim=LATENT_DIM,
        restarts=cs.restarts,
        iterations=cs.iterations,
        lr=cs.lr,
        loss=loss,
        block=cs.mom_block,
        z0=z0.to(device),
    )
    return Recovery(got.x.cpu(), got.z.cpu(), got.loss.cpu(), got.curve.cpu() if got.curve is not None else None)


CURVE_POINTS = 100  # points of a search's loss curve kept in results.json


def curve_every(params: Params) -> int:
    """The steps between two kept points of a search curve."""
    return max(1, params.gan.cs.iterations // CURVE_POINTS)


def search_curve(got: Recovery, every: int) -> list[float]:
    """The mean over images of the kept restarts' measurement loss, before every `every`-th Adam step and after
    the last (got.loss): the curve that shows whether the search had flattened."""
    if got.curve is None:
        return [float(got.loss.mean())]
    return [float(v) for v in got.curve[::every].mean(dim=1)] + [float(got.loss.mean())]


def per_image(x_hat: Tensor, x: Tensor, names: list[str], extra: dict[str, Tensor] | None = None) -> list[dict]:
    """Per test image: per-pixel MSE in the generator's [-1, 1] units (as the paper) and PSNR on [0, 1]."""
    err = mse(x_hat, x)
    psnr = psnr_from_mse(err.clamp_min(1e-12), data_range=2.0)  # = PSNR of the images mapped to [0, 1]
    rows = []
    for i, name in enumerate(names):
        row: dict[str, Any] = {"image": name, "mse": float(err[i]), "psnr": float(psnr[i])}
        row.update({k: float(v[i]) for k, v in (extra or {}).items()})
        rows.append(row)
    return rows


def write_recoveries(out: Path, recovered: dict[str, Tensor], results: dict[str, Any]) -> None:
    """Every method's recovered images (recovered.safetensors) and per-image numbers (results.json)."""
    io.save_tensors(out / layout.RECOVERED, recovered, {"m": results.get("m")})
    io.write_json(out / layout.RESULTS, results)
