"""One IMP round of a problem (a single image, or a multi-image group as one problem): fit, then write its
directory. Round 0 is the dense fit from theta_0; round k prunes round k-1's trained weights, rewinds, refits.

The stages dense_fit, imp_round and multi_round differ only in the problem and the start they hand here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from lipcore import io, prune
from lipcore.imp import next_mask, sparsity_report
from lipcore.physics import Problem
from lipcore.trials import Trial, imp_round

from . import artifacts, layout
from .params import Params
from .retrain import fit_stream


def dense_round(
    params: Params, task: str, problem: Problem, seed: int, start: tuple[dict[str, Tensor], Tensor], out: Path
) -> None:
    """Round 0: fit the dense net from theta_0 and z = `start`; keep theta_0, z and the rewind weights."""
    theta0, z = start
    fit_cfg = params.fit_for(task)
    trial = Trial(theta0, z, problem, None, fit_stream(params.seed, seed), fit_label(out))
    outcome = imp_round(params.net, trial, fit_cfg, params.protocol, params.imp, 0, params.device)

    meta = {"seed": seed, "net": artifacts.cfg_dict(params.net)}
    with layout.ROUND_OUT.write(out) as tmp:
        artifacts.write_numerics(tmp, params.device, fit_cfg)
        artifacts.save_init(tmp, theta0, z, meta)
        rewind_meta = {**meta, "iteration": params.imp.rewind_iteration}
        io.save_tensors(tmp / layout.REWIND, outcome.rewind_state, rewind_meta)
        io.save_tensors(tmp / layout.TRAINED, outcome.state, {**meta, "round": 0})
        artifacts.write_round(tmp, 0, outcome, fit_cfg, {"nominal": 0.0, "effective": 0.0})


def pruned_round(
    params: Params, task: str, problem: Problem, seed: int, k: int, dense: Path, parent: Path, out: Path
) -> None:
    """Round k >= 1: prune round k-1 (`parent`) by magnitude, rewind to round 0's (`dense`) rewind weights,
    refit and score."""
    net_cfg, imp = params.net, params.imp
    fit_cfg = params.fit_for(task)
    artifacts.read_fit_metrics(parent, k - 1)  # the parent is round k-1 ...
    for given in (dense, parent):  # ... of this seed
        artifacts.check_round_seed(given, seed)

    parent_mask = artifacts.load_round_mask(parent, net_cfg, k - 1, parent_optional=True)  # r(k-2): no input
    trained = artifacts.load_weights(parent / layout.TRAINED, net_cfg)
    mask = next_mask(net_cfg, trained, parent_mask, imp)
    start, z = artifacts.load_rewind(dense, net_cfg)
    trial = Trial(start, z, problem, mask, fit_stream(params.seed, seed), fit_label(out))
    outcome = imp_round(net_cfg, trial, fit_cfg, params.protocol, imp, k, params.device)

    sparsity = sparsity_report(mask, imp.fraction, k)
    meta: dict[str, Any] = {
        "round": k,
        "parent": str(parent),
        "seed": seed,
        "prune": imp.prune_dict(),
        "net": artifacts.cfg_dict(net_cfg),
    }
    with layout.ROUND_OUT.write(out) as tmp:
        artifacts.write_numerics(tmp, params.device, fit_cfg)
        prune.save_mask(tmp / layout.MASK, mask, {**meta, "nominal_sparsity": sparsity.nominal})
        io.save_tensors(tmp / layout.TRAINED, outcome.state, meta)
        artifacts.write_round(tmp, k, outcome, fit_cfg, sparsity.as_dict())


def fit_label(out: Path) -> str:
    """What a round's fit is called in progress lines: its directory's last parts (problem, seed, round)."""
    return " ".join(Path(out).parts[-4:])
