"""The registry of methods: one entry per method LIP is compared with, and LIP and the dense DIP themselves.

An entry says what the method is (one line, the report's "what it is"), its role (a reference: the IMP rounds
themselves; a baseline: another way to get a sparse prior, chosen in params evaluate.baselines /
evaluate.curve_methods; a control: LIP's own mask from another start, run at every headline), how its mask and
its start are made, and the paper's claim it checks. The evaluate stage fits what the entries say, the params
check refuses names not registered here, and the report's tables, claims, figure and image grid list the
registered methods in registry order; a method missing from the registry cannot run, so none vanishes from a
table unnoticed. (Modelled on open_lth's pruning/registry.py and lottery/branch/registry.py.)

Adding a method: its mask (and, if not the rewind weights, its start) in a module of its own, one `Method` entry
in REGISTRY below; `registered` adds one for the length of a block (tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import baselines, oes, prune
from .config import NetConfig
from .physics import Problem
from .trials import fresh_initialisation

ROLES = ("reference", "baseline", "control")


@dataclass(frozen=True)
class MaskInputs:
    """What a method's mask is made from, for one problem, seed and round."""

    net: NetConfig
    start: dict[str, Tensor]  # the weights the mask is scored at (SNIP): LIP's start, the rewind weights
    z: Tensor
    problem: Problem
    reference: prune.Mask  # LIP's mask of the round: the method removes exactly as many weights
    generator: torch.Generator  # the method's own stream (random masks draw from it)
    device: str | torch.device | None = "cpu"  # where a scored mask's passes run; the mask comes back on the CPU
    settings: Mapping[str, Any] = field(default_factory=dict)  # a method's own params, by its name (e.g. "oes")
    notes: dict[str, Any] = field(default_factory=dict)  # what making the mask reports (e.g. OES's search cost)


@dataclass(frozen=True)
class StartInputs:
    """What a method's start is made from, for one seed: the weights its mask is trained from."""

    net: NetConfig
    rewind: dict[str, Tensor]  # LIP's own start: round 0's rewind weights
    theta0: Callable[[], dict[str, Tensor]]  # round 0's theta_0 (read on demand: few methods need it)
    root_seed: int
    seed: int  # the initialisation index


MaskMaker = Callable[[MaskInputs], prune.Mask]
StartMaker = Callable[[StartInputs], dict[str, Tensor]]


def rewind_start(s: StartInputs) -> dict[str, Tensor]:
    """LIP's own start: every baseline is trained from the same weights as the LIP mask it is compared with."""
    return s.rewind


def theta0_start(s: StartInputs) -> dict[str, Tensor]:
    return s.theta0()


def fresh_start(s: StartInputs) -> dict[str, Tensor]:
    return fresh_initialisation(s.net, s.root_seed, s.seed)


def lip_mask(m: MaskInputs) -> prune.Mask:
    """The LIP mask itself (the controls train it from another start)."""
    return m.reference


@dataclass(frozen=True)
class Method:
    """One method. mask None: not a mask made here (LIP and dense are read from the IMP rounds; the deep
    decoder is another net, fitted by stages.evaluate.fit_decoder)."""

    name: str
    what: str  # one line: the report's "what it is"
    role: str  # one of ROLES
    claim: str | None = None  # the paper's claim it checks (the report's claims table); None: no row
    mask: MaskMaker | None = None
    start: StartMaker = rewind_start
    curve: bool = True  # a baseline that may also be fitted at every round's sparsity (evaluate.curve_methods)
    late_rewinding_only: bool = False  # a control that only differs from LIP with imp.rewind_iteration > 0
    grid: bool = False  # shown in the per-problem image grid
    marker: int | None = None  # its rank among the headline markers of the PSNR-vs-sparsity figure (None: after
    # the ranked ones, in registry order); the ranks keep the committed figure's colours
    headline: str | None = None  # the metrics/headline.json column it feeds (a column fed by several: the best)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"{self.name}: role must be one of {ROLES}, got {self.role!r}")

    @property
    def selectable(self) -> bool:
        """Chosen by name in params (evaluate.baselines; evaluate.curve_methods if `curve`): a baseline mask."""
        return self.role == "baseline" and self.mask is not None


def _baseline(name: str, what: str, claim: str, mask: MaskMaker, **kw) -> Method:
    return Method(name, what, "baseline", claim, mask, **kw)


# The report's order: its tables list the methods so (claims: the baselines', then the controls').
REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "dense",
            "the dense DIP (round 0)",
            "reference",
            "LIP ≈ dense DIP up to high sparsity",
            grid=True,
            headline="dense",
        ),
        Method("lip", "the LIP mask of the headline round", "reference", grid=True, headline="lip"),
        _baseline(
            "random_global",
            "random mask, same number of weights",
            "LIP > random pruning (global) at the same sparsity",
            baselines.random_global,
            grid=True,
            marker=1,
            headline="random",
        ),
        _baseline(
            "random_layer",
            "random mask, same count per layer (= LIP mask shuffled within layers)",
            "LIP > random pruning (layer-matched, = shuffled LIP mask)",
            baselines.random_layer,
            marker=0,
            headline="random",
        ),
        _baseline(
            "snip",
            "SNIP, one shot",
            "LIP > SNIP at the same sparsity",
            baselines.snip,
            grid=True,
            marker=3,
            headline="snip",
        ),
        _baseline(
            "snip_layer",
            "SNIP's ranking at LIP's count per layer",
            "LIP > SNIP at the same sparsity per layer (no layer collapse)",
            baselines.snip_layer,
            marker=2,
        ),
        _baseline(
            "oes",
            "Optimal Eye Surgeon: a mask learned at theta_0 on the observation (Ghosh et al. 2024)",
            "LIP > OES (a mask learned at theta_0) at the same sparsity",
            oes.oes_mask,
            start=theta0_start,
        ),
        _baseline(
            "snip_iterative",
            f"SNIP in {baselines.SNIP_STEPS} steps",
            "LIP > iterative SNIP at the same sparsity",
            baselines.snip_iterative,
        ),
        Method(
            "reinit",
            "LIP mask from a fresh theta_0 (lottery-ticket control)",
            "control",
            "(control) LIP > its mask from a fresh theta_0: the init matters too",
            lip_mask,
            fresh_start,
            marker=4,
        ),
        Method(
            "lip_theta0",
            "LIP mask from theta_0, not the rewind weights",
            "control",
            "(control) late rewinding > the same mask from theta_0",
            lip_mask,
            theta0_start,
            late_rewinding_only=True,
        ),
        Method(
            "decoder",
            "deep decoder with as many parameters",
            "baseline",
            "LIP > a deep decoder of the same size",
            grid=True,
            marker=5,
            headline="decoder",
        ),
    )
}


def get(name: str) -> Method:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose from {list(REGISTRY)}")
    return REGISTRY[name]


def names(role: str | None = None) -> list[str]:
    """The registered methods (of one role), in registry order."""
    return [n for n, m in REGISTRY.items() if role is None or m.role == role]


def selectable(curve: bool = False) -> list[str]:
    """The names params may list in evaluate.baselines (curve: in evaluate.curve_methods)."""
    return [n for n, m in REGISTRY.items() if m.selectable and (m.curve or not curve)]


def refuse_unknown(key: str, chosen: tuple[str, ...], curve: bool = False) -> None:
    """Refuse names in params that are not selectable methods (curve: curve methods), naming the registered ones."""
    names = selectable(curve)
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise ValueError(f"{key}: unknown method(s) {unknown}; choose from {names}")


def controls(rewind_iteration: int) -> list[str]:
    """The lottery-ticket controls of the headline LIP mask (Frankle & Carbin 2019; Frankle et al. 2020): with
    late rewinding (rewind_iteration > 0), also those that only differ from LIP then."""
    return [
        n for n, m in REGISTRY.items() if m.role == "control" and (rewind_iteration > 0 or not m.late_rewinding_only)
    ]


def opponents() -> list[str]:
    """What LIP is compared with, in the report's order: every method but LIP."""
    return [n for n in REGISTRY if n != "lip"]


def claimed() -> list[str]:
    """The methods with a claim "LIP > X": the baselines', then the controls' (the claims table's order)."""
    return [n for role in ("baseline", "control") for n, m in REGISTRY.items() if m.role == role and m.claim]


def markers() -> list[str]:
    """The methods marked at LIP's sparsity in the PSNR-vs-sparsity figure, in drawing order: every baseline and
    control, the ranked ones first."""
    drawn = [n for n, m in REGISTRY.items() if m.role != "reference"]
    return sorted(drawn, key=lambda n: (REGISTRY[n].marker is None, REGISTRY[n].marker or 0))


def grid() -> list[str]:
    """The methods an image grid shows (after the clean and the degraded image)."""
    return [n for n, m in REGISTRY.items() if m.grid]


def headline_columns() -> dict[str, list[str]]:
    """metrics/headline.json's PSNR columns and the methods each one takes the best of."""
    out: dict[str, list[str]] = {}
    for n, m in REGISTRY.items():
        if m.headline is not None:
            out.setdefault(m.headline, []).append(n)
    return out


def baseline_mask(
    method: str,
    net_cfg: NetConfig,
    start: dict[str, Tensor],
    z: Tensor,
    problem: Problem,
    reference: prune.Mask,
    generator: torch.Generator,
    device: str | torch.device | None = "cpu",
    settings: Mapping[str, Any] | None = None,
) -> prune.Mask:
    """The mask of registered method `method` matched to `reference` (the LIP mask it is compared with)."""
    m = get(method)
    if m.mask is None:
        raise ValueError(f"{method!r} makes no mask; choose from {[n for n, e in REGISTRY.items() if e.mask]}")
    return m.mask(MaskInputs(net_cfg, start, z, problem, reference, generator, device, settings or {}))


@contextlib.contextmanager
def registered(method: Method) -> Iterator[Method]:
    """`method` in the registry for the length of the block (last in the report's order), then removed."""
    if method.name in REGISTRY:
        raise ValueError(f"{method.name!r} is registered already")
    REGISTRY[method.name] = method
    try:
        yield method
    finally:
        del REGISTRY[method.name]
