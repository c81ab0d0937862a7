"""Retraining masks that were found elsewhere (baselines, controls, transfer, multi-image masks), and the fit stream
that every fit of one initialisation draws its reg-noise from.

evaluate, multi_evaluate and transfer retrain through `retrain`; the IMP rounds (stages.plumbing.rounds) and
bench/search_cost.py take their seed from `fit_stream`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from lipcore.config import FitConfig, NetConfig
from lipcore.physics import Problem
from lipcore.prune import Mask
from lipcore.seeding import derive_seed
from lipcore.trials import Outcome, Trial, train_and_score

from .params import Params


def fit_stream(root_seed: int, seed: int) -> int:
    """The reg-noise seed of every fit of initialisation `seed`: its IMP rounds and every mask retrained against
    them. A paired statistic of the report (LIP − X on one image, task and seed) compares two fits that differ in
    their mask (or start) alone only while both draw from this one stream."""
    return derive_seed(root_seed, "fit", seed)


def retrain(
    *,
    params: Params,
    seed: int,
    nets: Sequence[tuple[dict[str, Tensor], Mask | None, str]],
    z: Tensor,
    problem: Problem,
    fit: FitConfig,
    net: NetConfig | None = None,
) -> list[Outcome]:
    """Train each (start, mask, label) of `nets` on `problem`'s observation and score it, with the fit stream of
    initialisation `seed` on params.device: all in one batched fit_many call (the nets share `net`, params.net
    unless given (the deep decoder), z and the problem).

    Why one function: every paired comparison in the report sets a fit made here against an IMP round's own
    evaluation fit (or another made here) of the same seed, and is only paired while they run the same fit
    config on the same reg-noise stream (fit_stream); spelled once here, the call sites cannot drift apart.

    Why protocol "blind" and no imp: a retrained mask is given, not searched for. Its one fit is the evaluation
    fit, on the observation, whatever params.protocol says: the protocol only decides what an IMP round's
    SEARCH fit sees ('paper' shows denoising searches the clean image), and a round's reported scores come from
    its evaluation fit on the observation too. Without imp no next mask is drawn and no search schedule
    (imp.search, early-bird) applies.
    """
    if not nets:
        return []
    stream = fit_stream(params.seed, seed)
    trials = [Trial(start, z, problem, mask, stream, label=label) for start, mask, label in nets]
    return train_and_score(net or params.net, trials, fit, protocol="blind", imp=None, device=params.device)
