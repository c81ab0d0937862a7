"""Stage imp_round: IMP round k for one image x task x seed.

Prunes a fraction of the remaining weights of round k-1's trained net by magnitude, rewinds to theta_0 (or
the late-rewind state), retrains with the new mask, and scores the fit.

    python -m stages.imp_round --obs outs/degrade/f16-denoise --task denoise --seed 0 --round 2 \
        --dense outs/rounds/f16-denoise/s0/r0 --parent outs/rounds/f16-denoise/s0/r1 \
        --out outs/rounds/f16-denoise/s0/r2
"""

from __future__ import annotations

from pathlib import Path

from lipcore import io, prune
from lipcore.lottery import next_mask, reported_images, train_and_score
from lipcore.seeding import derive_seed

from . import common


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--obs", type=Path, required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--round", type=int, required=True)
    ap.add_argument("--dense", type=Path, required=True, help="round-0 directory (theta_0, z, rewind state)")
    ap.add_argument("--parent", type=Path, required=True, help="round k-1 directory")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    params = common.load_params(args.params)
    net_cfg, prune_cfg = common.net_cfg(params), common.prune_cfg(params)
    fit_cfg = common.fit_cfg(params, args.task)
    parent_meta = io.read_json(args.parent / common.METRICS)
    if parent_meta["round"] != args.round - 1:
        raise ValueError(f"{args.parent} holds round {parent_meta['round']}, expected round {args.round - 1}")

    parent_mask = common.load_round_mask(args.parent, net_cfg)
    trained = common.load_weights(args.parent / common.TRAINED, net_cfg)
    mask = next_mask(net_cfg, trained, parent_mask, prune_cfg)
    start = common.load_weights(args.dense / common.REWIND, net_cfg)
    _, z = common.load_init(args.dense)
    problem = common.load_problem(args.obs)
    outcome = train_and_score(
        net_cfg,
        start,
        z,
        problem,
        fit_cfg,
        common.protocol(params),
        mask,
        seed=derive_seed(params["seed"], "fit", args.seed),
        device=common.device(params),
        search=common.search_cfg(params),
        prune_cfg=prune_cfg,
    )
    rep = prune.report(mask, prune_cfg.fraction, args.round)
    meta = {
        "round": args.round,
        "parent": str(args.parent),
        "seed": args.seed,
        "prune": common.cfg_dict(prune_cfg),
        "net": common.cfg_dict(net_cfg),
    }
    with io.atomic_dir(args.out) as tmp:
        prune.save_mask(tmp / common.MASK, mask, {**meta, "nominal_sparsity": rep.nominal})
        io.save_tensors(tmp / common.TRAINED, outcome.state, meta)
        extra = {"round": args.round, "sparsity": rep.as_dict(), "search_iterations": outcome.search_iterations}
        images = reported_images(outcome.result, fit_cfg)
        common.write_fit_outputs(tmp, outcome.result, outcome.scores, images, extra)


if __name__ == "__main__":
    main()
