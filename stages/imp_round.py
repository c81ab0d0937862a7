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
from lipcore.imp import next_mask, sparsity_report
from lipcore.seeding import derive_seed
from lipcore.trials import Trial, imp_round

from . import artifacts, entry, layout
from .params import load_params


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
    net_cfg, imp = params.net, params.imp
    fit_cfg = params.fit_for(args.task)
    artifacts.read_fit_metrics(args.parent, args.round - 1)  # the parent is round k-1 ...
    for given in (args.dense, args.parent):  # ... of this seed
        artifacts.check_round_seed(given, args.seed)
    problem = artifacts.load_problem(args.obs, params.task(args.task).degradation)

    parent_mask = artifacts.load_round_mask(args.parent, net_cfg, args.round - 1)
    trained = artifacts.load_weights(args.parent / layout.TRAINED, net_cfg)
    mask = next_mask(net_cfg, trained, parent_mask, imp)
    start, z = artifacts.load_rewind(args.dense, net_cfg)
    trial = Trial(start, z, problem, mask, derive_seed(params.seed, "fit", args.seed))
    outcome = imp_round(net_cfg, trial, fit_cfg, params.protocol, imp, args.round, params.device)

    sparsity = sparsity_report(mask, imp.fraction, args.round)
    meta = {
        "round": args.round,
        "parent": str(args.parent),
        "seed": args.seed,
        "prune": imp.prune_dict(),
        "net": artifacts.cfg_dict(net_cfg),
    }
    with layout.ROUND_OUT.write(args.out) as tmp:
        prune.save_mask(tmp / layout.MASK, mask, {**meta, "nominal_sparsity": sparsity.nominal})
        io.save_tensors(tmp / layout.TRAINED, outcome.state, meta)
        artifacts.write_round(tmp, args.round, outcome, fit_cfg, sparsity.as_dict())


if __name__ == "__main__":
    entry.run(main)
