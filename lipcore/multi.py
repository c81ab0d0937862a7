"""Multi-image LIP: one net fitted to a group of images at once, so that IMP finds one mask for all of them.

Two ways to fit a group, both as one Problem that the ordinary fit loop and IMP rounds take unchanged:

- 'average' (the LIP paper's code): one input z, one output x = f(z); loss sum_i ||A_i x - y_i||^2. For
  denoising (A_i = I) its minimiser is the MEAN of the images: the net learns one blurred average, and the
  mask is shaped by that average rather than by any image.
- 'shared': one net, one fixed input z_i per image, outputs x_i = f(z_i) as one batch through the same
  weights; loss sum_i ||A_i x_i - y_i||^2. Every image must be fitted by the same weights, so the mask is
  shaped by each of them. (BatchNorm in training mode normalises over the batch: the images share its
  statistics, as in any batched DIP.)

The per-image terms are the same mean squared errors a single-image fit uses, summed: with one image either
mode is the single-image fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from .config import DegradationConfig
from .physics import Operator, Problem

Mode = Literal["shared", "average"]  # params multi.modes
MODES: tuple[str, ...] = get_args(Mode)


class GroupOperator(Operator):
    """The operators A_1..A_G of a group as one: image i of the output is A_i applied to its input.

    shared: input (G, C, H, W), image i through A_i; average: input (1, C, H, W), the one image through
    every A_i. Output: the G observations concatenated along the batch dim.
    """

    def __init__(self, ops: Sequence[Operator], mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"multi-image mode must be one of {MODES}, got {mode!r}")
        if not ops:
            raise ValueError("a multi-image group needs at least one image")
        shapes = {op.image_shape for op in ops}
        tasks = {op.task for op in ops}
        if len(shapes) > 1 or len(tasks) > 1:
            raise ValueError(f"a group's images must share one task and image shape, got {tasks} and {shapes}")
        super().__init__(ops[0].image_shape, ops[0].noise_std)
        self.task = ops[0].task
        self.mode = mode
        self.ops = nn.ModuleList(ops)

    def forward(self, x: Tensor) -> Tensor:
        expected = len(self.ops) if self.mode == "shared" else 1
        if x.shape[0] != expected:
            got = x.shape[0]
            raise ValueError(f"{self.mode} group of {len(self.ops)} images: expected {expected} outputs, got {got}")
        if self.mode == "shared":
            return torch.cat([op(x[i : i + 1]) for i, op in enumerate(self.ops)])
        return torch.cat([op(x) for op in self.ops])

    def adjoint(self, y: Tensor) -> Tensor:
        parts = [op.adjoint(y[i : i + 1]) for i, op in enumerate(self.ops)]
        if self.mode == "shared":
            return torch.cat(parts)
        return torch.stack(parts).sum(0)


def group_problem(problems: Sequence[Problem], mode: str) -> Problem:
    """The group's problems as one: y is their observations in order. x_true (what scores the group fit, never
    steers it) is the images themselves ('shared') or their mean, the minimiser of the loss ('average')."""
    degradations: set[DegradationConfig] = {p.degradation for p in problems}
    if len(degradations) > 1:
        raise ValueError("a group's images must be degraded alike (one task); got several degradations")
    op = GroupOperator([p.op for p in problems], mode)
    x_true = torch.cat([p.x_true for p in problems])
    if mode == "average":
        x_true = x_true.mean(0, keepdim=True)
    return Problem(op, torch.cat([p.y for p in problems]), x_true, problems[0].degradation)


def group_size(mode: str, images: int) -> int:
    """How many inputs z (and outputs) a group fit has: one per image ('shared') or one ('average')."""
    if mode not in MODES:
        raise ValueError(f"multi-image mode must be one of {MODES}, got {mode!r}")
    return images if mode == "shared" else 1
