"""Stage dense_fit: one image x task x seed -> theta_0 and z, the trained dense weights, history, metrics.

This is round 0 of the IMP chain: its directory is the parent of round 1.

    python -m stages.dense_fit --obs outs/degrade/f16-denoise --seed 0 --out outs/rounds/f16-denoise/s0/r0
"""

from __future__ import annotations

from pathlib import Path

from lipcore import io
from lipcore.lottery import reported_images, train_and_score
from lipcore.seeding import derive_seed

from . import common


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--obs", type=Path, required=True, help="degrade output directory")
    ap.add_argument("--task", required=True)
    ap.add_argument("--seed", type=int, required=True, help="initialisation index")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    params = common.load_params(args.params)
    problem = common.load_problem(args.obs)
    net_cfg = common.net_cfg(params)
    fit_cfg = common.fit_cfg(params, args.task, rewind_iteration=common.rewind_iteration(params))
    root = params["seed"]

    theta0, z = common.initial_net(params, args.seed, *problem.x_true.shape[-2:])
    outcome = train_and_score(
        net_cfg,
        theta0,
        z,
        problem,
        fit_cfg,
        common.protocol(params),
        None,
        seed=derive_seed(root, "fit", args.seed),
        device=common.device(params),
        search=common.search_cfg(params),
        prune_cfg=common.prune_cfg(params),
    )
    meta = {"seed": args.seed, "net": common.cfg_dict(net_cfg)}
    with io.atomic_dir(args.out) as tmp:
        common.save_init(tmp, theta0, z, meta)
        io.save_tensors(tmp / common.REWIND, outcome.rewind_state, {**meta, "iteration": fit_cfg.rewind_iteration})
        io.save_tensors(tmp / common.TRAINED, outcome.state, {**meta, "round": 0})
        sparsity = {"nominal": 0.0, "effective": 0.0}
        extra = {"round": 0, "sparsity": sparsity, "search_iterations": outcome.search_iterations}
        images = reported_images(outcome.result, fit_cfg)
        common.write_fit_outputs(tmp, outcome.result, outcome.scores, images, extra)


if __name__ == "__main__":
    main()
