"""GPU memory of a fit, estimated before it runs: what caps the members of one vmap batch (lipcore.fit.fit_many)
and what bench/paper_plan.py reports per stage.

Per member, in bytes:
  activations  what autograd saves in one forward, counted on torch's meta device (shapes, no data) through the
               engine's own forward (the vmap engine saves more per member than a plain fit: ~2.27 against
               ~1.63 GB fp32 for the paper's net at 512 px), in the fit's precision (bf16: the net in bf16 on meta,
               the dtypes autocast gives on both engines, plus the fp32 copies of BatchNorm inputs the vmap engine
               keeps), plus the backward's live gradients: BACKWARD_LIVE x the largest saved tensor
  images       the ES-WMV window (es_window output frames) and its float64 running sum (2 frames), IMAGE_BUFFERS
               other output-sized buffers (EMA, last finite, ES and oracle bests, x_true, y, temporaries), and z,
               its noise and the perturbed input
  weights      PARAM_BYTES per parameter: weights, gradients, Adam's two moments, mask, backtracking snapshot, the
               net beside its stacked copy
The budget of a batch: LIP_GPU_MEMORY_GB (environment) if set, else the device's memory times the GPU share of
this process (a Ray worker of stages/executor: executor.num_gpus) times HEADROOM, less RESERVED (CUDA context,
cuDNN workspaces, the allocator's fragmentation), and never above what is free now. CPU: no cap.
"""

from __future__ import annotations

import copy
import math
import os
import sys
from dataclasses import dataclass

import torch
from torch import nn

BACKWARD_LIVE = 3  # gradient tensors alive at once in the backward, each the size of the largest saved one
IMAGE_BUFFERS = 12
PARAM_BYTES = 4 * 7
HEADROOM = 0.9
RESERVED = 2 * 2**30
ENV = "LIP_GPU_MEMORY_GB"


@dataclass(frozen=True)
class FitMemory:
    """Estimated bytes of one member of a fit."""

    saved: int  # what autograd saves in the forward
    backward: int  # the backward's live gradients
    images: int
    weights: int

    @property
    def activations(self) -> int:
        return self.saved + self.backward

    @property
    def per_member(self) -> int:
        return self.activations + self.images + self.weights


def _saved_bytes(forward) -> tuple[int, int]:
    """(bytes of the distinct storages autograd saves in forward(), the largest of them)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage._cdata] = max(seen.get(storage._cdata, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values()), max(seen.values(), default=0)


def estimate(
    net: nn.Module, z_shape: tuple[int, ...], es_window: int, precision: str = "fp32", engine: str = "vmap"
) -> FitMemory:
    """Bytes per member of fitting `net` on an input z of z_shape (B, C, H, W) on `engine`, in `precision`."""
    from .members import VmapEngine  # members imports nothing of this module; fit imports both

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    meta = copy.deepcopy(net).to("meta", dtype)
    z = torch.zeros(z_shape, device="meta", dtype=dtype)
    out_shape = torch.Size()
    bn_inputs = 0
    if engine == "vmap":
        n = 2  # per member: the same for any number of members (counted)
        members = VmapEngine([meta, copy.deepcopy(meta)], [None, None])

        def forward() -> None:
            nonlocal out_shape
            out_shape = members._forward(members.stacked, members.buffers, torch.stack([z, z])).shape[1:]

        modules = members.base.modules()
    else:
        n = 1
        for p in meta.parameters():
            p.requires_grad_(True)

        def forward() -> None:
            nonlocal out_shape
            out_shape = meta(z).shape

        modules = meta.modules()
    handles = []
    if engine == "vmap" and dtype != torch.float32:

        def count(module: nn.Module, args: tuple) -> None:
            nonlocal bn_inputs
            bn_inputs += args[0].numel() * 2  # fp32 beside bf16: 2 bytes more per element

        handles = [
            m.register_forward_pre_hook(count) for m in modules if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
    saved, largest = _saved_bytes(forward)
    for h in handles:
        h.remove()
    frame = math.prod(out_shape) * 4
    images = (es_window + 2 + IMAGE_BUFFERS) * frame + 3 * math.prod(z_shape) * 4
    weights = PARAM_BYTES * sum(p.numel() for p in net.parameters())
    return FitMemory((saved + bn_inputs) // n, BACKWARD_LIVE * largest // n, images, weights)


def gpu_share() -> float:
    """The share of its GPU this process was given: a Ray worker's GPU resource (stages/executor gives each stage
    executor.num_gpus), else 1."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return 1.0
    try:
        share = ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)
    except Exception:  # the driver, or a Ray without the call: no share known
        return 1.0
    return min(float(share), 1.0) if share else 1.0


def budget(device: torch.device) -> int | None:
    """Bytes one batch of members may take on `device`; None: no cap (CPU, unless LIP_GPU_MEMORY_GB is set)."""
    given = os.environ.get(ENV)
    if given:
        try:
            gb = float(given)
        except ValueError:
            raise ValueError(
                f"{ENV}={given!r}: give the GPU memory a batch of fits may take, in GB (e.g. 40)"
            ) from None
        if not gb > 0:
            raise ValueError(f"{ENV}={given!r}: give a number of GB above 0")
        return int(gb * 1e9)
    if device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    free, _ = torch.cuda.mem_get_info(device)
    mine = torch.cuda.memory_reserved(device)
    return max(int(min(total * gpu_share() * HEADROOM, free + mine) - RESERVED), 0)


def cap(per_member: int, budget_bytes: int | None) -> int | None:
    """Members per batch that fit `budget_bytes` (at least 1); None: no cap."""
    if budget_bytes is None:
        return None
    return max(1, budget_bytes // max(per_member, 1))


def batches(n: int, most: int | None) -> list[range]:
    """0..n-1 in the fewest batches of at most `most` members, as even as they come (35 by 20: 18 + 17)."""
    if most is None or n <= most:
        return [range(n)]
    k = -(-n // most)
    size, extra = divmod(n, k)
    out, start = [], 0
    for i in range(k):
        end = start + size + (i < extra)
        out.append(range(start, end))
        start = end
    return out
