"""Long runs (evaluate.long_run): does a sparse prior overfit less?

The headline fits are sized to the dense DIP's peak, so they cannot show what a sparse prior is said to buy
(OES's figures, and LIP's IMP masks round by round there): robustness to the stopping time. A long run fits
each of LONG_RUN methods at the headline sparsity for `long_run` times the run length, from the same start,
z and reg-noise stream as its headline fit (so the first iterations are the headline fit's), and scores the
peak (the oracle best over the whole run), the end (the last iterate) and the drop between them.

The control OES's study lacks: the dense net at OES's training recipe (no input noise, no output averaging;
Adam at the fit's lr, 0.01 as theirs), to tell a recipe's robustness from a mask's. ES-WMV keeps the headline
fit's window and patience (it looks for the variance minimum, whatever the run's length).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from lipcore.config import FitConfig
from lipcore.physics import Problem
from lipcore.prune import Mask
from lipcore.schema import derive

from .params import Params
from .retrain import retrain

# fitted when the headline has them (oes and random_layer: when evaluate.baselines lists them); the deep
# decoder is fitted by the caller (another net)
LONG_RUN = ("dense", "lip", "oes", "random_layer", "decoder")
RECIPE = "dense_oes_recipe"  # the dense net at OES's training recipe


def long_fit(fit: FitConfig, factor: int) -> FitConfig:
    """The headline fit `factor` times as long (factor 1: `fit` itself, its params keys kept)."""
    return fit if factor == 1 else derive(fit, iterations=fit.iterations * factor)


def recipe_fit(params: Params, task: str, factor: int) -> FitConfig:
    """OES's training recipe, long: the task's fit without input noise and without output averaging."""
    return long_fit(params.fit_for(task, reg_noise_std=0.0, ema_weight=0.0), factor)


def fit_masks(
    *,
    params: Params,
    seed: int,
    fit: FitConfig,
    task: str,
    factor: int,
    z: Tensor,
    problem: Problem,
    theta0: dict[str, Tensor],
    masked: Sequence[tuple[str, dict[str, Tensor], Mask]],
    label: str,
) -> dict[str, dict[str, Any]]:
    """The long fits of one seed: the dense net (from theta0, at the headline fit and at OES's recipe) and each
    (method, start, mask) of `masked`; scores by method."""
    nets = [(theta0, None, f"{label} long dense"), *((s, m, f"{label} long {name}") for name, s, m in masked)]
    names = ["dense", *(name for name, _, _ in masked)]
    out = retrain(params=params, seed=seed, nets=nets, z=z, problem=problem, fit=long_fit(fit, factor))
    recipe = recipe_fit(params, task, factor)
    (again,) = retrain(
        params=params, seed=seed, nets=[(theta0, None, f"{label} long {RECIPE}")], z=z, problem=problem, fit=recipe
    )
    return {**{n: with_drop(o.scores) for n, o in zip(names, out)}, RECIPE: with_drop(again.scores)}


def with_drop(scores: dict[str, Any]) -> dict[str, Any]:
    """A long fit's scores with `drop`: PSNR at its peak (oracle best) minus at its end (last iterate), dB."""
    return {**scores, "drop": scores["oracle_best"]["psnr"] - scores["last"]["psnr"]}
