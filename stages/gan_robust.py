"""Stage gan_robust: the official code's robust setting, least squares (ERM) against median-of-means (MOM).

gan.cs.robust_m Gaussian measurements of which the last gan.cs.outliers rows are replaced by all-ones rows
measuring gan.cs.outlier_value (Jalal et al. 2020). The dense generator and the last LIP round recover the test
set with each loss from the same starting latents; MOM (blocks of gan.cs.mom_block rows) should shrug off the
outliers that least squares follows.

    python -m stages.gan_robust --rounds outs/gan/rounds --testset outs/gan/testset --out outs/gan/cs/robust
"""

from __future__ import annotations

from pathlib import Path

from .plumbing import artifacts, entry, gan_study, layout
from .plumbing.params import load_params


def main(argv: list[str] | None = None) -> None:
    ap = entry.parser(__doc__)
    ap.add_argument("--rounds", type=Path, required=True)
    ap.add_argument("--testset", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = entry.start(ap, argv)
    layout.GAN_CS_OUT.check(args.out)
    params = load_params(args.params)
    if not params.gan.robust:  # left out (gan.robust: false): a record that says so, and no search
        with layout.GAN_CS_OUT.write(args.out) as tmp:
            gan_study.write_recoveries(tmp, {}, {"m": None, "off": True, "images": [], "methods": {}})
        return
    cs = params.gan.cs
    x, names, kinds = gan_study.load_testset(args.testset)
    last = params.gan.rounds[-1]
    dense, _ = gan_study.load_round(layout.gan_round_dir(0, args.rounds), 0)
    lip, _ = gan_study.load_round(layout.gan_round_dir(last, args.rounds), last)
    a, y = gan_study.measurements(params, cs.robust_m, x, outliers=True)
    z0 = gan_study.start_latents(params, cs.robust_m, len(names))

    recovered, rows = {}, {}
    for method, net in (("dense", dense), (f"lip@{last}", lip)):
        for loss in ("ls", "mom"):
            got = gan_study.search(params, net, a, y, z0, loss)
            recovered[f"{method}/{loss}"] = got.x
            rows[f"{method}/{loss}"] = gan_study.per_image(got.x, x, names, {"measurement_loss": got.loss})
    results = {
        "m": cs.robust_m,
        "outliers": cs.outliers,
        "outlier_value": cs.outlier_value,
        "mom_block": cs.mom_block,
        "images": names,
        "kinds": kinds,
        "methods": rows,
    }
    with layout.GAN_CS_OUT.write(args.out) as tmp:
        artifacts.write_numerics(tmp, params.device)  # the latent search and FISTA: fp32
        gan_study.write_recoveries(tmp, recovered, results)


if __name__ == "__main__":
    entry.run(main)
