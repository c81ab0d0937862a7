"""Stage multi_evaluate: do a group's multi-image masks beat its members' single-image masks on unseen images?

For every held-out image of multi.groups.<group>, seed and scored round k, each mask is retrained from the
held-out image's own rewind weights (theta_0) on its observation, with the fit and reg-noise seed of its own
LIP rounds: the group's round-k mask of every mode, the round-k LIP mask of every training image, and a
random mask removing exactly as many weights. The held-out image's own LIP round k (a mask found on the
image itself) and its dense fit are read from its rounds, not refitted: they ran the same fit.

    python -m stages.multi_evaluate --group natural --degrade outs/degrade --rounds outs/rounds \
        --multi outs/multi/natural --out outs/evaluate/multi-natural --metrics metrics/multi-natural.json
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lipcore import io, prune
from lipcore.imp import headline_round, nominal_sparsity
from lipcore.methods import baseline_mask
from lipcore.scoring import shown_point
from lipcore.seeding import generator

from .plumbing import artifacts, entry, layout, live
from .plumbing.params import load_params
from .plumbing.retrain import retrain

log = logging.getLogger(__name__)


@live.watches_fits
def main(argv: list[str] | None = None) -> None:
    ap = entry.parser(__doc__)
    ap.add_argument("--group", required=True, help="a key of multi.groups")
    ap.add_argument("--degrade", type=Path, required=True, help="directory of degrade outputs")
    ap.add_argument("--rounds", type=Path, required=True, help="directory of the single-image rounds")
    ap.add_argument("--multi", type=Path, required=True, help="the group's rounds (<mode>/s<seed>/r<round>)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=entry.output_file(".json", ("group", "rounds")), required=True)
    args = entry.start(ap, argv)
    layout.MULTI_EVALUATE_OUT.check(args.out)  # before any work: never replace a folder given by mistake
    params = load_params(args.params)
    multi = params.multi
    group, task = multi.group(args.group), multi.task
    degradation = params.task(task).degradation
    fit_cfg = params.fit_for(task)
    net = params.net
    shown = shown_point(params.protocol)
    scored = params.multi_rounds()

    rows: list[dict[str, Any]] = []
    for seed in params.seeds:
        for image in group.heldout:
            own = args.rounds / layout.pair_id(image, task)
            problem = artifacts.load_problem(args.degrade / layout.pair_id(image, task), degradation, image)
            start, z = artifacts.load_rewind(layout.round_dir(own, seed, 0), net)
            where = {"heldout": image, "seed": seed}
            rows.append({**where, "round": 0, "method": "dense", **fit_record(layout.round_dir(own, seed, 0), 0)})
            planned: list[tuple[int, str, prune.Mask]] = []
            for k in scored:
                rows.append({**where, "round": k, "method": "own", **fit_record(layout.round_dir(own, seed, k), k)})
                masks = {
                    f"multi_{mode}": artifacts.load_round_mask(layout.round_dir(args.multi / mode, seed, k), net, k)
                    for mode in multi.modes
                }
                for member in group.train:
                    member_round = layout.round_dir(args.rounds / layout.pair_id(member, task), seed, k)
                    masks[f"single_{member}"] = artifacts.load_round_mask(member_round, net, k)
                reference = next(iter(masks.values()))
                gen = generator(params.seed, "multi_random", args.group, image, seed, k)
                masks["random_global"] = baseline_mask("random_global", net, start, z, problem, reference, gen)
                planned += [(k, name, mask) for name, mask in masks.items()]
            log.info("seed %s: %d masks onto held-out %s", seed, len(planned), image)
            nets = [(start, mask, f"{image} s{seed} r{k} {name}") for k, name, mask in planned]
            outcomes = retrain(params=params, seed=seed, nets=nets, z=z, problem=problem, fit=fit_cfg)
            for (k, name, mask), outcome in zip(planned, outcomes):
                scores = {**outcome.scores, "sparsity": {"effective": prune.sparsity(mask)}}
                rows.append({**where, "round": k, "method": name, **scores})

    head = headline_round(params.sparsity, params.imp)
    summary = {
        "group": args.group,
        "task": task,
        "train": list(group.train),
        "heldout": list(group.heldout),
        "modes": list(multi.modes),
        "shown_point": shown,
        "headline_round": head,
        "rounds": [
            {
                "round": k,
                "nominal_sparsity": nominal_sparsity(params.imp.fraction, k),
                "psnr": mean_psnr([r for r in rows if r["round"] == k or r["method"] == "dense"], shown),
            }
            for k in scored
        ],
    }
    with layout.MULTI_EVALUATE_OUT.write(args.out) as tmp:
        artifacts.write_numerics(tmp, params.device, fit_cfg)
        io.write_json(tmp / layout.RESULTS, {"summary": summary, "rows": rows})
    io.write_json(args.metrics, summary)


def fit_record(round_dir: Path, k: int) -> dict[str, Any]:
    """The scores of a round's own evaluation fit, as a row of this stage's table."""
    m = artifacts.read_fit_metrics(round_dir, k)
    return {point: m[point] for point in ("oracle_best", "last", "es") if point in m} | {"sparsity": m["sparsity"]}


def mean_psnr(rows: list[dict[str, Any]], point: str) -> dict[str, float]:
    """Mean PSNR at `point` per method over held-out images and seeds (single-image masks pooled as 'single')."""
    values: dict[str, list[float]] = {}
    for r in rows:
        name = "single" if r["method"].startswith("single_") else r["method"]
        values.setdefault(name, []).append(r[point]["psnr"])
    return {name: round(sum(v) / len(v), 3) for name, v in values.items()}


if __name__ == "__main__":
    entry.run(main)
