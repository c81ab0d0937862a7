"""What LIP is compared with at the same sparsity: random masks that remove exactly as many weights (globally,
and layer-wise matched), SNIP (one-shot and iterative), and a deep decoder with as many parameters as the
sparse net keeps.

random_layer is the lottery-ticket "shuffled" control: a uniformly random permutation of the LIP mask within
each layer is a uniformly random mask with the layer's kept count, which is what random_layer draws. One name
is kept for it: random_layer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import prune
from .config import NetConfig
from .nets import net_from_state, skeleton
from .physics import Problem
from .runtime import on_device, resolve_device

MASK_BASELINES = ("random_global", "random_layer", "snip", "snip_layer", "snip_iterative")
SNIP_STEPS = 5  # iterative SNIP: prune in this many geometric steps


def baseline_mask(
    method: str,
    net_cfg: NetConfig,
    start: dict[str, Tensor],
    z: Tensor,
    problem: Problem,
    reference: prune.Mask,
    generator: torch.Generator,
    device: str | torch.device | None = "cpu",
) -> prune.Mask:
    """A baseline mask pruning exactly as many weights as `reference` (the LIP mask it is compared with).

    random_global: uniformly over all conv weights; random_layer: as many per layer as `reference`;
    snip: the smallest |w * dL/dw| at `start` on the problem's loss, ranked globally; snip_layer: the same
    scores ranked within each layer, as many per layer as `reference` (SNIP's criterion at LIP's allocation:
    no layer collapse); snip_iterative: global SNIP in SNIP_STEPS steps, re-scored on the net pruned so far.
    device: where SNIP's forward and backward passes run (the fits' device: a paper-scale net's gradient on one
    CPU thread is slow); the random masks are drawn on the CPU (their numbers do not depend on it). The mask is
    returned on the CPU.
    """
    if method not in MASK_BASELINES:
        raise ValueError(f"unknown baseline {method!r}; choose from {MASK_BASELINES}")
    net = net_from_state(net_cfg, start)
    removed = prune.count_total(reference) - prune.count_kept(reference)
    fraction = removed / prune.count_total(reference)
    if method == "random_global":
        return prune.random_mask(net, fraction, generator)
    if method == "random_layer":
        return prune.random_mask_like(reference, generator)

    dev = resolve_device(device)
    net = net.to(dev)  # its own copy of `start` (net_from_state): moved in place
    z, op, y = z.to(dev), on_device(problem.op, dev), problem.y.to(dev)

    def loss(m: torch.nn.Module) -> Tensor:
        return (op(m(z)) - y).pow(2).mean()

    if method == "snip":
        mask = prune.snip_mask(net, loss, fraction)
    elif method == "snip_layer":
        mask = prune.keep_top_like(prune.snip_scores(net, loss), reference)
    else:
        mask = prune.snip_iterative_mask(net, loss, fraction, SNIP_STEPS)
    return {n: m.cpu() for n, m in mask.items()}


def nonzero_parameters(net_cfg: NetConfig, mask: prune.Mask) -> int:
    """Trainable parameters of the masked net: kept conv weights + all biases and BN parameters."""
    total = sum(p.numel() for p in skeleton(net_cfg).parameters())
    return total - (prune.count_total(mask) - prune.count_kept(mask))


def decoder_channels_for(n_params: int, layers: int = 6, out_channels: int = 3) -> int:
    """The deep-decoder width k whose parameter count (layers*k^2 + 2*layers*k + out*k) is nearest n_params."""
    a, b = layers, 2 * layers + out_channels
    k = (-b + math.sqrt(b * b + 4 * a * n_params)) / (2 * a)
    candidates = [max(1, math.floor(k)), max(1, math.ceil(k))]
    return min(candidates, key=lambda c: abs(a * c * c + b * c - n_params))


def matched_decoder(net_cfg: NetConfig, mask: prune.Mask, layers: int) -> NetConfig:
    """The deep decoder whose parameter count is nearest to what the masked net `net_cfg` keeps."""
    width = decoder_channels_for(nonzero_parameters(net_cfg, mask), layers, net_cfg.out_channels)
    return NetConfig(
        kind="decoder",
        decoder_channels=width,
        decoder_layers=layers,
        out_channels=net_cfg.out_channels,
        upsample=net_cfg.upsample,
    )
