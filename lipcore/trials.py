"""Training a (masked) net from given weights on a problem and scoring it: IMP rounds, baselines, transfer.

The protocol decides what the search fits (whose weights IMP prunes) see; the evaluation fit, whose scores
are reported, always fits the observation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from . import prune
from .config import FitConfig, ImpConfig, NetConfig
from .fit import FitJob, FitResult, fit_many
from .imp import early_bird_stop, round_fit_cfg
from .nets import build_net, make_input, net_from_state, skeleton
from .physics import Denoise, Problem, task_class
from .scoring import fit_scores
from .seeding import generator

ProtocolName = Literal["paper", "blind"]  # params `protocol` (see search_problem)
PROTOCOLS: tuple[str, ...] = get_args(ProtocolName)

log = logging.getLogger(__name__)


def search_problem(problem: Problem, protocol: str) -> Problem:
    """The problem the masks are searched on.

    'paper' reproduces the LIP code: denoising masks (a task whose class sets paper_searches_clean) are searched
    by fitting the CLEAN image (an oracle setting); other tasks search on the observation. 'blind' always
    searches on the observation.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "paper" and task_class(problem.degradation.task).paper_searches_clean:
        return Problem(Denoise(problem.op.image_shape, 0.0), problem.x_true, problem.x_true, problem.degradation)
    return problem


def initialisation(net_cfg: NetConfig, root_seed: int, index: int, height: int, width: int) -> tuple[dict, Tensor]:
    """theta_0 (every parameter and BN buffer) and z of initialisation `index`.

    They depend on the index only (z also on the image size), never on the image: masks found on one image
    can then be retrained from the same theta_0 on another (transfer).
    """
    net = build_net(net_cfg, generator(root_seed, "init", index))
    z = make_input(net, height, width, generator(root_seed, "z", index))
    return {k: v.clone() for k, v in net.state_dict().items()}, z


def group_initialisation(
    net_cfg: NetConfig, root_seed: int, index: int, inputs: int, height: int, width: int
) -> tuple[dict, Tensor]:
    """theta_0 and z of initialisation `index` for a multi-image fit with `inputs` inputs (lipcore.multi).

    theta_0 is the single-image fits' own (so the group's masks and theirs start alike and retrain from the
    same weights); one input is their z too, several are drawn from a stream of their own.
    """
    theta0, z = initialisation(net_cfg, root_seed, index, height, width)
    if inputs > 1:
        z = make_input(skeleton(net_cfg), height, width, generator(root_seed, "z_group", index), batch=inputs)
    return theta0, z


def fresh_initialisation(net_cfg: NetConfig, root_seed: int, index: int) -> dict[str, Tensor]:
    """A theta_0 that no LIP run starts from (the lottery-ticket 'reinit' control of initialisation `index`):
    drawn like `initialisation`'s, from a stream of its own."""
    net = build_net(net_cfg, generator(root_seed, "reinit", index))
    return {k: v.clone() for k, v in net.state_dict().items()}


@dataclass
class Trial:
    """One (masked) net to train from `start` on `problem`."""

    start: dict[str, Tensor]
    z: Tensor
    problem: Problem
    mask: prune.Mask | None
    seed: int  # the reg-noise stream
    label: str = ""  # names it in progress lines and records (e.g. "f16-denoise s0 r2")


@dataclass
class Outcome:
    """One trial's fits and scores."""

    state: dict[str, Tensor]  # weights after the SEARCH fit (what the next IMP round prunes)
    result: FitResult  # the EVALUATION fit (on the observation)
    scores: dict[str, Any]
    rewind_state: dict[str, Tensor] | None  # from the SEARCH fit, when its fit_cfg.rewind_iteration is set
    search_iterations: int  # what the search fit ran (its cost; the evaluation fit's when they are one)


def train_and_score(
    net_cfg: NetConfig,
    trials: list[Trial],
    fit_cfg: FitConfig,
    protocol: str = "blind",
    imp: ImpConfig | None = None,
    device: str | torch.device | None = "auto",
) -> list[Outcome]:
    """Train every trial from its start with its mask on its search problem, and score a fit on its observation.

    The nets share one architecture and are fitted together by `fit_many` (batched on GPU). imp: for IMP
    rounds, how the search fits run (imp.search: shorter, or stopped early-bird) and which mask the next
    round draws; None: the search fit is the evaluation fit. When the protocol searches on the observation
    with the evaluation's own fit, one fit serves both; otherwise each trial gets a search and an evaluation fit.
    """
    search = imp.search if imp is not None else None
    stop = early_bird_stop(net_cfg, [t.mask for t in trials], imp) if imp is not None else None
    searches = [search_problem(t.problem, protocol) for t in trials]
    separate = search is not None and not search.is_evaluation
    redo = [i for i, (t, s) in enumerate(zip(trials, searches)) if s is not t.problem or separate]
    jobs = [_job(net_cfg, t, s, "search" if i in redo else "") for i, (t, s) in enumerate(zip(trials, searches))]
    search_cfg = search.fit_cfg(fit_cfg) if search is not None else fit_cfg
    results = fit_many(jobs, search_cfg, device=device, stop=stop)
    states = [{k: v.detach().cpu().clone() for k, v in job.net.state_dict().items()} for job in jobs]
    rewinds = [res.rewind_state for res in results]
    spent = [res.iterations for res in results]
    if redo:  # the search fit was not the evaluation: evaluate with a full fit on the observation
        again = fit_many([_job(net_cfg, trials[i], trials[i].problem) for i in redo], fit_cfg, device=device)
        for i, res in zip(redo, again):
            results[i] = res
    outcomes = [
        Outcome(state, res, fit_scores(res, t.problem, fit_cfg), rewind, n)
        for state, res, t, rewind, n in zip(states, results, trials, rewinds, spent)
    ]
    for t, o in zip(trials, outcomes):
        _log_outcome(t.label, o)
    return outcomes


def _log_outcome(label: str, o: Outcome) -> None:
    """One INFO line per trial: what it is, its length and speed, and its PSNR at the reported points."""
    res, scores = o.result, o.scores
    oracle = scores.get("oracle_best")
    best = f", oracle best {oracle['psnr']:.2f} dB (it {oracle['iteration']})" if oracle else ""
    log.info(
        "%s: %d iterations, %.4f s/it; PSNR %.2f dB at ES-WMV (it %d)%s, %.2f dB last",
        label or "fit",
        res.iterations,
        res.seconds / max(res.iterations, 1),
        scores["es"]["psnr"],
        scores["es"]["iteration"],
        best,
        scores["last"]["psnr"],
    )


def imp_round(
    net_cfg: NetConfig,
    trial: Trial,
    fit_cfg: FitConfig,
    protocol: str,
    imp: ImpConfig,
    k: int,
    device: str | torch.device | None = "auto",
) -> Outcome:
    """IMP round k of one trial (trial.mask: round k's mask; None for round 0, the dense fit); the search
    fit runs as imp.find_ticket's round k does."""
    return train_and_score(net_cfg, [trial], round_fit_cfg(fit_cfg, imp, k), protocol, imp, device)[0]


def _job(net_cfg: NetConfig, t: Trial, fitted: Problem, role: str = "") -> FitJob:
    """Trial t as a fit of problem `fitted` (its search or its observation problem), scored on t's x_true
    with the metric t's task reports; `role` ("search") joins its label."""
    net = net_from_state(net_cfg, t.start)
    label = " ".join(p for p in (t.label, role) if p)
    return FitJob(net, t.z, fitted.op, fitted.y, t.problem.x_true, t.mask, t.seed, metric=t.problem.psnr, label=label)
