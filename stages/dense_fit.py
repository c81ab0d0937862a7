"""Stage dense_fit: one image x task x seed -> theta_0 and z, the trained dense weights, history, metrics.

This is round 0 of the IMP chain: its directory is the parent of round 1, and its rewind weights (theta_0,
or its weights at imp.rewind_iteration) are what every later round starts from.

    python -m stages.dense_fit --obs outs/degrade/f16-denoise --task denoise --seed 0 \
        --out outs/rounds/f16-denoise/s0/r0
"""

from __future__ import annotations

from pathlib import Path

from lipcore.trials import initialisation

from .plumbing import artifacts, entry, live
from .plumbing.params import load_params
from .plumbing.rounds import dense_round


@live.watches_fits
def main(argv: list[str] | None = None) -> None:
    ap = entry.parser(__doc__)
    ap.add_argument("--obs", type=Path, required=True, help="degrade output directory")
    ap.add_argument("--task", required=True)
    ap.add_argument("--seed", type=int, required=True, help="initialisation index")
    ap.add_argument("--out", type=Path, required=True)
    args = entry.start(ap, argv)
    artifacts.check_round_out(args.out, args.seed, 0, (args.obs,))  # before any work
    params = load_params(args.params)
    problem = artifacts.load_problem(args.obs, params.task(args.task).degradation)
    start = initialisation(params.net, params.seed, args.seed, *problem.x_true.shape[-2:])
    dense_round(params, args.task, problem, args.seed, start, args.out)


if __name__ == "__main__":
    entry.run(main)
