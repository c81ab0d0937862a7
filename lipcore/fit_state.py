"""The fit loop's bookkeeping, one small object per job: EMA, ES-WMV, oracle, backtracking, history, stopping.

Every tensor carries a leading member dim N (fit_many fits N nets in one loop; a plain fit has N = 1), and
every update is tensor ops on the device: none reads a value on the host except where its docstring says so,
so GPU runs never synchronise per step. Iterations count optimizer steps from 1; `step` is that count as a
0-dim device tensor, so trackers can record it without a host read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from .metrics import psnr_from_mse

HISTORY_COLUMNS = ("iteration", "loss", "psnr_obs", "es_variance", "backtracks", "psnr_out", "psnr_ema")

# metric(x, ref) -> one score per image (B,), higher is better (e.g. lipcore.metrics.psnr, psnr_y).
Metric = Callable[[Tensor, Tensor], Tensor]


class Members(Protocol):
    """What the bookkeeping needs of an engine (lipcore.members)."""

    def state_dict(self, i: int) -> dict[str, Tensor]: ...


def per_member(x: Tensor) -> Tensor:
    """Sum over everything but the leading member dim: (N, ...) -> (N,)."""
    return x.flatten(1).sum(1)


def expand(flags: Tensor, like: Tensor) -> Tensor:
    """(N,) -> (N, 1, 1, ...) broadcastable against `like`."""
    return flags.view(-1, *([1] * (like.dim() - 1)))


class Ema:
    """Exponential moving average of the outputs (DIP's output averaging); weight 0 keeps the last output."""

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.x: Tensor | None = None

    def update(self, x: Tensor) -> Tensor:
        self.x = x.clone() if self.x is None else self.x.lerp_(x, 1.0 - self.weight)
        return self.x


class LastFinite:
    """Each member's output, or where it is NaN/inf its last finite one: what EMA, ES-WMV and the oracle see.

    One non-finite step would otherwise poison the EMA and the ES-WMV window sums for the rest of the fit,
    even after backtracking has restored the weights (see Divergence).
    """

    def __init__(self) -> None:
        self.x: Tensor | None = None

    def update(self, x: Tensor) -> Tensor:
        finite = expand(torch.isfinite(x).flatten(1).all(1), x)
        self.x = torch.where(finite, x, self.x if self.x is not None else torch.zeros_like(x))
        return self.x


class WindowVariance:
    """ES-WMV (Wang et al.): variance of the last W outputs of each member, on the device, O(n) per step.

    Keeps running float64 sums of the window, so the variance costs no pass over the window.
    """

    def __init__(self, window: int, like: Tensor) -> None:
        self.window = window
        self.frames = torch.zeros((window, *like.shape), dtype=like.dtype, device=like.device)
        self.total = torch.zeros(like.shape, dtype=torch.float64, device=like.device)
        self.sq_total = torch.zeros(like.shape[0], dtype=torch.float64, device=like.device)
        self.count = 0

    def push(self, x: Tensor) -> Tensor | None:
        """Add one output (N, ...); returns each member's mean per-pixel window variance (N,) once full."""
        slot = self.count % self.window
        if self.count >= self.window:
            old = self.frames[slot].double()
            self.total.sub_(old)
            self.sq_total.sub_(per_member(old.square()))
        x64 = x.double()
        self.total.add_(x64)
        self.sq_total.add_(per_member(x64.square()))
        self.frames[slot].copy_(x)
        self.count += 1
        if self.count < self.window:
            return None
        mean_sq = self.sq_total / self.window
        sq_mean = per_member((self.total / self.window).square())
        return ((mean_sq - sq_mean) / x[0].numel()).float()


class Best:
    """Per member, the value-maximising (or minimising) iteration and image so far."""

    def __init__(self, maximise: bool) -> None:
        self.maximise = maximise
        self.value: Tensor | None = None  # (N,); allocated at the first update, when the shapes are known
        self.iteration: Tensor | None = None
        self.x: Tensor | None = None

    def update(self, value: Tensor, iteration: Tensor, x: Tensor, frozen: Tensor | None = None) -> Tensor:
        """Take (value, iteration, x) where it beats the kept one and `frozen` is not set; returns those flags."""
        if self.x is None:
            n = x.shape[0]
            self.value = torch.full((n,), -math.inf if self.maximise else math.inf, device=x.device)
            self.iteration = torch.zeros(n, dtype=torch.long, device=x.device)
            self.x = torch.zeros_like(x)
        better = value > self.value if self.maximise else value < self.value
        if frozen is not None:
            better = better & ~frozen
        self.value = torch.where(better, value, self.value)
        self.iteration = torch.where(better, iteration, self.iteration)
        self.x.copy_(torch.where(expand(better, x), x, self.x))
        return better


class EsWmv:
    """ES-WMV early-stopping detection: the minimum-variance iteration of each member and, once no new
    minimum came for `patience` iterations, the iteration that noticed (the minimum then freezes).

    Ground-truth free: it looks at the outputs only.
    """

    def __init__(self, window: int, patience: int, n: int, device: torch.device) -> None:
        self.window, self.patience = window, patience
        self.variance: WindowVariance | None = None
        self.best = Best(maximise=False)  # raw output at the minimum-variance iteration
        self.x_ema: Tensor | None = None  # EMA output at that same iteration
        self.detected = torch.zeros(n, dtype=torch.bool, device=device)
        self.detected_at = torch.zeros(n, dtype=torch.long, device=device)

    def update(self, step: Tensor, x: Tensor, x_ema: Tensor) -> Tensor | None:
        """Push this iteration's outputs; returns the window variance (N,), None until the window is full."""
        if self.variance is None:
            self.variance = WindowVariance(self.window, x)
            self.x_ema = torch.zeros_like(x)
        variance = self.variance.push(x)
        if variance is not None:
            better = self.best.update(variance, step, x, self.detected)
            self.x_ema.copy_(torch.where(expand(better, x), x_ema, self.x_ema))
            newly = ~self.detected & (step - self.best.iteration >= self.patience)
            self.detected_at = torch.where(newly, step, self.detected_at)
            self.detected = self.detected | newly
        return variance

    def result(self, i: int, it: int, x: Tensor, x_ema: Tensor) -> dict:
        """Member i's FitResult fields after iteration `it`; before the window fills, the outputs of `it`.
        Reads the host."""
        full = self.variance is not None and self.variance.count >= self.window
        return {
            "x_es": (self.best.x[i] if full else x[i]).cpu(),
            "x_es_ema": (self.x_ema[i] if full else x_ema[i]).cpu(),
            "es_iteration": int(self.best.iteration[i]) if full else it,
            "es_detected": int(self.detected_at[i]) if bool(self.detected[i]) else None,
        }


def _mean_score(metric: Metric, x: Tensor, ref: Tensor) -> Tensor:
    """(n, B, C, H, W) -> the metric over each member's B images, averaged: (n,)."""
    n = x.shape[0]
    return metric(x.flatten(0, 1), ref.flatten(0, 1)).view(n, -1).mean(1)


class Oracle:
    """ORACLE: per member, the best score against the ground truth over all iterations, of the raw ('out')
    and the averaged ('ema') outputs. Each member has its own metric (e.g. Y-channel PSNR for SR)."""

    def __init__(self, x_true: Tensor, metrics: Sequence[Metric]) -> None:
        self.x_true = x_true  # (N, B, C, H, W)
        members: dict[int, list[int]] = {}  # members that share a metric object are scored in one call
        for i, metric in enumerate(metrics):
            members.setdefault(id(metric), []).append(i)
        self.groups = [(metrics[idx[0]], torch.tensor(idx, device=x_true.device)) for idx in members.values()]
        self.best = {"out": Best(maximise=True), "ema": Best(maximise=True)}

    def score(self, x: Tensor) -> Tensor:
        """Each member's metric of x (N, B, C, H, W) against its ground truth, mean over its B images: (N,)."""
        if len(self.groups) == 1:
            return _mean_score(self.groups[0][0], x, self.x_true)
        scores = x.new_empty(x.shape[0])
        for metric, idx in self.groups:  # index tensors live on the device: no host transfer
            scores[idx] = _mean_score(metric, x[idx], self.x_true[idx])
        return scores

    def update(self, step: Tensor, x: Tensor, x_ema: Tensor) -> tuple[Tensor, Tensor]:
        """Score both outputs and keep the best; returns the scores (out, ema), each (N,)."""
        s_out, s_ema = self.score(x), self.score(x_ema)
        self.best["out"].update(s_out, step, x)
        self.best["ema"].update(s_ema, step, x_ema)
        return s_out, s_ema


def collapsed(per_image: Tensor, floor: Tensor) -> Tensor:
    """Members (N,) whose worst image's PSNR against the observation fell below `floor`; per_image: (N, B) MSE."""
    return psnr_from_mse(per_image).amin(1) < floor


class Backtracking:
    """DIP's backtracking: at each check, a member whose fit to the observation collapsed (its PSNR against y
    dropped by more than `drop_db` since the last check) gets the weights of the last check back.

    Decided and applied on the device. drop_db None: off (counts stay zero, no snapshot kept).
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        flags_for: Callable[[Tensor], list[Tensor]],
        drop_db: float | None,
        n: int,
        device: torch.device,
    ) -> None:
        self.params, self.flags_for, self.drop_db = list(params), flags_for, drop_db
        self.snapshot = [p.detach().clone() for p in params] if drop_db is not None else []
        self.last_psnr = torch.full((n,), -math.inf, device=device)  # observation PSNR at the last check
        self.count = torch.zeros(n, dtype=torch.long, device=device)

    def floor(self) -> Tensor | None:
        """The observation PSNR (N,) below which a member counts as collapsed at a check; None when off."""
        return None if self.drop_db is None else self.last_psnr - self.drop_db

    def check(self, per_image: Tensor, floor: Tensor, broken: Tensor | None = None) -> Tensor:
        """At a check, after backward: restore collapsed members' weights and snapshot everyone's.

        per_image: (N, B) data loss of this step; broken: (N,) members whose loss is not finite (they are
        restored too: a NaN compares False with the floor). Returns the restored flags (N,).
        """
        psnr_obs = psnr_from_mse(per_image).amin(1)
        hit = psnr_obs < floor
        if broken is not None:
            hit = hit | broken
        with torch.no_grad():  # after backward: autograd still needed the pre-restore weights
            for p, s, c in zip(self.params, self.snapshot, self.flags_for(hit)):
                p.copy_(torch.where(c, s, p))
                s.copy_(p)
        self.last_psnr = torch.where(hit, self.last_psnr, psnr_obs)
        self.count += hit
        return hit


class FitDiverged(RuntimeError):
    """A fit whose loss or weights stopped being finite and did not recover (see Divergence)."""

    def __init__(self, member: int, members: int, iteration: int | None, end: int, backtracks: int, lr: float):
        self.member, self.iteration = member, iteration
        self._facts = (iteration, end, backtracks, lr)
        who = f"member {member + 1} of {members}: " if members > 1 else ""
        when = (
            f"the loss became NaN/inf at iteration {iteration}"
            if iteration is not None
            else f"the outputs or weights are NaN/inf after iteration {end}"
        )
        super().__init__(
            f"fit diverged ({who}{when}; {backtracks} backtracks did not recover it). "
            f"Nothing was written: lower fit.lr (now {lr:g}) or check the observation for NaN/inf values"
        )

    def in_set(self, first: int, members: int) -> FitDiverged:
        """The same divergence told of the whole set, for a fit of members `first`, `first + 1`, ... of `members`
        run as one batch of several (fit_many's memory-capped vmap batches)."""
        return FitDiverged(first + self.member, members, *self._facts)


class Divergence:
    """Which members' loss is not finite at each check, the first iteration it was not, and for how many
    checks in a row. On the device; `failed` reads the host (the loop asks only where that is free: CPU)."""

    def __init__(self, n: int, device: torch.device, patience: int = 3) -> None:
        self.patience = patience
        self.first = torch.zeros(n, dtype=torch.long, device=device)  # 0: never
        self.streak = torch.zeros(n, dtype=torch.long, device=device)
        self.gave_up = torch.zeros(n, dtype=torch.bool, device=device)

    def check(self, step: Tensor, per_image: Tensor) -> Tensor:
        """per_image: (N, B) data loss at a check -> (N,) flags of the members whose loss is not finite."""
        broken = ~torch.isfinite(per_image).all(1)
        self.first = torch.where(broken & (self.first == 0), step, self.first)
        self.streak = torch.where(broken, self.streak + 1, torch.zeros_like(self.streak))
        self.gave_up |= self.streak >= self.patience
        return broken

    def failed(self) -> list[int]:
        """Members non-finite at `patience` checks in a row (backtracking did not help). Reads the host."""
        return torch.nonzero(self.gave_up.cpu()).flatten().tolist()

    def first_iteration(self, i: int) -> int | None:
        """The first check at which member i's loss was not finite (None: never). Reads the host."""
        first = int(self.first[i])
        return first if first > 0 else None


def reset_optimizer_state(optimizer: torch.optim.Optimizer, params: Sequence[Tensor], flags: list[Tensor]) -> None:
    """Zero the gradients and Adam moments of flagged members (flags: one broadcastable flag per param), so
    that NaN moments from a non-finite step do not survive the restore of their weights. No-op where False."""
    with torch.no_grad():
        for p, c in zip(params, flags):
            if p.grad is not None:
                p.grad.masked_fill_(c, 0.0)
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                moment = optimizer.state.get(p, {}).get(key)
                if moment is not None:
                    moment.masked_fill_(c, 0.0)


class History:
    """The log: one row of HISTORY_COLUMNS per member every log iteration, kept on the device."""

    def __init__(self, n: int, rows: int, device: torch.device) -> None:
        self.table = torch.full((n, rows, len(HISTORY_COLUMNS)), math.nan, device=device)
        self.rows = 0

    def log(
        self,
        step: Tensor,
        per_image: Tensor,
        variance: Tensor | None,
        backtracks: Tensor,
        scores: tuple[Tensor, Tensor] | None,
    ) -> None:
        """One row per member: per_image (N, B) data loss, scores (out, ema) from the oracle (None: no x_true)."""
        n = per_image.shape[0]
        nan = torch.full((n,), math.nan, device=per_image.device)
        s_out, s_ema = scores if scores is not None else (nan, nan)
        self.table[:, self.rows] = torch.stack(
            [
                step.float().expand(n),
                per_image.mean(1),
                psnr_from_mse(per_image).mean(1),
                variance if variance is not None else nan,
                backtracks.float(),
                s_out,
                s_ema,
            ],
            dim=1,
        )
        self.rows += 1

    def latest(self) -> list[dict[str, float]]:
        """Every member's last row, by column name. Reads the host (one small copy)."""
        row = self.table[:, self.rows - 1].cpu().tolist()
        return [dict(zip(HISTORY_COLUMNS, member)) for member in row]

    def columns(self, i: int) -> dict[str, np.ndarray]:
        """Member i's rows so far, column by column (float64). Reads the host."""
        rows = self.table[i, : self.rows].cpu().numpy().astype(np.float64)
        return {name: rows[:, c] for c, name in enumerate(HISTORY_COLUMNS)}


@dataclass
class StopCheck:
    """Every `every` iterations, ask rule(member, its current weights) whether that member's fit may stop.

    Each check reads the weights on the host: keep `every` coarse on GPUs.
    """

    every: int
    rule: Callable[[int, dict[str, Tensor]], bool]


class Stopping:
    """Which members stop after an iteration, and the weights kept for late rewinding.

    A member stops at its ES-WMV detection (with es_stop) or when the StopCheck's rule says so, and never
    before the rewind iteration: its rewind weights must exist first. A stopped member stays stopped.
    """

    def __init__(self, es_stop: bool, rewind_iteration: int | None, check: StopCheck | None, n: int) -> None:
        self.es_stop, self.rewind_iteration, self.check, self.n = es_stop, rewind_iteration, check, n
        self.stopped: set[int] = set()
        self.rewind_states: list[dict[str, Tensor] | None] = [None] * n

    def keep_rewind(self, done: int, members: Members) -> None:
        """After `done` iterations (0: before the first): keep every member's weights at the rewind iteration."""
        if done == self.rewind_iteration:
            self.rewind_states = [members.state_dict(i) for i in range(self.n)]

    def due(self, it: int, is_log: bool, es_detected: Tensor, members: Members) -> list[int]:
        """The members that stop after iteration `it`, each reported once.

        Host reads: the ES-WMV flags every log iteration (with es_stop), the weights at each StopCheck.
        """
        if self.rewind_iteration is not None and it <= self.rewind_iteration:
            return []
        due: list[int] = []
        if is_log and self.es_stop:
            due += torch.nonzero(es_detected.cpu()).flatten().tolist()
        if self.check is not None and it % self.check.every == 0:
            due += [i for i in range(self.n) if i not in self.stopped and self.check.rule(i, members.state_dict(i))]
        new = [i for i in dict.fromkeys(due) if i not in self.stopped]
        self.stopped.update(new)
        return new

    @property
    def all_stopped(self) -> bool:
        return len(self.stopped) == self.n
