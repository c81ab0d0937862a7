"""Stage multi_round: IMP round k of a multi-image group (multi.groups.<group>) in one mode, for one seed.

The group's training images, each degraded as multi.task asks, are fitted at once (lipcore.multi: 'shared'
or 'average'); rounds chain exactly as a single image's (round 0 dense, round k prunes round k-1), from the
single-image fits' theta_0.

    python -m stages.multi_round --group natural --mode shared --seed 0 --round 0 --degrade outs/degrade \
        --out outs/multi/natural/shared/s0/r0
    python -m stages.multi_round --group natural --mode shared --seed 0 --round 2 --degrade outs/degrade \
        --dense outs/multi/natural/shared/s0/r0 --parent outs/multi/natural/shared/s0/r1 \
        --out outs/multi/natural/shared/s0/r2
"""

from __future__ import annotations

from pathlib import Path

from lipcore.multi import MODES, group_problem, group_size
from lipcore.trials import group_initialisation

from .plumbing import artifacts, entry, layout, live
from .plumbing.params import Params, load_params
from .plumbing.rounds import dense_round, pruned_round


@live.watches_fits
def main(argv: list[str] | None = None) -> None:
    ap = entry.parser(__doc__)
    ap.add_argument("--group", required=True, help="a key of multi.groups")
    ap.add_argument("--mode", required=True, choices=MODES)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--round", type=int, required=True)
    ap.add_argument("--degrade", type=Path, required=True, help="directory of degrade outputs")
    ap.add_argument("--dense", type=Path, help="round-0 directory (rounds >= 1)")
    ap.add_argument("--parent", type=Path, help="round k-1 directory (rounds >= 1)")
    ap.add_argument("--out", type=Path, required=True)
    args = entry.start(ap, argv)
    if (args.dense is not None, args.parent is not None) != (args.round > 0,) * 2:
        ap.error("round 0 takes neither --dense nor --parent; rounds >= 1 take both")
    inputs = tuple(p for p in (args.degrade, args.dense, args.parent) if p is not None)
    artifacts.check_round_out(args.out, args.seed, args.round, inputs)  # before any work
    params = load_params(args.params)
    task = params.multi.task
    problem = group_problem(load_group(params, args.group, args.degrade), args.mode)
    if args.round == 0:
        inputs_z = group_size(args.mode, len(params.multi.group(args.group).train))
        start = group_initialisation(params.net, params.seed, args.seed, inputs_z, *problem.x_true.shape[-2:])
        dense_round(params, task, problem, args.seed, start, args.out)
    else:
        pruned_round(params, task, problem, args.seed, args.round, args.dense, args.parent, args.out)


def load_group(params: Params, group: str, degrade: Path) -> list:
    """The observations of a group's training images (multi.task), in the order params lists them."""
    task = params.multi.task
    degradation = params.task(task).degradation
    return [
        artifacts.load_problem(degrade / layout.pair_id(image, task), degradation, image)
        for image in params.multi.group(group).train
    ]


if __name__ == "__main__":
    entry.run(main)
