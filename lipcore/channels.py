"""Channel (structured) lottery tickets of the DIP skip net: masks over output channels, and the physically
smaller net that a channel mask leaves.

An unstructured mask (lipcore.prune) multiplies dense weights by zeros, so a masked fit costs what a dense one
costs. A channel mask removes whole output filters; `materialise` then builds a net with fewer channels per conv,
which is cheaper to run (bench/channel_speed.py).

ChannelMask = dict[conv weight name -> bool vector over that conv's OUTPUT channels] (True = kept), e.g.
"levels.0.down.0.0.weight" -> (channels_down[0],). Every Conv2d of the SkipNet is prunable except the head
("head.weight"): its 3 output channels are the image. A scale with channels_skip 0 has no skip conv, so no entry.

Where a conv's input comes from (its producer keeps which input columns survive):
- the skip conv and down.0 of scale i read scale i's input: z at scale 0 (never pruned), else scale i-1's down.1;
- down.1 reads down.0; up.2 (1x1) reads up.1; the head reads scale 0's up.2;
- up.1 reads the concat [skip channels, then the upsampled channels] (SkipNet.forward's order), the upsampled
  ones being scale i+1's up.2, or at the deepest scale its own down.1; up.0, the BatchNorm over that concat, is
  sliced the same way.

Scores (`channel_scores`): the L1 norm of each output filter of the TRAINED weights, as in Li et al. 2017
("Pruning filters for efficient ConvNets") and the early-bird channel tickets of You et al. 2020, ranked per layer
(layers differ in fan-in, so their norms are not comparable across layers). Rounding and ties as in lipcore.prune:
round half up, and among equal scores the lowest channel index is removed first, so a mask is a deterministic
function of the weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .config import NetConfig
from .nets import SkipNet, _conv_bn_act, _pointwise, skeleton
from .prune import _remove_smallest, round_count

ChannelMask = dict[str, Tensor]

HEAD = "head.weight"  # never pruned: its output channels are the image's
_Z = "z"  # the net's input, a producer whose in_channels are always kept


@dataclass(frozen=True)
class _Conv:
    """One prunable conv: its module name, shape rule and where its input channels come from."""

    name: str  # module name, e.g. "levels.0.down.0.0"; the mask key is name + ".weight"
    kernel: int
    stride: int
    out: int  # the full net's output channels
    reads: tuple[str, ...]  # producers (module names, or _Z) whose outputs, concatenated in this order, it reads
    concat_bn: str | None = None  # the BatchNorm over its input concat (the up block's up.0)

    @property
    def weight(self) -> str:
        return self.name + ".weight"

    @property
    def bn(self) -> str:
        """The BatchNorm after it: _conv_bn_act's module 1."""
        return self.name[: -len(".0")] + ".1"


def _layout(cfg: NetConfig) -> list[_Conv]:
    """The prunable convs of SkipNet(cfg), in named_parameters() order."""
    if cfg.kind != "skip":
        raise ValueError(f"channel tickets are defined for the skip net, not kind={cfg.kind!r}")
    down, up, skip = cfg.channels_down, cfg.channels_up, cfg.channels_skip
    convs = []
    for i in range(cfg.scales):
        p = f"levels.{i}"
        scale_in = _Z if i == 0 else f"levels.{i - 1}.down.1.0"
        below = f"levels.{i + 1}.up.2.0" if i < cfg.scales - 1 else f"{p}.down.1.0"
        skips: tuple[str, ...] = ()
        if skip[i] > 0:
            convs.append(_Conv(f"{p}.skip.0", 1, 1, skip[i], (scale_in,)))
            skips = (f"{p}.skip.0",)
        convs += [
            _Conv(f"{p}.down.0.0", 3, 2, down[i], (scale_in,)),
            _Conv(f"{p}.down.1.0", 3, 1, down[i], (f"{p}.down.0.0",)),
            _Conv(f"{p}.up.1.0", 3, 1, up[i], (*skips, below), concat_bn=f"{p}.up.0"),
            _Conv(f"{p}.up.2.0", 1, 1, up[i], (f"{p}.up.1.0",)),
        ]
    return convs


def _check_mask(cfg: NetConfig, mask: ChannelMask) -> None:
    """Raise unless `mask` has one bool vector of the full width per prunable conv, each keeping a channel."""
    convs = _layout(cfg)
    names = [c.weight for c in convs]
    if set(mask) != set(names):
        missing, extra = sorted(set(names) - set(mask)), sorted(set(mask) - set(names))
        raise ValueError(f"channel mask does not fit this net: missing {missing[:5]}, unexpected {extra[:5]}")
    for c in convs:
        m = mask[c.weight]
        if m.dtype != torch.bool or tuple(m.shape) != (c.out,):
            raise ValueError(
                f"channel mask '{c.weight}' must be a bool vector of {c.out}, got {m.dtype} {tuple(m.shape)}"
            )
        if not bool(m.any()):
            raise ValueError(f"channel mask '{c.weight}' keeps no channel: the signal through it would be cut")


def _kept(cfg: NetConfig, mask: ChannelMask, producer: str) -> Tensor:
    """Bool vector (CPU) of the channels that `producer` passes on."""
    return torch.ones(cfg.in_channels, dtype=torch.bool) if producer == _Z else mask[producer + ".weight"].cpu()


def _input_kept(cfg: NetConfig, mask: ChannelMask, conv: _Conv) -> Tensor:
    return torch.cat([_kept(cfg, mask, r) for r in conv.reads])


def _slices(cfg: NetConfig, mask: ChannelMask) -> dict[str, tuple[Tensor | None, Tensor | None]]:
    """Module name -> (bool vector of the kept dim-0 entries, of the kept dim-1 entries of a conv weight); None
    keeps them all. Covers every module of SkipNet(cfg) that holds a parameter or a buffer."""
    _check_mask(cfg, mask)
    out: dict[str, tuple[Tensor | None, Tensor | None]] = {}
    for c in _layout(cfg):
        rows, cols = mask[c.weight].cpu(), _input_kept(cfg, mask, c)
        out[c.name] = (rows, cols)
        out[c.bn] = (rows, None)
        if c.concat_bn is not None:
            out[c.concat_bn] = (cols, None)
    out["head"] = (None, mask["levels.0.up.2.0.weight"].cpu())
    return out


def _entries(state: dict[str, Tensor], slices: dict[str, tuple[Tensor | None, Tensor | None]]) -> Iterator:
    """(key, tensor, rows, cols) for every state entry, refusing one that no module of the layout owns."""
    for key, t in state.items():
        module = key.rpartition(".")[0]
        if module not in slices:
            raise ValueError(f"state entry {key!r} is no part of a skip net of this config")
        yield key, t.detach(), *slices[module]


def _check_state(cfg: NetConfig, state: dict[str, Tensor]) -> None:
    expected = skeleton(cfg).state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"state does not fit this net: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, t in state.items():
        if t.shape != expected[name].shape:
            raise ValueError(f"state '{name}' has shape {tuple(t.shape)}, the net has {tuple(expected[name].shape)}")


# ---------------------------------------------------------------- masks


def dense_channel_mask(net: nn.Module) -> ChannelMask:
    """The channel mask of a SkipNet that keeps every output channel of every prunable conv (on the CPU)."""
    cfg = net.cfg
    convs = _layout(cfg)
    have = {n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)} - {"head"}
    if have != {c.name for c in convs}:
        raise ValueError(f"net's convs {sorted(have)[:5]} are not those of a skip net of its config")
    return {c.weight: torch.ones(c.out, dtype=torch.bool) for c in convs}


def channel_scores(state: dict[str, Tensor], cfg: NetConfig) -> dict[str, Tensor]:
    """L1 norm of each output filter, sum |w[o, :, :, :]| -> (out,), of every prunable conv in `state`."""
    return {c.weight: state[c.weight].detach().abs().sum(dim=(1, 2, 3)) for c in _layout(cfg)}


def ticket_scores(cfg: NetConfig, small: dict[str, Tensor], mask: ChannelMask) -> dict[str, Tensor]:
    """channel_scores of a trained ticket (the state of materialise(cfg, ., mask)), on the full net's channels:
    each kept filter's L1 norm at its place, 0 at the pruned ones (which prune_channels never ranks again)."""
    out = {}
    for c in _layout(cfg):
        kept = mask[c.weight].cpu()
        full = torch.zeros(c.out, dtype=small[c.weight].dtype)
        full[kept] = small[c.weight].detach().abs().sum(dim=(1, 2, 3)).cpu()
        out[c.weight] = full
    return out


def prune_channels(scores: dict[str, Tensor], mask: ChannelMask, fraction: float = 0.2) -> ChannelMask:
    """Remove round_count(fraction, alive) of the alive channels of EACH layer, those of smallest score (ties:
    lowest index first); a layer always keeps at least one channel (binding only for fraction >= 0.5)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"prune fraction must be in (0, 1), got {fraction}")
    if set(scores) != set(mask):
        raise ValueError(f"scores and mask name other layers: {sorted(set(scores) ^ set(mask))[:5]}")
    new = {}
    for name, alive in mask.items():
        s = scores[name].detach().cpu()
        if s.shape != alive.shape:
            raise ValueError(f"scores '{name}' have shape {tuple(s.shape)}, the mask {tuple(alive.shape)}")
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"cannot rank the channels of {name!r}: their scores are NaN/inf")
        n = int(alive.sum())
        new[name] = _remove_smallest(s, alive.cpu(), min(round_count(fraction, n), n - 1)).to(alive.device)
    return new


# ---------------------------------------------------------------- the smaller net


class _TicketScale(nn.Module):
    """One scale of a channel ticket: _Scale's skip, down and up branches, each conv at its own width."""

    def __init__(self, skip: nn.Module | None, down: nn.Sequential, up: nn.Sequential) -> None:
        super().__init__()
        self.skip, self.down, self.up = skip, down, up


class ChannelSkipNet(nn.Module):
    """A SkipNet with one width per conv: what a channel mask leaves of SkipNet(cfg), as a net of that size.

    Parameter and buffer names are SkipNet's. `cfg` is the full net's config (check_size and make_input read it;
    its channels_* fields are NOT this net's widths); `widths` maps each prunable conv weight name to its
    output channels. Input z: (B, in_channels, H, W); output (B, out_channels, H, W) in (0, 1).
    """

    # SkipNet's own forward, input shape and input layers: they read only levels[i].skip / .down / .up, upsample,
    # head and cfg, which this class has under the same names, so the forward semantics are the same by construction
    forward = SkipNet.forward
    input_shape = SkipNet.input_shape
    input_layers = SkipNet.input_layers

    def __init__(self, cfg: NetConfig, widths: dict[str, int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.widths = dict(widths)
        convs = {c.name: c for c in _layout(cfg)}

        def width(producer: str) -> int:
            return cfg.in_channels if producer == _Z else self.widths[producer + ".weight"]

        def block(name: str) -> nn.Sequential:
            c = convs[name]
            return _conv_bn_act(sum(width(r) for r in c.reads), width(name), c.kernel, c.stride, cfg)

        levels = []
        for i in range(cfg.scales):
            p = f"levels.{i}"
            skip = block(f"{p}.skip.0") if f"{p}.skip.0" in convs else None
            down = nn.Sequential(block(f"{p}.down.0.0"), block(f"{p}.down.1.0"))
            concat = sum(width(r) for r in convs[f"{p}.up.1.0"].reads)
            up = nn.Sequential(nn.BatchNorm2d(concat), block(f"{p}.up.1.0"), block(f"{p}.up.2.0"))
            levels.append(_TicketScale(skip, down, up))
        self.levels = nn.ModuleList(levels)
        self.upsample = nn.Upsample(scale_factor=2, mode=cfg.upsample)
        self.head = _pointwise(width("levels.0.up.2.0"), cfg.out_channels)


def slice_state(cfg: NetConfig, state: dict[str, Tensor], mask: ChannelMask) -> dict[str, Tensor]:
    """The ticket's state: every conv's kept output rows and its producers' kept input columns; biases, BN
    gamma/beta and running statistics sliced alike (num_batches_tracked copied). Same device as `state`."""
    _check_state(cfg, state)
    small = {}
    for key, t, rows, cols in _entries(state, _slices(cfg, mask)):
        if t.dim() > 0 and rows is not None:
            t = t.index_select(0, rows.nonzero().squeeze(1).to(t.device))
        if t.dim() == 4 and cols is not None:
            t = t.index_select(1, cols.nonzero().squeeze(1).to(t.device))
        small[key] = t.clone()
    return small


def rewind_state(cfg: NetConfig, rewind: dict[str, Tensor], mask: ChannelMask) -> dict[str, Tensor]:
    """The weights a channel ticket is trained from: the slice of the rewind weights (theta_0, as LIP rewinds)."""
    return slice_state(cfg, rewind, mask)


def materialise(cfg: NetConfig, state: dict[str, Tensor], mask: ChannelMask) -> ChannelSkipNet:
    """The physically smaller net that `mask` leaves of SkipNet(cfg) with weights `state`, holding the sliced
    weights (on the device of `state`, `meta` included); draws nothing."""
    small = slice_state(cfg, state, mask)
    with torch.device("meta"):
        net = ChannelSkipNet(cfg, {n: int(m.sum()) for n, m in mask.items()})
    net.load_state_dict(small, assign=True)
    return net


def kept_parameters(cfg: NetConfig, mask: ChannelMask) -> int:
    """The number of parameters of materialise(cfg, ., mask), counted from the mask without building it."""
    _check_mask(cfg, mask)
    total = 0
    for c in _layout(cfg):
        rows, cols = int(mask[c.weight].sum()), int(_input_kept(cfg, mask, c).sum())
        total += rows * cols * c.kernel**2 + rows + 2 * rows  # weight, bias, the BN's gamma and beta
        if c.concat_bn is not None:
            total += 2 * cols
    return total + cfg.out_channels * (int(mask["levels.0.up.2.0.weight"].sum()) + 1)  # head weight and bias


def zeroed_state(cfg: NetConfig, state: dict[str, Tensor], mask: ChannelMask) -> dict[str, Tensor]:
    """The FULL net's state with the pruned channels switched off: their conv rows and biases, their BN gamma and
    beta, and the gamma and beta of the up block's concat BN where it reads a pruned channel, all zero.

    Why that suffices: a pruned conv's output is 0, and BN maps an all-zero channel to beta (0 here; in eval mode
    to gamma * (0 - mean) / std + beta, 0 too); the concat BN would map it to its own beta, hence zeroed too. The 0
    passes through the activation only if act(0) = 0 (LeakyReLU, ReLU and ELU: every act NetConfig allows), then
    upsampling and reflection padding keep it 0, so the convs that read it get nothing from their (untouched)
    columns: the full net computes what `materialise` computes, in training and in eval mode. (In training mode the
    concat BN's zeroing happens not to matter: a constant channel adds a constant per output channel of up.1, which
    up.1's own BN subtracts again; a pruned BN beta in front of the head, which has no BN, does matter.)
    Running statistics are left as they are.
    """
    _check_state(cfg, state)
    out = {}
    for key, t, rows, _ in _entries(state, _slices(cfg, mask)):
        t = t.clone()
        if key.endswith((".weight", ".bias")) and rows is not None:
            t.index_fill_(0, (~rows).nonzero().squeeze(1).to(t.device), 0.0)
        out[key] = t
    return out


# ---------------------------------------------------------------- cost


def flops_per_iteration(net: nn.Module, z: Tensor) -> int:
    """Forward + backward FLOPs of one fitting step on input z (torch's FlopCounterMode: convs and matmuls only,
    not BN, activations or upsampling); weight gradients only, as in a fit (z needs none). The net is unchanged:
    its .grad fields are not touched and its BN running statistics are put back."""
    buffers = {k: b.clone() for k, b in net.named_buffers()}
    params = [p for p in net.parameters() if p.requires_grad]
    try:
        with FlopCounterMode(display=False) as counter:
            torch.autograd.grad(net(z).square().mean(), params)
    finally:
        with torch.no_grad():
            for k, b in net.named_buffers():
                b.copy_(buffers[k])
    return int(counter.get_total_flops())
