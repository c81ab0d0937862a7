"""DIP skip network, deep decoder, their fixed random inputs, and seeded initialisation."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import NetConfig


def _act(name: str) -> nn.Module:
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2, inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    return nn.ELU(inplace=True)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 conv run as one matrix product, W (out, in) @ x (in, H*W) + b: same parameters, same maths.

    oneDNN's 1x1 convs are slow on CPU, their backward above all (measured, 2 cores, forward + backward:
    128 -> 128 channels at 256 px 106 ms as a conv, 51 ms as addmm; 128 -> 3 at 256 px 49 vs 14 ms).
    Batches of several images and non-contiguous (channels-last) activations take the conv kernels.
    """

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if b != 1 or not x.is_contiguous():
            return super().forward(x)
        weight = self.weight.view(self.out_channels, c)
        if self.bias is None:
            out = torch.mm(weight, x.view(c, h * w))
        else:
            out = torch.addmm(self.bias.view(-1, 1), weight, x.view(c, h * w))
        return out.view(1, self.out_channels, h, w)


def _pointwise(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return PointwiseConv2d(cin, cout, 1, bias=bias)


def _conv(cin: int, cout: int, k: int, stride: int, pad: str) -> nn.Conv2d:
    # padding_mode='reflect' equals DIP's ReflectionPad2d + unpadded conv. A 1x1 conv pads nothing, but
    # nn.Conv2d would still run a (zero-width) reflection pad, i.e. copy the activation and scatter its
    # gradient back: 'zeros' with padding 0 is the same conv without that.
    if k == 1 and stride == 1:
        return _pointwise(cin, cout)
    return nn.Conv2d(
        cin,
        cout,
        k,
        stride=stride,
        padding=k // 2,
        padding_mode="reflect" if pad == "reflection" and k > 1 else "zeros",
    )


def _conv_bn_act(cin: int, cout: int, k: int, stride: int, cfg: NetConfig) -> nn.Sequential:
    return nn.Sequential(_conv(cin, cout, k, stride, cfg.pad), nn.BatchNorm2d(cout), _act(cfg.act))


class _Scale(nn.Module):
    """One scale of the skip net: skip branch, down branch, and the up block that merges them."""

    def __init__(self, cin: int, down: int, up_in: int, up: int, skip: int, cfg: NetConfig) -> None:
        super().__init__()
        self.skip = _conv_bn_act(cin, skip, 1, 1, cfg) if skip > 0 else None
        self.down = nn.Sequential(_conv_bn_act(cin, down, 3, 2, cfg), _conv_bn_act(down, down, 3, 1, cfg))
        self.up = nn.Sequential(
            nn.BatchNorm2d(skip + up_in),
            _conv_bn_act(skip + up_in, up, 3, 1, cfg),
            _conv_bn_act(up, up, 1, 1, cfg),
        )


class SkipNet(nn.Module):
    """The DIP 'skip' encoder-decoder (Ulyanov et al. 2018), layer for layer.

    Input z: (B, in_channels, H, W) with H, W divisible by 2**scales; output (B, out_channels, H, W) in (0, 1).
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        down, up, skip = cfg.channels_down, cfg.channels_up, cfg.channels_skip
        cins = (cfg.in_channels, *down[:-1])
        # The up block of scale i reads the upsampled output of scale i+1 (or, at the deepest scale,
        # its own down branch).
        up_ins = (*up[1:], down[-1])
        self.levels = nn.ModuleList(_Scale(cins[i], down[i], up_ins[i], up[i], skip[i], cfg) for i in range(cfg.scales))
        self.upsample = nn.Upsample(scale_factor=2, mode=cfg.upsample)
        self.head = _pointwise(up[0], cfg.out_channels)

    def input_shape(self, height: int, width: int) -> tuple[int, int, int]:
        check_size(height, width, self.cfg)
        return (self.cfg.in_channels, height, width)

    def input_layers(self) -> tuple[str, ...]:
        """Names of the conv weights that read z directly (the paper keeps these dense)."""
        first = self.levels[0]
        names = ["levels.0.down.0.0.weight"]
        if first.skip is not None:
            names.append("levels.0.skip.0.weight")
        return tuple(names)

    def forward(self, z: Tensor) -> Tensor:
        check_size(z.shape[-2], z.shape[-1], self.cfg)
        skips = []
        h = z
        for level in self.levels:
            skips.append(level.skip(h) if level.skip is not None else None)
            h = level.down(h)
        for level, s in zip(reversed(self.levels), reversed(skips)):
            h = self.upsample(h)
            if s is not None:
                h = torch.cat((s, h), dim=1)  # DIP's Concat order: skip first
            h = level.up(h)
        return torch.sigmoid(self.head(h))


class DeepDecoder(nn.Module):
    """Deep decoder (Heckel & Hand 2019): [conv1x1 (no bias) -> upsample x2 -> ReLU -> BN] x layers, head.

    Input z: (B, k, H / 2**(layers-1), W / 2**(layers-1)); output (B, out_channels, H, W) in (0, 1).
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        k = cfg.decoder_channels
        blocks = []
        for i in range(cfg.decoder_layers):
            layer = [_pointwise(k, k, bias=False)]
            if i < cfg.decoder_layers - 1:
                layer.append(nn.Upsample(scale_factor=2, mode=cfg.upsample))
            layer += [nn.ReLU(inplace=True), nn.BatchNorm2d(k)]
            blocks.append(nn.Sequential(*layer))
        self.blocks = nn.Sequential(*blocks)
        self.head = _pointwise(k, cfg.out_channels, bias=False)

    def input_shape(self, height: int, width: int) -> tuple[int, int, int]:
        check_size(height, width, self.cfg)
        s = self.cfg.downscale
        return (self.cfg.decoder_channels, height // s, width // s)

    def input_layers(self) -> tuple[str, ...]:
        return ("blocks.0.0.weight",)

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.head(self.blocks(z)))


def check_size(height: int, width: int, cfg: NetConfig) -> None:
    """Reject spatial sizes the net would silently misalign (policy: callers center-crop, see io)."""
    m = cfg.downscale
    if height % m or width % m:
        raise ValueError(
            f"image size {height}x{width} is not divisible by {m} (the net has {cfg.scales} scales); "
            f"center-crop it first, e.g. lipcore.io.center_crop(x, {m})"
        )


def build_net(cfg: NetConfig, generator: torch.Generator | None = None) -> SkipNet | DeepDecoder:
    """Construct the net and initialise it from `generator` (PyTorch's default init rule; None: the global
    generator, as PyTorch would)."""
    # Built on meta first: constructing on the CPU would run nn.Conv2d's own init, a draw from the global
    # generator that init_weights then overwrites.
    net = skeleton(cfg).to_empty(device="cpu")
    init_weights(net, generator)
    return net


def skeleton(cfg: NetConfig) -> SkipNet | DeepDecoder:
    """The architecture on the `meta` device: every parameter's and buffer's name and shape, no memory and
    no random draw (for checking artifacts against the net, or loading a state into it)."""
    with torch.device("meta"):
        return SkipNet(cfg) if cfg.kind == "skip" else DeepDecoder(cfg)


def net_from_state(cfg: NetConfig, state: dict[str, Tensor]) -> SkipNet | DeepDecoder:
    """A net holding a copy of `state` (all parameters and BN buffers; names and shapes checked); draws nothing."""
    net = skeleton(cfg)
    net.load_state_dict({k: v.detach().clone() for k, v in state.items()}, assign=True)
    return net


def init_weights(net: nn.Module, generator: torch.Generator | None = None) -> None:
    """PyTorch's default Conv2d init (as the DIP code used), drawn from an explicit generator; BN: weight 1,
    bias 0, fresh running statistics."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    bound = 1.0 / math.sqrt(m.weight[0].numel())
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()


def make_input(
    net: SkipNet | DeepDecoder,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    batch: int = 1,
) -> Tensor:
    """The fixed random input z ~ U[0, input_scale), shape (batch, *net.input_shape(H, W)), on CPU."""
    shape = (batch, *net.input_shape(height, width))
    return torch.rand(shape, generator=generator) * net.cfg.input_scale


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
