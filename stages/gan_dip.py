"""Stage gan_dip: the untrained-network baselines of the GAN study at one measurement count m.

The DIP skip net of params `net`, fitted to each test image's measurements (the same A and y as gan_cs at this
m, in DIP's [0, 1] units: y01 = (y + A 1) / 2), dense from theta_0 and with the LIP ticket of the single-image
pipeline's problem gan.dip.ticket (default: the first image and task) at the headline sparsity: its mask and
rewind weights, transferred to compressive sensing, not searched on it. Reported at the protocol's point (ES-WMV
for blind), in the generator's [-1, 1] units.

    python -m stages.gan_dip --m 1000 --testset outs/gan/testset --rounds outs/rounds --out outs/gan/dip/m1000
"""

from __future__ import annotations

from pathlib import Path

import torch

from lipcore.config import DegradationConfig
from lipcore.imp import headline_round
from lipcore.physics import CompressiveSensing, Problem
from lipcore.scoring import reported_images, shown_point
from lipcore.seeding import derive_seed
from lipcore.trials import Trial, initialisation, train_and_score

from .plumbing import artifacts, entry, gan_study, layout, live
from .plumbing.params import load_params


@live.watches_fits
def main(argv: list[str] | None = None) -> None:
    ap = entry.parser(__doc__)
    ap.add_argument("--m", type=int, required=True, help="measurements (one of gan.cs.m)")
    ap.add_argument("--testset", type=Path, required=True)
    ap.add_argument("--rounds", type=Path, required=True, help="the single-image problems' rounds (outs/rounds)")
    ap.add_argument("--out", type=Path, required=True)
    args = entry.start(ap, argv)
    layout.GAN_CS_OUT.check(args.out)
    params = load_params(args.params)
    net_cfg = params.net
    x, names, kinds, a, y = gan_study.measured_testset(params, args.testset, args.m)

    k = headline_round(params.sparsity, params.imp)
    problem, seed = params.gan_ticket()
    ticket = args.rounds / problem
    mask = artifacts.load_round_mask(layout.round_dir(ticket, seed, k), net_cfg, k)
    ticket_start, _ = artifacts.load_rewind(layout.round_dir(ticket, seed, 0), net_cfg)
    theta0, z = initialisation(net_cfg, params.seed, seed, *gan_study.SHAPE[1:])

    noise = params.gan.cs.noise_std / 2
    degradation = DegradationConfig(task="cs", sigma=noise, ratio=args.m / gan_study.N_PIXELS)
    op = CompressiveSensing(gan_study.SHAPE, noise, a)
    y01 = (y + a.sum(dim=1)) / 2  # A (x + 1) / 2 = (A x + A 1) / 2: the same measurements in [0, 1] units
    stream = derive_seed(params.seed, "gan", "dip", seed)
    trials = [
        Trial(start, z, Problem(op, y01[i : i + 1], (x[i : i + 1] + 1) / 2, degradation), m, stream, f"m{args.m} {n}")
        for start, m, kind in ((theta0, None, "dip"), (ticket_start, mask, "dip_lip"))
        for i, n in enumerate(f"{name} {kind}" for name in names)
    ]
    fit_cfg = params.gan_dip_fit()
    outcomes = train_and_score(net_cfg, trials, fit_cfg, device=params.device)
    point = shown_point(params.protocol)
    images = torch.cat([reported_images(o.result, fit_cfg)[point] for o in outcomes]) * 2 - 1
    n = len(names)
    recovered = {"dip": images[:n], f"dip_lip@{k}": images[n:]}
    results = {
        "m": args.m,
        "images": names,
        "kinds": kinds,
        "point": point,
        "ticket": {"problem": ticket.name, "seed": seed, "round": k},
        "methods": {name: gan_study.per_image(v, x, names) for name, v in recovered.items()},
    }
    with layout.GAN_CS_OUT.write(args.out) as tmp:
        artifacts.write_numerics(tmp, params.device, fit_cfg)
        gan_study.write_recoveries(tmp, recovered, results)


if __name__ == "__main__":
    entry.run(main)
