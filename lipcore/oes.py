"""Optimal Eye Surgeon (OES; Ghosh et al., ICML 2024): a mask learned at initialisation, on the observation.

theta_0 stays frozen; every prunable conv weight gets a logit p (start 0: keep probability 1/2). Each step
samples a relaxed mask m from the binary concrete distribution at temperature tau, the two-class Gumbel-softmax
over {keep, drop} with keep probability sigmoid(p): m = sigmoid((p + log u - log(1 - u)) / tau), u ~ U(0, 1),
and Adam moves the logits on

    ||A f(z; theta_0 * m) - y||^2 / n  +  kl_weight * mean_i KL(Bern(sigmoid(p_i)) || Bern(rho)),

rho the target density. The final mask keeps the `kept` weights of largest logit (global top-k at exactly the
target count, ties broken at random); the kept weights are then trained from theta_0 by the same fit as LIP's.

What differs from the authors' code (Avra98/Optimal-Eye-Surgeon), on purpose:
- the mask covers the conv weights only, as LIP's (theirs covers BN gamma/beta and biases too, which empties
  layers at 90-95% sparsity); layer collapse is recorded by the caller;
- the KL term is weighted on its MEAN over the weights: kl_weight 3e-3 is their kappa = 1e-9 summed over their
  net's ~3M weights, so the balance of the two terms does not change with the net's size;
- the search length is a multiple of our fit's length (theirs: 60k search steps for a 40k-iteration fit) and
  draws no input noise (z fixed, as in their search).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from . import prune
from .config import NetConfig, OesConfig
from .nets import net_from_state
from .physics import Problem
from .runtime import on_device, resolve_device

if TYPE_CHECKING:
    from .methods import MaskInputs


def kl_to_density(logits: Tensor, rho: float) -> Tensor:
    """KL(Bern(sigmoid(p)) || Bern(rho)) per logit p, in nats (computed from log-sigmoids: exact at any p)."""
    log_q, log_not_q = F.logsigmoid(logits), F.logsigmoid(-logits)
    q = log_q.exp()
    return q * (log_q - math.log(rho)) + (1.0 - q) * (log_not_q - math.log1p(-rho))


def relaxed_mask(logits: Tensor, temperature: float, generator: torch.Generator) -> Tensor:
    """A binary-concrete sample in (0, 1) per logit (the two-class Gumbel-softmax); differentiable in the logits."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    u = u.clamp(1e-6, 1.0 - 1e-6)  # float32 rand can return 0: log(0) would make the sample NaN
    return torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)


def top_k_mask(logits: prune.Mask, kept: int, generator: torch.Generator) -> prune.Mask:
    """Keep exactly `kept` weights, those of largest logit; ties broken by a random order from `generator`."""
    names = list(logits)
    flat = prune._flat(logits, names, torch.device("cpu"))
    if not 0 < kept <= flat.numel():
        raise ValueError(f"kept must be in [1, {flat.numel()}], got {kept}")
    order = torch.randperm(flat.numel(), generator=generator)
    ranked = order[torch.argsort(flat[order], descending=True, stable=True)]  # equal logits: random order
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[ranked[:kept]] = True
    return {n: part.view(logits[n].shape) for n, part in zip(names, keep.split([logits[n].numel() for n in names]))}


@dataclass(frozen=True)
class Search:
    """An OES search's result: the mask (on the CPU) and what it cost and reached."""

    mask: prune.Mask
    steps: int
    loss_curve: list[float]  # the objective every `every` steps (first and last included)
    every: int

    def record(self) -> dict[str, Any]:
        """What results.json keeps: the search's length and its objective at the start and the end."""
        return {"steps": self.steps, "loss_first": self.loss_curve[0], "loss_last": self.loss_curve[-1]}


def search(
    net_cfg: NetConfig,
    theta0: dict[str, Tensor],
    z: Tensor,
    problem: Problem,
    names: list[str],
    kept: int,
    cfg: OesConfig,
    steps: int,
    generator: torch.Generator,
    device: str | torch.device | None = "cpu",
) -> Search:
    """Learn a mask over the conv weights `names` of the net at `theta0` that keeps exactly `kept` of them.

    The relaxed masks draw from `generator` (via one seed: the draws run on `device`); the tie-break too.
    The objective is read back once at the end (no per-step host sync).
    """
    dev = resolve_device(device)
    net = net_from_state(net_cfg, theta0).to(dev).train()  # BN in training mode, as in the fits
    net.requires_grad_(False)
    frozen = dict(net.named_parameters())
    total = sum(frozen[n].numel() for n in names)
    rho = kept / total
    logits = {n: torch.zeros_like(frozen[n], requires_grad=True) for n in names}
    opt = torch.optim.Adam(logits.values(), lr=cfg.lr)
    draws = torch.Generator(device=dev).manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    z, op, y = z.to(dev), on_device(problem.op, dev), problem.y.to(dev)
    every = max(1, steps // 100)
    curve = []
    for step in range(steps):
        masked = {n: frozen[n] * relaxed_mask(p, cfg.temperature, draws) for n, p in logits.items()}
        x = functional_call(net, masked, (z,), strict=False)
        kl = torch.cat([kl_to_density(p, rho).flatten() for p in logits.values()]).mean()
        loss = (op(x) - y).pow(2).mean() + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps - 1:
            curve.append(loss.detach())
    mask = top_k_mask(logits, kept, generator)
    return Search(mask, steps, [float(v) for v in torch.stack(curve).cpu()], every)


def oes_mask(m: MaskInputs) -> prune.Mask:
    """The registry's OES: searched at m.start (theta_0) on the observation, keeping as many conv weights as the
    LIP mask m.reference; m.settings["oes"] = (OesConfig, steps). The search's record goes into m.notes."""
    if "oes" not in m.settings:
        raise ValueError("the OES mask needs settings['oes'] = (OesConfig, search steps): its search length")
    cfg, steps = m.settings["oes"]
    found = search(
        m.net,
        m.start,
        m.z,
        m.problem,
        list(m.reference),
        prune.count_kept(m.reference),
        cfg,
        steps,
        m.generator,
        m.device,
    )
    m.notes["search"] = found.record()
    return found.mask
