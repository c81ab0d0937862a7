"""Stage imp_round: IMP round k for one image x task x seed.

Prunes a fraction of the remaining weights of round k-1's trained net by magnitude, rewinds to theta_0 (or
the late-rewind state), retrains with the new mask, and scores the fit.

    python -m stages.imp_round --obs outs/degrade/f16-denoise --task denoise --seed 0 --round 2 \
        --dense outs/rounds/f16-denoise/s0/r0 --parent outs/rounds/f16-denoise/s0/r1 \
        --out outs/rounds/f16-denoise/s0/r2
"""

from __future__ import annotations

from pathlib import Path

from .plumbing import artifacts, entry, live
from .plumbing.params import load_params
from .plumbing.rounds import pruned_round


@live.watches_fits
def main(argv: list[str] | None = None) -> None:
    ap = entry.parser(__doc__)
    ap.add_argument("--obs", type=Path, required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--round", type=int, required=True)
    ap.add_argument("--dense", type=Path, required=True, help="round-0 directory (theta_0, z, rewind state)")
    ap.add_argument("--parent", type=Path, required=True, help="round k-1 directory")
    ap.add_argument("--out", type=Path, required=True)
    args = entry.start(ap, argv)
    artifacts.check_round_out(args.out, args.seed, args.round, (args.obs, args.dense, args.parent))  # before work
    params = load_params(args.params)
    problem = artifacts.load_problem(args.obs, params.task(args.task).degradation)
    pruned_round(params, args.task, problem, args.seed, args.round, args.dense, args.parent, args.out)


if __name__ == "__main__":
    entry.run(main)
