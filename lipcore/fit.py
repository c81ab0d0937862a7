"""fit(...) / fit_many(...): the DIP optimisation loop, nothing else.

Per step: fresh Gaussian perturbation of z, forward, loss ||A(x) - y||^2, backward, masked gradients, Adam.
Bookkeeping (EMA, ES-WMV, oracle, backtracking, history, stopping: lipcore.fit_state) stays on the device
as tensor ops; the host reads device values only every `log_every` steps and only when it has to (progress
bar, es_stop), so GPU runs never synchronise per step.

fit_many trains N independent nets (different seeds, masks, targets); on CUDA in one loop over the nets
stacked into grouped convolutions (lipcore.members). Every tensor of the bookkeeping carries a leading
member dim; a plain fit is the loop with one member.

A fit changes nothing of its arguments but the net it trains (and, where a mask is given, zeroes its
pruned weights); each finished fit logs one DEBUG line to the "lipcore.fit" logger (lipcore.trials logs the
INFO line a stage shows).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from . import memory
from .config import FitConfig
from .fit_state import (
    HISTORY_COLUMNS,
    Backtracking,
    Divergence,
    Ema,
    EsWmv,
    FitDiverged,
    History,
    LastFinite,
    Metric,
    Oracle,
    StopCheck,
    Stopping,
    collapsed,
    reset_optimizer_state,
)
from .members import choose_engine, make_engine
from .metrics import psnr
from .physics import Operator
from .prune import Mask
from .runtime import cuda_flags, on_device, resolve_device, resolve_precision

__all__ = ["HISTORY_COLUMNS", "FitDiverged", "FitJob", "FitResult", "OracleBest", "StopCheck", "fit", "fit_many"]

log = logging.getLogger(__name__)
# Every log_every iterations, one DEBUG record per fit_many loop: `iteration`, and per member its `labels` entry and
# history row (`rows`: HISTORY_COLUMNS by name). Emitted only when this logger is enabled for DEBUG (a handler
# that shows progress live, e.g. stages/plumbing/live.py): each record costs a host read of one history row.
progress_log = logging.getLogger(__name__ + ".progress")


@dataclass
class OracleBest:
    """ORACLE: the best score against the ground truth over all iterations (uses x_true to pick the stop).

    `psnr` is in the fit's metric (RGB PSNR by default; e.g. Y-channel PSNR for super-resolution)."""

    iteration: int
    psnr: float
    x: Tensor


@dataclass
class FitResult:
    """What a fit produced. Images are (B, C, H, W) on the CPU; iterations count optimizer steps from 1."""

    x_last: Tensor  # output of the last iteration
    x_ema: Tensor  # exponential moving average of outputs (= x_last when ema_weight is 0)
    x_es: Tensor  # ES-WMV: raw output at the minimum-variance iteration (ground-truth free)
    x_es_ema: Tensor  # ES-WMV: EMA output at that same iteration
    es_iteration: int  # iteration whose output x_es is
    es_detected: int | None  # iteration at which the patience ran out (None: never within the run)
    iterations: int  # iterations run (fewer than asked when es_stop or a StopCheck halted the fit)
    history: dict[str, np.ndarray]  # HISTORY_COLUMNS, one row every log_every iterations
    backtracks: int
    seconds: float
    oracle: dict[str, OracleBest] | None = None  # {'out', 'ema'}; only when x_true was given
    rewind_state: dict[str, Tensor] | None = field(default=None, repr=False)  # weights at rewind_iteration


@dataclass
class FitJob:
    """One net to fit and its problem; the arguments of `fit` for one member of `fit_many`."""

    net: nn.Module
    z: Tensor  # (B, *net.input_shape)
    op: Operator
    y: Tensor  # shaped like op's output
    x_true: Tensor | None = None  # only scores, never steers
    mask: Mask | None = None
    seed: int = 0  # the reg-noise stream
    metric: Metric = psnr  # what the oracle and the history's psnr_out / psnr_ema score x_true with
    label: str = ""  # names the fit in progress records and log lines (e.g. "f16-denoise s0 r2")


def fit(
    net: nn.Module,
    z: Tensor,
    op: Operator,
    y: Tensor,
    cfg: FitConfig,
    *,
    x_true: Tensor | None = None,
    mask: Mask | None = None,
    seed: int = 0,
    metric: Metric = psnr,
    device: str | torch.device | None = "auto",
    progress: bool = False,
    stop: StopCheck | None = None,
) -> FitResult:
    """Fit `net` so that A(net(z + noise)) matches the observation y; the net is trained in place.

    z: the fixed input (B, *net.input_shape); y: observation, shaped like op's output.
    x_true: clean image (B, C, H, W), used ONLY to score (oracle, history), never to steer the fit.
    metric(x, x_true) -> (B,): the score of the oracle and history, in dB (e.g. partial(psnr_y, shave=4) for SR).
    mask: pruning mask; masked weights are zeroed and their gradients zeroed every step, so with Adam
    (no weight decay) they stay exactly zero. seed: the reg-noise stream. stop: an extra stopping rule
    (e.g. early-bird mask drawing); the result then holds the outputs and weights of the stop.
    """
    dev = resolve_device(device)
    precision = resolve_precision(cfg.precision, dev)
    with cuda_flags(cfg.cudnn_benchmark):
        job = FitJob(net, z, op, y, x_true, mask, seed, metric)
        return _fit_members([job], cfg, dev, precision, "sequential", progress, stop)[0]


def fit_many(
    jobs: Sequence[FitJob],
    cfg: FitConfig,
    *,
    device: str | torch.device | None = "auto",
    engine: str = "auto",
    progress: bool = False,
    stop: StopCheck | None = None,
    max_members: int | None = None,
) -> list[FitResult]:
    """Fit N independent nets with one config; results equal N calls of `fit` (the nets train in place).

    engine: 'sequential' (N calls of `fit`), 'vmap' (one loop over the N nets stacked into grouped
    convolutions; equal up to rounding, needs one architecture), or 'auto': vmap on CUDA, sequential on
    CPU, where neither batching scheme is faster (measured; see lipcore.members).
    With cfg.es_stop a member stops at its own ES-WMV detection, and with `stop` when its rule says so
    (its results and weights are those of that point); the loop runs until every member has stopped.
    max_members: the most members of one vmap batch; None: as many as the device's memory holds (lipcore.memory:
    LIP_GPU_MEMORY_GB, or the GPU's memory and this process's share of it; no cap on CPU). More run in batches.
    """
    if not jobs:
        raise ValueError("fit_many needs at least one job")
    if len({j.x_true is None for j in jobs}) > 1:
        raise ValueError("give x_true for every job or for none (the oracle is tracked for all members)")
    dev = resolve_device(device)
    precision = resolve_precision(cfg.precision, dev)  # once: one warning, not one per member
    with cuda_flags(cfg.cudnn_benchmark):
        if choose_engine(engine, len(jobs), dev) == "sequential":
            return [
                _fit_members([j], cfg, dev, precision, "sequential", progress, _for_member(stop, i))[0]
                for i, j in enumerate(jobs)
            ]
        most = max_members if max_members is not None else _batch_cap(jobs, cfg, dev, precision)
        results: list[FitResult] = []
        for batch in memory.batches(len(jobs), most):
            part = jobs[batch.start : batch.stop]
            try:
                results += _fit_members(part, cfg, dev, precision, "vmap", progress, _for_members(stop, batch.start))
            except FitDiverged as err:  # name the member by its place in `jobs`, not in its batch
                raise err.in_set(batch.start, len(jobs)) from err
        return results


def _batch_cap(jobs: Sequence[FitJob], cfg: FitConfig, dev: torch.device, precision: str) -> int | None:
    """The most members of one vmap batch that the memory budget of `dev` holds (None: no budget, no cap)."""
    budget = memory.budget(dev)
    if budget is None:
        return None
    z_shape = tuple(max((j.z for j in jobs), key=lambda z: z.numel()).shape)
    need = memory.estimate(jobs[0].net, z_shape, cfg.es_window, precision, "vmap")
    most = memory.cap(need.per_member, budget)
    if most < len(jobs):
        log.info(
            "%d fits in batches of at most %d: %.2f GB each (estimated), %.1f GB for a batch",
            len(jobs),
            most,
            need.per_member / 1e9,
            budget / 1e9,
        )
    return most


def _for_members(stop: StopCheck | None, first: int) -> StopCheck | None:
    """`stop` as seen by a loop that fits the members from `first` on of a larger set."""
    if stop is None or first == 0:
        return stop
    return StopCheck(stop.every, lambda i, state: stop.rule(first + i, state))


def _for_member(stop: StopCheck | None, member: int) -> StopCheck | None:
    """`stop` as seen by a one-member loop that fits member `member` of a larger set."""
    if stop is None:
        return None
    return StopCheck(stop.every, lambda _, state: stop.rule(member, state))


class _DataLoss:
    """The objective the engines differentiate: ||A(x) - y||^2 per image, summed over images and members.

    floor: at a backtracking check, the observation PSNR (N,) below which a member's fit counts as collapsed;
    its loss is then zeroed (and Backtracking restores its weights after the backward pass).
    """

    def __init__(self, ops: Sequence[Operator], ys: Sequence[Tensor]) -> None:
        self.ops, self.ys = list(ops), list(ys)

    def __call__(self, sl: slice, x: Tensor, floor: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: outputs (n, B, C, H, W) of members `sl` -> (per-image loss (n, B), the scalar to differentiate)."""
        per_image = torch.stack(
            [(o(xi) - yi).pow(2).flatten(1).mean(1) for o, xi, yi in zip(self.ops[sl], x, self.ys[sl])]
        )
        loss = per_image.sum(1)
        if floor is not None:
            loss = loss * ~collapsed(per_image.detach(), floor[sl])
        return per_image, loss.sum()


class _Books(NamedTuple):
    """The bookkeeping of one loop (lipcore.fit_state), per member, on the device."""

    ema: Ema
    es: EsWmv
    oracle: Oracle | None
    backtrack: Backtracking
    history: History
    stopping: Stopping

    def result(self, i: int, it: int, x: Tensor, seconds: float) -> FitResult:
        """Member i's results as they stand after iteration `it`, whose outputs are x. Reads the host."""
        oracle = None
        if self.oracle is not None:
            oracle = {
                k: OracleBest(int(b.iteration[i]), float(b.value[i]), b.x[i].cpu()) for k, b in self.oracle.best.items()
            }
        rewind = self.stopping.rewind_states[i]
        return FitResult(
            x_last=x[i].cpu(),
            x_ema=self.ema.x[i].cpu(),
            **self.es.result(i, it, x, self.ema.x),
            iterations=it,
            history=self.history.columns(i),
            backtracks=int(self.backtrack.count[i]),
            seconds=seconds,
            oracle=oracle,
            rewind_state={k: v.cpu() for k, v in rewind.items()} if rewind is not None else None,
        )


def _fit_members(
    jobs: Sequence[FitJob],
    cfg: FitConfig,
    dev: torch.device,
    precision: str,
    engine: str,
    progress: bool,
    stop: StopCheck | None = None,
) -> list[FitResult]:
    """The loop itself, over the members of one engine, on device `dev` in `precision` ('fp32' or 'bf16')."""
    n = len(jobs)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    for j in jobs:
        j.net.to(dev, memory_format=memory_format).train()  # BN stays in training mode, as in DIP
    members = make_engine(engine, [j.net for j in jobs], [j.mask for j in jobs])
    # The caller's operator stays where it is (a moved copy where it must move); the net trains in place.
    data_loss = _DataLoss([on_device(j.op, dev) for j in jobs], [j.y.to(dev) for j in jobs])
    zs = [j.z.to(dev).contiguous(memory_format=memory_format) for j in jobs]
    # Drawn in the standard layout: normal_ fills memory in order, so a channels-last buffer would get other noise.
    noises = [torch.empty(z.shape, dtype=z.dtype, device=dev) for z in zs]
    gens = [torch.Generator(device=dev).manual_seed(j.seed) for j in jobs]
    bf16 = precision == "bf16"
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    # The fused kernel does the whole Adam update in one pass per tensor (10-20% faster steps on small nets).
    optimizer = torch.optim.Adam(members.params, lr=cfg.lr, fused=dev.type in ("cpu", "cuda"))
    step = torch.zeros((), dtype=torch.long, device=dev)  # the iteration, on the device, for the trackers
    oracle = None
    if jobs[0].x_true is not None:
        oracle = Oracle(torch.stack([j.x_true.to(dev) for j in jobs]), [j.metric for j in jobs])
    books = _Books(
        Ema(cfg.ema_weight),
        EsWmv(cfg.es_window, cfg.es_patience, n, dev),
        oracle,
        Backtracking(members.params, members.flags_for, cfg.backtrack_db, n, dev),
        History(n, cfg.iterations // cfg.log_every + 1, dev),
        Stopping(cfg.es_stop, cfg.rewind_iteration, stop, n),
    )
    ema, es, oracle, backtrack, history, stopping = books
    divergence, last_finite = Divergence(n, dev), LastFinite()
    finished: dict[int, FitResult] = {}
    final_states: dict[int, dict[str, Tensor]] = {}

    bar = _progress_bar(cfg.iterations) if progress else None
    watched = progress_log.isEnabledFor(logging.DEBUG)
    labels = [j.label for j in jobs]
    start = time.perf_counter()
    stopping.keep_rewind(0, members)
    it = 0
    for it in range(1, cfg.iterations + 1):
        is_log = it % cfg.log_every == 0 or it == cfg.iterations

        # forward / backward: a fresh perturbation of z, the data loss, masked gradients, then Adam
        step.add_(1)
        optimizer.zero_grad(set_to_none=True)
        z_in = zs
        if cfg.reg_noise_std != 0:
            z_in = [z + cfg.reg_noise_std * e.normal_(generator=g) for z, e, g in zip(zs, noises, gens)]
        floor = backtrack.floor() if is_log else None  # None: no backtracking check at this step
        x, per_image = members.forward_backward(z_in, partial(data_loss, floor=floor), autocast)
        if members.masked:
            torch._foreach_mul_([w.grad for w in members.masked], members.mask_values)
        if is_log:
            broken = divergence.check(step, per_image)  # members whose loss is NaN/inf
            if floor is not None:  # collapsed and broken members get the last check's weights back,
                backtrack.check(per_image, floor, broken)  # broken ones also fresh gradients and moments
                reset_optimizer_state(optimizer, members.params, members.flags_for(broken))
            if dev.type == "cpu":  # a host read is free here: give up on a diverged fit at once
                _raise_if_diverged(divergence, divergence.failed(), it, backtrack, cfg, n)
        optimizer.step()

        # bookkeeping, on the device: EMA, ES-WMV, oracle, history
        with torch.no_grad():
            seen = last_finite.update(x)  # x, except a NaN/inf output: the member's last finite one instead
            x_ema = ema.update(seen)
            variance = es.update(step, seen, x_ema)
            scores = oracle.update(step, seen, x_ema) if oracle is not None else None
            if is_log:
                history.log(step, per_image, variance, backtrack.count, scores)

        # logging: the progress bar and progress records (the line per member is written from the results)
        if watched and is_log:  # host sync, every log_every steps, only while a handler watches
            progress_log.debug("iteration %d", it, extra={"iteration": it, "labels": labels, "rows": history.latest()})
        if bar is not None:
            bar.update(1)
            if is_log:
                bar.set_postfix(loss=f"{float(per_image.mean()):.3g}")  # host sync, every log_every steps

        # termination: members that stop here keep their results and weights as they are now
        stopping.keep_rewind(it, members)
        for i in stopping.due(it, is_log, es.detected, members):  # host reads: see Stopping.due
            finished[i] = books.result(i, it, x, time.perf_counter() - start)
            final_states[i] = members.state_dict(i)
        if stopping.all_stopped:
            break

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)  # host sync: the clock stops when the device is done
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    members.write_back()
    for i, state in final_states.items():
        jobs[i].net.load_state_dict(state)
    results = [finished[i] if i in finished else books.result(i, it, x, seconds) for i in range(n)]
    broken = [i for i, (j, res) in enumerate(zip(jobs, results)) if not _finite(j.net, res)]
    _raise_if_diverged(divergence, sorted(set(divergence.failed()) | set(broken)), it, backtrack, cfg, n)
    for i, res in enumerate(results):
        _log_result(res, i, n, jobs[i].label)
    return results


def _finite(net: nn.Module, res: FitResult) -> bool:
    """Whether a finished fit's outputs and weights are all finite (what later rounds and scores rely on)."""
    outputs = (res.x_last, res.x_ema, res.x_es, res.x_es_ema)
    return all(bool(torch.isfinite(t).all()) for t in (*outputs, *net.parameters()))


def _raise_if_diverged(
    divergence: Divergence, failed: list[int], it: int, backtrack: Backtracking, cfg: FitConfig, n: int
) -> None:
    """FitDiverged for the first failed member, if any. Reads the host."""
    if failed:
        i = failed[0]
        raise FitDiverged(i, n, divergence.first_iteration(i), it, int(backtrack.count[i]), cfg.lr)


def _log_result(res: FitResult, i: int, n: int, label: str) -> None:
    """One DEBUG line per finished fit, from its results (already on the host: no device read). lipcore.trials
    writes the INFO line of the fits it runs, with their scores at the reported point."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    es = f"detected at {res.es_detected}" if res.es_detected is not None else "not detected"
    oracle = ""
    if res.oracle is not None:
        o, e = res.oracle["out"], res.oracle["ema"]
        oracle = f"; oracle {o.psnr:.2f} dB at {o.iteration} (EMA {e.psnr:.2f} dB at {e.iteration})"
    log.debug(
        "fit%s%s: %d iterations, %.4f s/it; ES-WMV point %d (%s); %d backtracks%s",
        f" {label}" if label else "",
        f" ({i + 1}/{n})" if n > 1 else "",
        res.iterations,
        res.seconds / res.iterations,
        res.es_iteration,
        es,
        res.backtracks,
        oracle,
    )


def _progress_bar(total: int):
    try:
        from tqdm.auto import tqdm
    except ImportError as err:
        raise ImportError("progress=True needs tqdm: pip install 'lipcore[progress]'") from err
    return tqdm(total=total, desc="fit", unit="it")
