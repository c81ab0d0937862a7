"""fit(...) / fit_many(...): the DIP optimisation loop, nothing else.

Per step: fresh Gaussian perturbation of z, forward, loss ||A(x) - y||^2, backward, masked gradients, Adam.
Bookkeeping (EMA, ES-WMV variance, oracle PSNR, backtracking) stays on the device as tensor ops; the host
reads device values only every `log_every` steps and only when it has to (progress bar, es_stop), so GPU
runs never synchronise per step.

fit_many trains N independent nets (different seeds, masks, targets); on CUDA in one loop over the nets
stacked into grouped convolutions (lipcore.members). Every tensor of the bookkeeping carries a leading
member dim; a plain fit is the loop with one member.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from .config import FitConfig
from .members import choose_engine, make_engine
from .metrics import psnr, psnr_from_mse
from .physics import Operator
from .prune import Mask
from .runtime import on_device, resolve_device, resolve_precision

HISTORY_COLUMNS = ("iteration", "loss", "psnr_obs", "es_variance", "backtracks", "psnr_out", "psnr_ema")


@dataclass
class OracleBest:
    """ORACLE: the best PSNR against the ground truth over all iterations (uses x_true to pick the stop)."""

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


def _per_member(x: Tensor) -> Tensor:
    """Sum over everything but the leading member dim: (N, ...) -> (N,)."""
    return x.flatten(1).sum(1)


def _expand(flags: Tensor, like: Tensor) -> Tensor:
    """(N,) -> (N, 1, 1, ...) broadcastable against `like`."""
    return flags.view(-1, *([1] * (like.dim() - 1)))


class _WindowVariance:
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
            self.sq_total.sub_(_per_member(old.square()))
        x64 = x.double()
        self.total.add_(x64)
        self.sq_total.add_(_per_member(x64.square()))
        self.frames[slot].copy_(x)
        self.count += 1
        if self.count < self.window:
            return None
        mean_sq = self.sq_total / self.window
        sq_mean = _per_member((self.total / self.window).square())
        return ((mean_sq - sq_mean) / x[0].numel()).float()


class _Tracker:
    """Keeps, per member and without host syncs, the value-maximising (or minimising) iteration and image."""

    def __init__(self, like: Tensor, maximise: bool) -> None:
        self.maximise = maximise
        n = like.shape[0]
        self.value = torch.full((n,), -math.inf if maximise else math.inf, device=like.device)
        self.iteration = torch.zeros(n, dtype=torch.long, device=like.device)
        self.x = torch.zeros_like(like)

    def update(self, value: Tensor, iteration: Tensor, x: Tensor, frozen: Tensor | None = None) -> Tensor:
        """Take (value, iteration, x) where it beats the kept one and `frozen` is not set; returns those flags."""
        better = value > self.value if self.maximise else value < self.value
        if frozen is not None:
            better = better & ~frozen
        self.value = torch.where(better, value, self.value)
        self.iteration = torch.where(better, iteration, self.iteration)
        self.x.copy_(torch.where(_expand(better, x), x, self.x))
        return better


@dataclass
class StopCheck:
    """Every `every` iterations, ask rule(member, its current weights) whether that member's fit may stop.

    Each check reads the weights on the host: keep `every` coarse on GPUs.
    """

    every: int
    rule: Callable[[int, dict[str, Tensor]], bool]


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
    device: str | torch.device | None = "auto",
    progress: bool = False,
    stop: StopCheck | None = None,
) -> FitResult:
    """Fit `net` so that A(net(z + noise)) matches the observation y; the net is trained in place.

    z: the fixed input (B, *net.input_shape); y: observation, shaped like op's output.
    x_true: clean image (B, C, H, W), used ONLY to score (oracle PSNR, history), never to steer the fit.
    mask: pruning mask; masked weights are zeroed and their gradients zeroed every step, so with Adam
    (no weight decay) they stay exactly zero. seed: the reg-noise stream. stop: an extra stopping rule
    (e.g. early-bird mask drawing); the result then holds the outputs and weights of the stop.
    """
    job = FitJob(net, z, op, y, x_true, mask, seed)
    with _cudnn_benchmark(cfg.cudnn_benchmark):
        return _fit_members([job], cfg, device, "sequential", progress, stop)[0]


def fit_many(
    jobs: Sequence[FitJob],
    cfg: FitConfig,
    *,
    device: str | torch.device | None = "auto",
    engine: str = "auto",
    progress: bool = False,
    stop: StopCheck | None = None,
) -> list[FitResult]:
    """Fit N independent nets with one config; results equal N calls of `fit` (the nets train in place).

    engine: 'sequential' (N calls of `fit`), 'vmap' (one loop over the N nets stacked into grouped
    convolutions; equal up to rounding, needs one architecture), or 'auto': vmap on CUDA, sequential on
    CPU, where neither batching scheme is faster (measured; see lipcore.members).
    With cfg.es_stop a member stops at its own ES-WMV detection, and with `stop` when its rule says so
    (its results and weights are those of that point); the loop runs until every member has stopped.
    """
    if not jobs:
        raise ValueError("fit_many needs at least one job")
    if len({j.x_true is None for j in jobs}) > 1:
        raise ValueError("give x_true for every job or for none (the oracle is tracked for all members)")
    dev = resolve_device(device)
    with _cudnn_benchmark(cfg.cudnn_benchmark):
        if choose_engine(engine, len(jobs), dev) == "sequential":
            return [
                _fit_members([j], cfg, dev, "sequential", progress, _for_member(stop, i))[0] for i, j in enumerate(jobs)
            ]
        return _fit_members(jobs, cfg, dev, "vmap", progress, stop)


@contextlib.contextmanager
def _cudnn_benchmark(on: bool):
    """torch.backends.cudnn.benchmark is process-wide: set it for this fit only and put it back after."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _for_member(stop: StopCheck | None, member: int) -> StopCheck | None:
    """`stop` as seen by a one-member loop that fits member `member` of a larger set."""
    if stop is None:
        return None
    return StopCheck(stop.every, lambda _, state: stop.rule(member, state))


def _fit_members(
    jobs: Sequence[FitJob],
    cfg: FitConfig,
    device: str | torch.device | None,
    engine: str,
    progress: bool,
    stop: StopCheck | None = None,
) -> list[FitResult]:
    """The loop itself, over the members of one engine."""
    dev = resolve_device(device)
    n = len(jobs)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    for j in jobs:
        j.net.to(dev, memory_format=memory_format).train()  # BN stays in training mode, as in DIP
    members = make_engine(engine, [j.net for j in jobs], [j.mask for j in jobs])
    ops = [on_device(j.op, dev) for j in jobs]  # a copy where it must move: the caller's stays put
    zs = [j.z.to(dev).contiguous(memory_format=memory_format) for j in jobs]
    ys = [j.y.to(dev) for j in jobs]
    x_true = torch.stack([j.x_true.to(dev) for j in jobs]) if jobs[0].x_true is not None else None
    bf16 = resolve_precision(cfg.precision, dev) == "bf16"
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    params = members.params
    # The fused kernel does the whole Adam update in one pass per tensor (10-20% faster steps on small nets).
    optimizer = torch.optim.Adam(params, lr=cfg.lr, fused=dev.type in ("cpu", "cuda"))
    gens = [torch.Generator(device=dev).manual_seed(j.seed) for j in jobs]
    noises = [torch.empty_like(z) for z in zs]
    snapshot = [p.detach().clone() for p in params] if cfg.backtrack_db is not None else []
    last_psnr_obs = torch.full((n,), -math.inf, device=dev)
    backtracks = torch.zeros(n, dtype=torch.long, device=dev)
    step = torch.zeros((), dtype=torch.long, device=dev)
    n_logs = cfg.iterations // cfg.log_every + 1
    history = torch.full((n, n_logs, len(HISTORY_COLUMNS)), math.nan, device=dev)
    rewind_states: list[dict[str, Tensor] | None] = [None] * n

    x_ema: Tensor | None = None
    window: _WindowVariance | None = None
    es: _Tracker | None = None
    es_ema: Tensor | None = None
    es_detected = torch.zeros(n, dtype=torch.bool, device=dev)
    es_detected_at = torch.zeros(n, dtype=torch.long, device=dev)
    oracle: dict[str, _Tracker] = {}
    finished: dict[int, FitResult] = {}
    final_states: dict[int, dict[str, Tensor]] = {}

    def result(i: int, it: int, rows: int, seconds: float) -> FitResult:
        """Member i's results as they stand after iteration `it`."""
        full = window.count >= cfg.es_window
        hist = history[i, :rows].cpu().numpy().astype(np.float64)
        detected = bool(es_detected[i])
        return FitResult(
            x_last=x[i].cpu(),
            x_ema=x_ema[i].cpu(),
            x_es=(es.x[i] if full else x[i]).cpu(),
            x_es_ema=(es_ema[i] if full else x_ema[i]).cpu(),
            es_iteration=int(es.iteration[i]) if full else it,
            es_detected=int(es_detected_at[i]) if detected else None,
            iterations=it,
            history={name: hist[:, c] for c, name in enumerate(HISTORY_COLUMNS)},
            backtracks=int(backtracks[i]),
            seconds=seconds,
            oracle={k: OracleBest(int(t.iteration[i]), float(t.value[i]), t.x[i].cpu()) for k, t in oracle.items()}
            or None,
            rewind_state={k: v.cpu() for k, v in rewind_states[i].items()} if rewind_states[i] is not None else None,
        )

    def objective(sl: slice, x: Tensor, floor: Tensor | None) -> tuple[Tensor, Tensor]:
        """Data loss of members `sl`. floor: at a backtracking check, the observation PSNR below which a
        member's fit counts as collapsed; its loss is then zeroed (and its weights restored below)."""
        per_image = torch.stack([(o(xi) - yi).pow(2).flatten(1).mean(1) for o, xi, yi in zip(ops[sl], x, ys[sl])])
        loss = per_image.sum(1)
        if floor is not None:
            loss = loss * ~(psnr_from_mse(per_image.detach()).amin(1) < floor[sl])
        return per_image, loss.sum()

    bar = _progress_bar(cfg.iterations) if progress else None
    start = time.perf_counter()
    row, it = 0, 0
    for it in range(1, cfg.iterations + 1):
        if cfg.rewind_iteration == it - 1:
            rewind_states = [members.state_dict(i) for i in range(n)]
        step.add_(1)
        optimizer.zero_grad(set_to_none=True)
        if cfg.reg_noise_std == 0:
            z_in = zs
        else:
            z_in = [z + cfg.reg_noise_std * e.normal_(generator=g) for z, e, g in zip(zs, noises, gens)]
        is_log = it % cfg.log_every == 0 or it == cfg.iterations
        check = is_log and cfg.backtrack_db is not None
        floor = last_psnr_obs - cfg.backtrack_db if check else None
        x, per_image = members.forward_backward(z_in, partial(objective, floor=floor), autocast)
        if members.masked:
            torch._foreach_mul_([w.grad for w in members.masked], members.mask_values)
        if check:
            # Backtracking (DIP): if the fit to the observation collapsed since the last check, restore the
            # weights of that check (the objective zeroed this step's loss). Decided and applied on the device.
            psnr_obs = psnr_from_mse(per_image).amin(1)
            collapsed = psnr_obs < floor
            with torch.no_grad():  # after backward: autograd still needed the pre-restore weights
                for p, s, c in zip(params, snapshot, members.flags_for(collapsed)):
                    p.copy_(torch.where(c, s, p))
                    s.copy_(p)
            last_psnr_obs = torch.where(collapsed, last_psnr_obs, psnr_obs)
            backtracks += collapsed
        optimizer.step()

        with torch.no_grad():
            x_ema = x.clone() if x_ema is None else x_ema.lerp_(x, 1.0 - cfg.ema_weight)
            if window is None:
                window = _WindowVariance(cfg.es_window, x)
                es = _Tracker(x, maximise=False)
                es_ema = torch.zeros_like(x)
            variance = window.push(x)
            if variance is not None:
                better = es.update(variance, step, x, es_detected)
                es_ema.copy_(torch.where(_expand(better, x), x_ema, es_ema))
                newly = ~es_detected & (step - es.iteration >= cfg.es_patience)
                es_detected_at = torch.where(newly, step, es_detected_at)
                es_detected = es_detected | newly
            if x_true is not None:
                if not oracle:
                    oracle = {"out": _Tracker(x, True), "ema": _Tracker(x, True)}
                p_out = psnr(x.flatten(0, 1), x_true.flatten(0, 1)).view(n, -1).mean(1)
                p_ema = psnr(x_ema.flatten(0, 1), x_true.flatten(0, 1)).view(n, -1).mean(1)
                oracle["out"].update(p_out, step, x)
                oracle["ema"].update(p_ema, step, x_ema)
            if is_log:
                nan = torch.full((n,), math.nan, device=dev)
                history[:, row] = torch.stack(
                    [
                        step.float().expand(n),
                        per_image.mean(1),
                        psnr_from_mse(per_image).mean(1),
                        variance if variance is not None else nan,
                        backtracks.float(),
                        p_out if x_true is not None else nan,
                        p_ema if x_true is not None else nan,
                    ],
                    dim=1,
                )
                row += 1
        if bar is not None:
            bar.update(1)
            if is_log:
                bar.set_postfix(loss=f"{float(per_image.mean()):.3g}")  # one sync per log_every steps
        stopping: list[int] = []
        may_stop = cfg.rewind_iteration is None or it > cfg.rewind_iteration  # not before the rewind point
        if is_log and cfg.es_stop and may_stop:  # host read only here, every log_every steps
            stopping += torch.nonzero(es_detected.cpu()).flatten().tolist()
        if stop is not None and it % stop.every == 0 and may_stop:
            stopping += [i for i in range(n) if i not in finished and stop.rule(i, members.state_dict(i))]
        for i in stopping:
            if i not in finished:  # member i stops here: keep its results and weights as they are now
                finished[i] = result(i, it, row, time.perf_counter() - start)
                final_states[i] = members.state_dict(i)
        if len(finished) == n:
            break
    if cfg.rewind_iteration == it:
        rewind_states = [members.state_dict(i) for i in range(n)]
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    members.write_back()
    for i, state in final_states.items():
        jobs[i].net.load_state_dict(state)
    return [finished[i] if i in finished else result(i, it, row, seconds) for i in range(n)]


def _progress_bar(total: int):
    try:
        from tqdm.auto import tqdm
    except ImportError as err:
        raise ImportError("progress=True needs tqdm: pip install 'lipcore[progress]'") from err
    return tqdm(total=total, desc="fit", unit="it")
