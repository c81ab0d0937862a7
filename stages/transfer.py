"""Stage transfer: masks found on image A / task T, retrained from theta_0 on image B / task T'.

For every ordered pair of (image, task) problems and every seed, the headline-round LIP mask of the source
is retrained from the target's rewind state on the target's observation. The diagonal is the target's own
LIP round. Writes the cross-image / cross-task PSNR matrix (mean +- std over seeds).

    python -m stages.transfer --degrade outs/degrade --rounds outs/rounds --out outs/transfer \
        --metrics metrics/transfer.json
"""

from __future__ import annotations

from pathlib import Path

from lipcore import io
from lipcore.lottery import Trial, summarise, train_and_score_many
from lipcore.seeding import derive_seed

from . import common
from .evaluate import headline_round


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--degrade", type=Path, required=True, help="directory of degrade outputs")
    ap.add_argument("--rounds", type=Path, required=True, help="directory of round outputs")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    args = ap.parse_args(argv)
    params = common.load_params(args.params)
    head = headline_round(params)
    net_cfg = common.net_cfg(params)
    shown = common.shown_point(common.protocol(params))
    pairs = [(image, task) for image in params["images"] for task in params["tasks"]]
    ids = [common.pair_id(*p) for p in pairs]

    cells: dict[str, dict[str, list[dict]]] = {s: {t: [] for t in ids} for s in ids}
    if head == 0:
        raise ValueError("transfer needs a sparse headline round: set sparsity > 0")
    for seed in params["seeds"]:
        fit_seed = derive_seed(params["seed"], "fit", seed)
        for (_, t_task), tgt in zip(pairs, ids):
            problem = common.load_problem(args.degrade / tgt)
            start = common.load_weights(args.rounds / tgt / f"s{seed}" / "r0" / common.REWIND, net_cfg)
            _, z = common.load_init(args.rounds / tgt / f"s{seed}" / "r0")
            fit_cfg = common.fit_cfg(params, t_task)
            # the target's own LIP round on the diagonal; the other sources' masks in one batched fit_many
            cells[tgt][tgt].append(io.read_json(args.rounds / tgt / f"s{seed}" / f"r{head}" / common.METRICS))
            sources = [src for src in ids if src != tgt]
            masks = [common.load_round_mask(args.rounds / src / f"s{seed}" / f"r{head}", net_cfg) for src in sources]
            trials = [Trial(start, z, problem, mask, fit_seed) for mask in masks]
            outcomes = train_and_score_many(net_cfg, trials, fit_cfg, "blind", common.device(params))
            for src, outcome in zip(sources, outcomes):
                cells[src][tgt].append(outcome.scores)

    matrix = {s: {t: summarise(v) for t, v in row.items()} for s, row in cells.items()}
    psnr = {s: {t: round(m[f"{shown}_psnr"]["mean"], 3) for t, m in row.items()} for s, row in matrix.items()}
    result = {"round": head, "point": shown, "psnr": psnr}
    with io.atomic_dir(args.out) as tmp:
        io.write_json(tmp / "matrix.json", {**result, "full": matrix, "per_seed": cells})
    io.write_json(args.metrics, result)


if __name__ == "__main__":
    main()
