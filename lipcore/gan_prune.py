"""IMP on a pretrained generator, retrained without data: each round prunes 20% of the remaining conv weights by
global magnitude (as the LIP GAN code), rewinds the survivors to the *pretrained* weights, and retrains by
distillation from the dense generator, minimising E_z ||G_masked(z) - G_dense(z)||^2 over fresh latents.

The paper retrained with its discriminator and CelebA-HQ; the wheel ships neither. BatchNorm stays in eval mode
during distillation: both generators then use the pretrained running statistics, so the student is matched to
the teacher exactly as the teacher is used for compressive sensing (eval mode), and no batch of latents shifts
the statistics the dense model was trained with; BatchNorm's affine weights still train.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .prune import Mask, apply_mask, dense_mask, magnitude_prune, prunable
from .runtime import cuda_flags
from .schema import Section


@dataclass(frozen=True)
class DistillConfig(Section):
    """Data-free retraining of a pruned generator: Adam steps on fresh latent batches."""

    steps: int = 200
    batch: int = 32
    lr: float = 1e-4

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch < 1 or not self.lr > 0:
            raise ValueError(f"distillation needs steps >= 0, batch >= 1 and lr > 0, got {self}")


@cuda_flags()  # TF32 off on CUDA, as in every DIP fit: one rounding for the whole study
def distill(
    student: nn.Module, teacher: nn.Module, mask: Mask, cfg: DistillConfig, latent_dim: int, gen: torch.Generator
) -> list[float]:
    """Train `student` (in place; pruned weights held at zero) to reproduce `teacher` on fresh N(0, 1) latents.
    Returns the loss of every step (host values: read once at the end, no per-step sync)."""
    teacher.eval()
    student.eval()  # BatchNorm with the pretrained statistics (module docstring)
    for p in teacher.parameters():
        p.requires_grad_(False)
    for p in student.parameters():  # a copy of a frozen teacher (rewound) is frozen too
        p.requires_grad_(True)
    apply_mask(student, mask)
    device = next(student.parameters()).device
    weights = prunable(student)
    masked = [(weights[n], mask[n].to(weights[n])) for n in mask]
    opt = torch.optim.Adam(list(student.parameters()), lr=cfg.lr)
    losses = []
    for z in _latents(gen, cfg.steps, cfg.batch, latent_dim, device):
        with torch.no_grad():
            target = teacher(z)
        loss = (student(z) - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for w, m in masked:  # a zero gradient leaves Adam's moments, and so the pruned weight, at zero
            w.grad.mul_(m)
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses).tolist() if losses else []  # one copy to the host (float() of each: one per step)


LATENT_BLOCK = 100  # distillation steps whose latents are drawn, and copied to the device, at once


def _latents(gen: torch.Generator, steps: int, batch: int, latent_dim: int, device: torch.device) -> Iterator[Tensor]:
    """Each step's latents (batch, latent_dim), drawn on the CPU from `gen` one step after the other (the same
    numbers on any device), and copied to `device` a block of LATENT_BLOCK steps at a time, not once a step."""
    for start in range(0, steps, LATENT_BLOCK):
        n = min(LATENT_BLOCK, steps - start)
        yield from torch.stack([torch.randn(batch, latent_dim, generator=gen) for _ in range(n)]).to(device)


def rewound(pretrained: nn.Module, mask: Mask) -> nn.Module:
    """A copy of the pretrained generator with `mask` applied: the round's starting point."""
    net = copy.deepcopy(pretrained)
    apply_mask(net, mask)
    return net


def next_mask(trained: nn.Module, mask: Mask | None, fraction: float = 0.2) -> Mask:
    """Remove `fraction` of the remaining conv weights of `trained` with the smallest magnitude, globally."""
    return magnitude_prune(trained, dense_mask(trained) if mask is None else mask, fraction, "global")
