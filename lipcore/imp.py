"""Iterative magnitude pruning (IMP): the sparsity schedule, one round's mask, and the ticket search.

Round 0 fits the dense net from theta_0; round k prunes `fraction` of the weights that round k-1 kept, by
the magnitude of round k-1's trained weights, rewinds to theta_0 (or, with late rewinding, to round 0's
weights at `rewind_iteration`) and fits again. Nominal sparsity after k rounds: 1 - (1 - fraction)^k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import prune
from .config import FitConfig, ImpConfig, NetConfig, SearchConfig
from .fit import StopCheck, fit
from .nets import net_from_state
from .physics import Problem
from .schema import derive

# ---------------------------------------------------------------- the schedule


def nominal_sparsity(fraction: float, rounds: int) -> float:
    """The sparsity that `rounds` rounds of pruning `fraction` of the remaining weights aim at: 1-(1-f)^k."""
    return 1.0 - (1.0 - fraction) ** rounds


def rounds_needed(target: float, fraction: float) -> int:
    """Smallest k with nominal_sparsity(fraction, k) >= target; target must be in [0, 1)."""
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1) (1 would prune every weight), got {target}")
    if target == 0:
        return 0
    return math.ceil(math.log(1.0 - target) / math.log(1.0 - fraction) - 1e-9)


def headline_round(target: float, imp: ImpConfig) -> int:
    """The first round of imp.chain (0 = dense) whose nominal sparsity reaches `target`; else an error that
    lists the [round, parent] pairs to add."""
    need = rounds_needed(target, imp.fraction)
    have = len(imp.rounds)
    if need <= have:
        return need
    more = ", ".join(f"[{k}, {k - 1}]" for k in range(have + 1, need + 1))
    raise ValueError(
        f"sparsity={target} is not reached: {have} IMP rounds give at most "
        f"{nominal_sparsity(imp.fraction, have):.3f} at prune fraction {imp.fraction}. "
        f"Add {need - have} round(s) to imp.chain in params.yaml: {more}"
    )


@dataclass(frozen=True)
class SparsityReport:
    nominal: float
    effective: float
    kept: int
    total: int

    def as_dict(self) -> dict[str, Any]:
        return {"nominal": self.nominal, "effective": self.effective, "kept": self.kept, "total": self.total}


def sparsity_report(mask: prune.Mask, fraction: float, rounds: int) -> SparsityReport:
    """Nominal (1 - (1-f)^k) and effective (measured) sparsity of an IMP mask after `rounds` rounds."""
    kept, total = prune.count_kept(mask), prune.count_total(mask)
    return SparsityReport(nominal_sparsity(fraction, rounds), prune.sparsity(mask), kept, total)


# ---------------------------------------------------------------- one round


def round_fit_cfg(fit_cfg: FitConfig, imp: ImpConfig, k: int) -> FitConfig:
    """The fit of round k: round 0 also keeps its weights at imp.rewind_iteration (what every later round
    rewinds to); later rounds keep nothing."""
    return derive(fit_cfg, rewind_iteration=imp.rewind_iteration if k == 0 else None)


def next_mask(net_cfg: NetConfig, trained: dict[str, Tensor], mask: prune.Mask | None, imp: ImpConfig) -> prune.Mask:
    """One IMP step: prune imp.fraction of the weights `mask` keeps (None: all), smallest |trained| first."""
    return prune_step(net_from_state(net_cfg, trained), mask, imp)


def prune_step(net: torch.nn.Module, mask: prune.Mask | None, imp: ImpConfig) -> prune.Mask:
    """next_mask from the weights a net holds now."""
    parent = mask if mask is not None else prune.dense_mask(net)
    dense_layers = net.input_layers() if imp.keep_input_dense else ()
    return prune.magnitude_prune(net, parent, imp.fraction, imp.scope, dense_layers)


class EarlyBird:
    """Early-bird ticket drawing (You et al. 2020) as a StopCheck rule for IMP search fits.

    At every check it draws, from the member's current weights, the mask the next round would prune to; the
    member may stop once that mask has moved by less than `search.early_bird` (a fraction of the prunable
    weights) for `search.early_bird_patience` consecutive checks.
    """

    def __init__(self, net_cfg: NetConfig, parents: list[prune.Mask | None], imp: ImpConfig) -> None:
        self.net_cfg = net_cfg
        self.parents = parents
        self.imp = imp
        self.previous: dict[int, prune.Mask] = {}
        self.calm: dict[int, int] = {}
        self.distances: dict[int, list[float]] = {}  # per member, every check: the record of the drawing

    def __call__(self, member: int, state: dict[str, Tensor]) -> bool:
        # Drawn where the weights are (the fit's device), with a few host reads per check: the finite check, the
        # count to remove, the pruning's own check and the distance, each one copy (prune._read_counts).
        if not bool(torch.stack([torch.isfinite(v).all() for v in state.values()]).all()):  # backtracking a NaN:
            self.previous.pop(member, None)  # no mask to draw from these weights; start the drawing over
            self.calm[member] = 0
            return False
        mask = next_mask(self.net_cfg, state, self._parent(member, next(iter(state.values())).device), self.imp)
        before = self.previous.get(member)
        self.previous[member] = mask
        if before is None:
            return False
        distance = prune.mask_distance(before, mask)
        self.distances.setdefault(member, []).append(distance)
        calm = self.calm.get(member, 0) + 1 if distance < self.imp.search.early_bird else 0
        self.calm[member] = calm
        return calm >= self.imp.search.early_bird_patience

    def _parent(self, member: int, device: torch.device) -> prune.Mask | None:
        """The member's parent mask on `device`, moved there once (the drawn masks then stay there too)."""
        parent = self.parents[member]
        if parent is not None and any(m.device != device for m in parent.values()):
            parent = self.parents[member] = {n: m.to(device) for n, m in parent.items()}
        return parent


def early_bird_stop(net_cfg: NetConfig, parents: list[prune.Mask | None], imp: ImpConfig) -> StopCheck | None:
    """The StopCheck of search fits whose next masks are drawn early-bird (None when imp.search has it off)."""
    search: SearchConfig = imp.search
    if search.early_bird is None:
        return None
    return StopCheck(search.early_bird_every, EarlyBird(net_cfg, parents, imp))


# ---------------------------------------------------------------- the ticket search


@dataclass
class Ticket:
    """A winning-ticket candidate: the mask, the weights it rewinds to, and what the search cost."""

    mask: prune.Mask
    start: dict[str, Tensor]  # theta_0, or round 0's weights at imp.rewind_iteration (late rewinding)
    search_iterations: list[int]  # per search fit, rounds 0..rounds-1


def find_ticket(
    net_cfg: NetConfig,
    theta0: dict[str, Tensor],
    z: Tensor,
    searched: Problem,
    fit_cfg: FitConfig,
    imp: ImpConfig,
    rounds: int,
    seed: int,
    device: str | torch.device | None = "auto",
) -> Ticket:
    """IMP without the reporting: the search fits of rounds 0..rounds-1 on `searched` (the problem the masks
    are searched on, see trials.search_problem), each pruning the next mask. Each round fits exactly as the
    pipeline's round of that index does (round_fit_cfg, imp.search), so the masks are the pipeline's."""
    if rounds < 1:
        raise ValueError(f"find_ticket needs rounds >= 1, got {rounds}")
    start, mask, spent = theta0, None, []
    for k in range(rounds):
        net = net_from_state(net_cfg, start)
        cfg = imp.search.fit_cfg(round_fit_cfg(fit_cfg, imp, k))
        stop = early_bird_stop(net_cfg, [mask], imp)
        res = fit(net, z, searched.op, searched.y, cfg, mask=mask, seed=seed, device=device, stop=stop)
        if k == 0 and res.rewind_state is not None:
            start = res.rewind_state
        spent.append(res.iterations)
        mask = prune_step(net, mask, imp)
    return Ticket(mask, start, spent)
