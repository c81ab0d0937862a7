"""Stage dense_fit: one image x task x seed -> theta_0 and z, the trained dense weights, history, metrics.

This is round 0 of the IMP chain: its directory is the parent of round 1, and its rewind weights (theta_0,
or its weights at imp.rewind_iteration) are what every later round starts from.

    python -m stages.dense_fit --obs outs/degrade/f16-denoise --task denoise --seed 0 \
        --out outs/rounds/f16-denoise/s0/r0
"""

from __future__ import annotations

from pathlib import Path

from lipcore import io
from lipcore.seeding import derive_seed
from lipcore.trials import Trial, imp_round, initialisation

from . import artifacts, entry, layout
from .params import load_params


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
    fit_cfg = params.fit_for(args.task)

    theta0, z = initialisation(params.net, params.seed, args.seed, *problem.x_true.shape[-2:])
    trial = Trial(theta0, z, problem, None, derive_seed(params.seed, "fit", args.seed))
    outcome = imp_round(params.net, trial, fit_cfg, params.protocol, params.imp, 0, params.device)

    meta = {"seed": args.seed, "net": artifacts.cfg_dict(params.net)}
    with layout.ROUND_OUT.write(args.out) as tmp:
        artifacts.save_init(tmp, theta0, z, meta)
        rewind_meta = {**meta, "iteration": params.imp.rewind_iteration}
        io.save_tensors(tmp / layout.REWIND, outcome.rewind_state, rewind_meta)
        io.save_tensors(tmp / layout.TRAINED, outcome.state, {**meta, "round": 0})
        artifacts.write_round(tmp, 0, outcome, fit_cfg, {"nominal": 0.0, "effective": 0.0})


if __name__ == "__main__":
    entry.run(main)
