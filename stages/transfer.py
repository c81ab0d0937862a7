"""Stage transfer: masks found on image A / task T, retrained from theta_0 on image B / task T'.

For every ordered pair of (image, task) problems that transfer.pairs selects (all; or only across tasks, same
image; or only across images, same task) and every seed, the headline-round LIP mask of the source is
retrained from the target's rewind state on the target's observation. The diagonal is the target's own LIP
round. Writes the cross-image / cross-task PSNR matrix (mean +- std over seeds; unmeasured pairs absent).

    python -m stages.transfer --degrade outs/degrade --rounds outs/rounds --out outs/transfer \
        --metrics metrics/transfer.json
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lipcore import io
from lipcore.imp import headline_round
from lipcore.scoring import shown_point, summarise

from .plumbing import artifacts, entry, layout, live
from .plumbing.params import Params, TransferConfig, load_params
from .plumbing.retrain import retrain

log = logging.getLogger(__name__)


@live.watches_fits
def main(argv: list[str] | None = None) -> None:
    ap = entry.parser(__doc__)
    ap.add_argument("--degrade", type=Path, required=True, help="directory of degrade outputs")
    ap.add_argument("--rounds", type=Path, required=True, help="directory of round outputs")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=entry.output_file(".json", ("round", "point", "psnr")), required=True)
    args = entry.start(ap, argv)
    layout.TRANSFER_OUT.check(args.out)  # before any work: never replace a folder given by mistake
    params = load_params(args.params)
    head = headline_round(params.sparsity, params.imp)
    shown = shown_point(params.protocol)
    pairs = [(image, task) for image in params.images for task in params.tasks]
    nothing = nothing_to_transfer(head, pairs, params.transfer)
    if nothing:  # a valid setup with no transfer to measure: an empty matrix that says why
        log.info("transfer: %s", nothing)
        cells = {}
    else:
        cells = measure(params, args.degrade, args.rounds, pairs, head)

    record = tabulate(cells, head, shown, nothing)
    with layout.TRANSFER_OUT.write(args.out) as tmp:
        artifacts.write_numerics(tmp, params.device, params.fit)
        io.write_json(tmp / layout.MATRIX, record)
    io.write_json(args.metrics, {k: v for k, v in record.items() if k not in ("full", "per_seed")})


def tabulate(cells: dict[str, dict[str, list[dict]]], head: int, shown: str, nothing: str | None) -> dict[str, Any]:
    """The matrix record (matrix.json) of per-seed scores `cells` (source -> target -> one per seed): each cell's
    mean +- std over seeds, its `shown` PSNR to 3 decimals, and why nothing was measured, if so."""
    matrix = {s: {t: summarise(v) for t, v in row.items()} for s, row in cells.items()}
    psnr = {s: {t: round(m[f"{shown}_psnr"]["mean"], 3) for t, m in row.items()} for s, row in matrix.items()}
    result = {"round": head, "point": shown, "psnr": psnr, **({"note": nothing} if nothing else {})}
    return {**result, "full": matrix, "per_seed": cells}


def measure(
    params: Params, degrade: Path, rounds_dir: Path, pairs: list[tuple[str, str]], head: int
) -> dict[str, dict[str, list[dict]]]:
    """Scores (per source, per target, one per seed) of every headline mask retrained on every problem."""
    ids = [layout.pair_id(*p) for p in pairs]
    cells: dict[str, dict[str, list[dict]]] = {s: {s: []} for s in ids}
    for seed in params.seeds:
        for (image, task), tgt in zip(pairs, ids):
            problem = artifacts.load_problem(degrade / tgt, params.task(task).degradation, image)
            start, z = artifacts.load_rewind(layout.round_dir(rounds_dir / tgt, seed, 0), params.net)
            # the target's own LIP round on the diagonal; the other sources' masks in one batched fit
            cells[tgt][tgt].append(artifacts.read_fit_metrics(layout.round_dir(rounds_dir / tgt, seed, head), head))
            sources = [src for src, pair in zip(ids, pairs) if params.transfer.measures(pair, (image, task))]
            if not sources:
                continue
            log.info("seed %s: %d masks onto %s", seed, len(sources), tgt)
            rounds = [layout.round_dir(rounds_dir / src, seed, head) for src in sources]
            masks = [artifacts.load_round_mask(r, params.net, head) for r in rounds]
            nets = [(start, mask, f"{src}>{tgt}") for mask, src in zip(masks, sources)]
            outcomes = retrain(params=params, seed=seed, nets=nets, z=z, problem=problem, fit=params.fit_for(task))
            for src, outcome in zip(sources, outcomes):
                cells[src].setdefault(tgt, []).append(outcome.scores)
    return cells


def nothing_to_transfer(head: int, pairs: list[tuple[str, str]], cfg: TransferConfig) -> str | None:
    """Why there is no transfer to measure (None: there is)."""
    if head == 0:
        return "sparsity 0: the headline round is the dense fit, there is no mask to transfer"
    if len(pairs) == 1:
        return f"one image x task problem only ({layout.pair_id(*pairs[0])}): no other problem to transfer its masks to"
    if not any(cfg.measures(s, t) for s in pairs for t in pairs):
        return f"transfer.pairs is {cfg.pairs}: no two problems of this run form such a pair"
    return None


if __name__ == "__main__":
    entry.run(main)
