"""Running N same-architecture nets as one: the engines behind `fit` and `fit_many`.

Both expose the same surface to the fit loop: `params` (what Adam updates), `masked` / `mask_values`
(weights whose gradients are multiplied by their masks), `forward_backward(zs, objective, autocast)`,
`flags_for` (broadcast a per-member flag to each parameter) and `state_dict(i)` / `write_back()`.

- NetEngine: one net, trained in place (a plain fit).
- VmapEngine: the parameters of N nets stacked along a new leading dim and one `torch.func.vmap` of the net,
  which turns every convolution into one grouped convolution over all members: one kernel launch per layer
  instead of N, the win on GPUs. Results equal N plain fits up to rounding (see tests/test_fit.py).

On CPU neither batching scheme pays (bench/multi_fit.py; its figures in bench/README.md): grouped
convolutions, and stepping the members in lockstep one net after another, both give less throughput than
sequential fits (N nets' working sets evict each other from the caches), so `fit_many(engine="auto")` runs
sequential fits there and the vmap engine on CUDA.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from .prune import Mask, apply_mask, prunable

ENGINES = ("auto", "sequential", "vmap")

# objective(members, x) -> (per-image data loss (n, B), the scalar to differentiate) for the members
# `members` (a slice of 0..N-1) whose outputs x are (n, B, C, H, W).
Objective = Callable[[slice, Tensor], tuple[Tensor, Tensor]]


def choose_engine(engine: str, n_members: int, device: torch.device) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if n_members == 1:
        return "sequential"
    if engine != "auto":
        return engine
    return "vmap" if device.type == "cuda" else "sequential"


def _check_same_architecture(nets: Sequence[nn.Module]) -> None:
    ref = {k: v.shape for k, v in nets[0].state_dict().items()}
    for i, net in enumerate(nets[1:], start=1):
        shapes = {k: v.shape for k, v in net.state_dict().items()}
        if shapes != ref or type(net) is not type(nets[0]):
            raise ValueError(
                f"vmap engine: net {i} differs in architecture from net 0; "
                "stack only nets built from the same NetConfig (or use engine='sequential')"
            )


class NetEngine:
    def __init__(self, net: nn.Module, mask: Mask | None) -> None:
        self.net = net
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.masked: list[Tensor] = []
        self.mask_values: list[Tensor] = []
        if mask is not None:
            apply_mask(net, mask)
            weights = prunable(net)
            self.masked = [weights[n] for n in mask]
            self.mask_values = [mask[n].to(weights[n].device, weights[n].dtype) for n in mask]

    def forward_backward(
        self, zs: Sequence[Tensor], objective: Objective, autocast: AbstractContextManager
    ) -> tuple[Tensor, Tensor]:
        """Outputs (1, B, C, H, W) in fp32 and per-image losses (1, B), both detached; gradients accumulated.

        `autocast` wraps the net's forward only; the objective sees fp32 outputs.
        """
        with autocast:
            x = self.net(zs[0]).float().unsqueeze(0)  # a view: the member dim costs nothing
        per_image, loss = objective(slice(None), x)
        loss.backward()
        return x.detach(), per_image.detach()

    def flags_for(self, flags: Tensor) -> list[Tensor]:
        """flags: (1,) -> one 0-dim flag per parameter in `params` order."""
        return [flags[0]] * len(self.params)

    def state_dict(self, i: int) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def write_back(self) -> None:
        """The net was trained in place."""


def _autocast_on(device: str) -> bool:
    """Whether autocast is on for tensors of this device type (meta, the memory estimate's, has no autocast)."""
    return device != "meta" and torch.is_autocast_enabled(device)


def _autocast_output(module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
    """Under autocast, a conv's or BatchNorm's output in autocast's dtype, as in a plain fit.

    vmap runs a batched conv as a grouped conv without its bias (bf16 under autocast) and adds the stacked fp32
    bias after it, outside autocast, and a batched BatchNorm applies its stacked fp32 affine weights after the
    normalisation: type promotion then makes the outputs fp32, and every layer behind them runs in fp32 (traced on
    CPU: all convs and BNs). Cast back, so that every fit runs at the precision it was asked for whatever its
    engine (tests/test_fit.py traces both). No-op without autocast: fp32 fits are untouched.
    """
    device = out.device.type
    if _autocast_on(device) and out.dtype == torch.float32:
        return out.to(torch.get_autocast_dtype(device))
    return None


def _fp32_input(module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
    """Under autocast, a BatchNorm's input in fp32: vmap's batched BatchNorm refuses a bf16 input with fp32
    running statistics (a plain fit's BN takes that mix, reads bf16 and computes in fp32); exact, as bf16 -> fp32
    is. The output goes back to bf16 (_autocast_output), as a plain fit's does."""
    (x,) = inputs
    if _autocast_on(x.device.type) and x.dtype != torch.float32:
        return (x.float(),)
    return None


class VmapEngine:
    def __init__(self, nets: Sequence[nn.Module], masks: Sequence[Mask | None]) -> None:
        _check_same_architecture(nets)
        self.nets = list(nets)
        for net, mask in zip(self.nets, masks):
            if mask is not None:
                apply_mask(net, mask)  # also checks the names and shapes
        params, buffers = stack_module_state(self.nets)
        trainable = {n for n, p in nets[0].named_parameters() if p.requires_grad}
        self.stacked = {n: p.detach().clone().requires_grad_(n in trainable) for n, p in params.items()}
        self.buffers = buffers
        self.params = [p for n, p in self.stacked.items() if n in trainable]
        names = sorted({n for m in masks if m is not None for n in m}, key=list(self.stacked).index)
        self.masked = [self.stacked[n] for n in names]
        self.mask_values = [
            torch.stack(
                [
                    (m[n] if m is not None and n in m else torch.ones(self.stacked[n].shape[1:], dtype=torch.bool)).to(
                        self.stacked[n].device, self.stacked[n].dtype
                    )
                    for m in masks
                ]
            )
            for n in names
        ]
        base = copy.deepcopy(self.nets[0]).to("meta")  # the architecture only; weights come from `stacked`
        for module in base.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.register_forward_pre_hook(_fp32_input)
            if isinstance(module, (nn.Conv2d, nn.modules.batchnorm._BatchNorm)):
                module.register_forward_hook(_autocast_output)
        self.base = base

        def call(p: dict[str, Tensor], b: dict[str, Tensor], z: Tensor) -> Tensor:
            return functional_call(base, (p, b), (z,))

        self._forward = vmap(call, in_dims=(0, 0, 0))

    def forward_backward(
        self, zs: Sequence[Tensor], objective: Objective, autocast: AbstractContextManager
    ) -> tuple[Tensor, Tensor]:
        with autocast:
            x = self._forward(self.stacked, self.buffers, torch.stack(list(zs))).float()
        per_image, loss = objective(slice(None), x)
        loss.backward()
        return x.detach(), per_image.detach()

    def flags_for(self, flags: Tensor) -> list[Tensor]:
        return [flags.view(-1, *([1] * (p.dim() - 1))) for p in self.params]

    def state_dict(self, i: int) -> dict[str, Tensor]:
        merged = {**self.stacked, **self.buffers}
        return {k: merged[k][i].detach().clone() for k in self.nets[i].state_dict()}

    def write_back(self) -> None:
        for i, net in enumerate(self.nets):
            net.load_state_dict(self.state_dict(i))


def make_engine(name: str, nets: Sequence[nn.Module], masks: Sequence[Mask | None]) -> NetEngine | VmapEngine:
    if name == "vmap":
        return VmapEngine(nets, masks)
    (net,), (mask,) = nets, masks
    return NetEngine(net, mask)
