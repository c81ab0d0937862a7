"""What LIP is compared with at the same sparsity: random masks that remove exactly as many weights (globally,
and layer-wise matched), SNIP (one-shot and iterative), and a deep decoder with as many parameters as the
sparse net keeps. Each mask is one function of lipcore.methods.MaskInputs; lipcore.methods registers them.

random_layer is the lottery-ticket "shuffled" control: a uniformly random permutation of the LIP mask within
each layer is a uniformly random mask with the layer's kept count, which is what random_layer draws. One name
is kept for it: random_layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import prune
from .config import NetConfig
from .nets import net_from_state, skeleton
from .runtime import on_device, resolve_device

if TYPE_CHECKING:
    from .methods import MaskInputs

SNIP_STEPS = 5  # iterative SNIP: prune in this many geometric steps

# Each mask below prunes exactly as many weights as m.reference (the LIP mask it is compared with) and is
# returned on the CPU; lipcore.methods registers them by name.


def _fraction(reference: prune.Mask) -> float:
    return (prune.count_total(reference) - prune.count_kept(reference)) / prune.count_total(reference)


def random_global(m: MaskInputs) -> prune.Mask:
    """Uniformly over all conv weights (drawn on the CPU: its numbers do not depend on the fits' device)."""
    return prune.random_mask(net_from_state(m.net, m.start), _fraction(m.reference), m.generator)


def random_layer(m: MaskInputs) -> prune.Mask:
    """As many per layer as the reference: the lottery-ticket "shuffled" control."""
    return prune.random_mask_like(m.reference, m.generator)


def snip(m: MaskInputs) -> prune.Mask:
    """The smallest |w * dL/dw| at m.start on the problem's loss, ranked globally."""
    net, loss = _scored(m)
    return _cpu(prune.snip_mask(net, loss, _fraction(m.reference)))


def snip_layer(m: MaskInputs) -> prune.Mask:
    """SNIP's scores ranked within each layer, as many per layer as the reference (SNIP's criterion at LIP's
    allocation: no layer collapse)."""
    net, loss = _scored(m)
    return _cpu(prune.keep_top_like(prune.snip_scores(net, loss), m.reference))


def snip_iterative(m: MaskInputs) -> prune.Mask:
    """Global SNIP in SNIP_STEPS steps, re-scored on the net pruned so far."""
    net, loss = _scored(m)
    return _cpu(prune.snip_iterative_mask(net, loss, _fraction(m.reference), SNIP_STEPS))


def _scored(m: MaskInputs) -> tuple[torch.nn.Module, Callable[[torch.nn.Module], Tensor]]:
    """The net at m.start and the problem's loss, on m.device: SNIP's forward and backward passes run where
    the fits do (a paper-scale net's gradient on one CPU thread is slow)."""
    dev = resolve_device(m.device)
    net = net_from_state(m.net, m.start).to(dev)  # its own copy of `start` (net_from_state): moved in place
    z, op, y = m.z.to(dev), on_device(m.problem.op, dev), m.problem.y.to(dev)

    def loss(net: torch.nn.Module) -> Tensor:
        return (op(net(z)) - y).pow(2).mean()

    return net, loss


def _cpu(mask: prune.Mask) -> prune.Mask:
    return {n: v.cpu() for n, v in mask.items()}


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
