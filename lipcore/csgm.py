"""Compressive sensing with a generative prior (CSGM, Bora et al. 2017): recover x from y = A x + noise as
x_hat = G(z_hat), z_hat = argmin_z loss(A G(z), y), by Adam on z from several random starts, keeping per image the
start with the lowest *measurement* loss (the ground truth never chooses).

Two losses: least squares (ERM) and median-of-means (Jalal et al. 2020, as the LIP GAN code: the measurements
split into blocks, the median of the blocks' mean squared residuals), which ignores a few corrupted rows where
least squares follows them. All images x all restarts go through the generator as one batch; the generator is in
eval mode (BatchNorm with its trained statistics), so each latent's path is independent of the others'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .gan import IMAGE_SIZE
from .runtime import cuda_flags
from .schema import Section

N_PIXELS = 3 * IMAGE_SIZE * IMAGE_SIZE  # n: the generator's RGB output, 12,288 values

LOSSES = ("ls", "mom")


def check_measurements(key: str, counts: tuple[int, ...]) -> None:
    """Refuse measurement counts outside 1..N_PIXELS (the one rule for gan.cs.m, gan.cs.robust_m and a stage's --m)."""
    bad = [m for m in counts if not 0 < m <= N_PIXELS]
    if bad:
        raise ValueError(
            f"{key}: {bad} measurements; each must be in 1..{N_PIXELS} (the values of a {IMAGE_SIZE}x{IMAGE_SIZE} RGB "
            "image)"
        )


@dataclass(frozen=True)
class CsgmConfig(Section):
    """The compressive-sensing evaluation of a generator (params gan.cs): the measurement counts, the noise,
    the latent search, and the official code's robust setting (Gaussian rows plus all-ones outlier rows)."""

    m: tuple[int, ...] = (200, 1000, 3000)  # measurements per setting, each in 1..N_PIXELS
    noise_std: float = 0.01  # in the generator's [-1, 1] units
    iterations: int = 1500  # Adam steps on z
    lr: float = 0.01
    restarts: int = 2  # random starts per image; the lowest measurement loss wins
    robust_m: int = 1000  # robust setting: robust_m rows, of which `outliers` are corrupted
    outliers: int = 20
    outlier_value: float = 10_000.0
    mom_block: int = 20  # median-of-means block size (rows)

    def __post_init__(self) -> None:
        object.__setattr__(self, "m", tuple(self.m))
        check_measurements("m", (*self.m, self.robust_m))
        if not self.m:
            raise ValueError("m: the list is empty; give at least one measurement count")
        if self.noise_std < 0 or not self.lr > 0 or self.iterations < 1 or self.restarts < 1:
            raise ValueError("noise_std must be >= 0, lr > 0, iterations >= 1 and restarts >= 1")
        if not 0 <= self.outliers < self.robust_m or self.mom_block < 1 or self.robust_m < self.mom_block:
            raise ValueError(
                f"robust setting: need 0 <= outliers ({self.outliers}) < robust_m ({self.robust_m}) and "
                f"1 <= mom_block ({self.mom_block}) <= robust_m"
            )


def gaussian_matrix(m: int, n: int, gen: torch.Generator) -> Tensor:
    """A (m, n) with i.i.d. N(0, 1/m) entries, so that E||A x||^2 = ||x||^2."""
    if not 0 < m <= n:
        raise ValueError(f"m = {m} measurements: need 0 < m <= n = {n}")
    return torch.randn(m, n, generator=gen) / math.sqrt(m)


def with_outliers(a: Tensor, count: int, value: float) -> tuple[Tensor, Tensor]:
    """The official code's robust setting: the last `count` rows of `a` replaced by all-ones rows whose
    measurements are set to `value`. Returns (a', mask of the outlier rows)."""
    if not 0 <= count < a.shape[0]:
        raise ValueError(f"{count} outlier rows: need 0 <= count < m = {a.shape[0]}")
    a = a.clone()
    outlier = torch.zeros(a.shape[0], dtype=torch.bool)
    outlier[a.shape[0] - count :] = True
    a[outlier] = 1.0
    return a, outlier


def measure(a: Tensor, x: Tensor, noise_std: float, gen: torch.Generator) -> Tensor:
    """y = A x + N(0, noise_std^2) for a batch of images x (B, C, H, W) -> (B, m)."""
    clean = x.flatten(1) @ a.T
    return clean + noise_std * torch.randn(clean.shape, generator=gen).to(clean)


def measurement_loss(residual: Tensor, kind: str, block: int = 20) -> Tensor:
    """Per-row loss of residuals (N, m): 'ls' the mean squared residual; 'mom' the median over consecutive
    blocks of `block` rows of each block's mean squared residual (rows past the last whole block are unused)."""
    sq = residual.square()
    if kind == "ls":
        return sq.mean(dim=1)
    if kind == "mom":
        blocks = sq.shape[1] // block
        if blocks < 1:
            raise ValueError(f"median-of-means needs at least one block of {block} measurements, got {sq.shape[1]}")
        means = sq[:, : blocks * block].reshape(sq.shape[0], blocks, block).mean(dim=2)
        return means.median(dim=1).values
    raise ValueError(f"loss must be one of {list(LOSSES)}, got {kind!r}")


@dataclass(frozen=True)
class Recovery:
    """Per image: the recovered image, its latent, and the measurement loss that chose its restart."""

    x: Tensor  # (B, C, H, W)
    z: Tensor  # (B, latent)
    loss: Tensor  # (B,)
    # (iterations, B): the chosen restart's measurement loss before each Adam step, to show that the search
    # has flattened before its end; None for a search of 0 iterations
    curve: Tensor | None = None


@cuda_flags()  # TF32 off on CUDA, as in every DIP fit: one rounding for the whole study
def recover(
    generator: nn.Module,
    a: Tensor,
    y: Tensor,
    *,
    latent_dim: int,
    restarts: int,
    iterations: int,
    lr: float,
    loss: str = "ls",
    block: int = 20,
    gen: torch.Generator | None = None,
    z0: Tensor | None = None,
) -> Recovery:
    """CSGM for a batch of measurements y (B, m) of one A: B x restarts latents optimised together, starting
    from `z0` (B * restarts, latent_dim; image i's restarts are rows i*restarts ...) or drawn N(0, 1) from `gen`."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")
    b = y.shape[0]
    if z0 is None:
        if gen is None:
            raise ValueError("give gen (to draw the starting latents) or z0")
        z0 = torch.randn(b * restarts, latent_dim, generator=gen)
    z = z0.to(y).clone().requires_grad_(True)
    targets = y.repeat_interleave(restarts, dim=0)
    opt = torch.optim.Adam([z], lr=lr)
    generator.eval()
    for p in generator.parameters():
        p.requires_grad_(False)
    steps = []  # each step's per-latent losses, on the device: read once, after the search
    for _ in range(iterations):
        opt.zero_grad(set_to_none=True)
        residual = generator(z).flatten(1) @ a.T - targets
        per_latent = measurement_loss(residual, loss, block)
        # a sum over latents: each latent's gradient is its own loss's (Adam is elementwise), as if solved alone
        per_latent.sum().backward()
        steps.append(per_latent.detach())
        opt.step()
    with torch.no_grad():
        x = generator(z)
        final = measurement_loss(x.flatten(1) @ a.T - targets, loss, block).view(b, restarts)
        best = final.argmin(dim=1)
        rows = torch.arange(b, device=best.device)  # on best's device: a CPU index would not meet a CUDA one
        pick = rows * restarts + best
        curve = torch.stack(steps)[:, pick] if steps else None
        return Recovery(x[pick], z.detach()[pick], final[rows, best], curve)
