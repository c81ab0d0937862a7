"""A classical compressive-sensing baseline: l1-sparse recovery in the orthonormal 2-D DCT, solved by FISTA.

x_hat = Psi c_hat, c_hat = argmin_c 1/2 ||A Psi c - y||^2 + lam ||c||_1, Psi the inverse orthonormal DCT of each
channel (Beck & Teboulle 2009, constant step 1/L with L = ||A||_2^2; Psi is orthonormal so it does not change L).
lam is one number per measurement count, picked on a separate image (`pick_lambda`), never on a test image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .runtime import cuda_flags
from .schema import Section


@dataclass(frozen=True)
class FistaConfig(Section):
    """The FISTA-DCT baseline (params gan.fista): its iterations and the lambdas tried on the tuning image."""

    iterations: int = 300
    lambdas: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lambdas", tuple(self.lambdas))
        if self.iterations < 1 or not self.lambdas or any(not lam >= 0 for lam in self.lambdas):
            raise ValueError(f"fista: need iterations >= 1 and a non-empty list of lambdas >= 0, got {self}")


def dct_matrix(n: int) -> Tensor:
    """The orthonormal DCT-II matrix D (n, n): coefficients = D @ signal, signal = D.T @ coefficients."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float()


def idct2(c: Tensor, d: Tensor) -> Tensor:
    """Inverse orthonormal 2-D DCT over the last two axes of c (..., H, W) (H = W = d's size)."""
    return d.T @ c @ d


def dct2(x: Tensor, d: Tensor) -> Tensor:
    return d @ x @ d.T


def spectral_norm_sq(a: Tensor, iterations: int = 50, seed: int = 0) -> float:
    """||A||_2^2 by power iteration on A^T A (an SVD of a dense m x n matrix costs far more)."""
    v = torch.randn(a.shape[1], generator=torch.Generator().manual_seed(seed)).to(a)
    for _ in range(iterations):
        v = a.T @ (a @ v)
        v = v / v.norm()
    return float((a @ v).square().sum())


def soft_threshold(c: Tensor, t: float) -> Tensor:
    return c.sign() * (c.abs() - t).clamp_min(0.0)


@cuda_flags()  # TF32 off on CUDA for its matrix products, whatever the caller's torch flags
def fista_dct(a: Tensor, y: Tensor, shape: tuple[int, int, int], lam: float, iterations: int) -> Tensor:
    """Recover images (B, *shape) from y (B, m) = A x.flatten() + noise; lam >= 0."""
    if lam < 0 or iterations < 1:
        raise ValueError(f"FISTA needs lam >= 0 and iterations >= 1, got lam={lam}, iterations={iterations}")
    c_, h, w = shape
    if h != w:
        raise ValueError(f"the 2-D DCT here is square: got {h}x{w} images")
    d = dct_matrix(h).to(y)
    step = 1.0 / spectral_norm_sq(a)
    b = y.shape[0]
    c = torch.zeros(b, c_, h, w, dtype=y.dtype, device=y.device)
    v, t = c, 1.0
    for _ in range(iterations):
        residual = idct2(v, d).flatten(1) @ a.T - y
        grad = dct2((residual @ a).view(b, c_, h, w), d)
        c_next = soft_threshold(v - step * grad, step * lam)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        v = c_next + ((t - 1) / t_next) * (c_next - c)
        c, t = c_next, t_next
    return idct2(c, d)


def pick_lambda(
    a: Tensor, y: Tensor, x: Tensor, lambdas: Sequence[float], iterations: int
) -> tuple[float, list[float]]:
    """The lam of `lambdas` with the lowest MSE on the tuning image(s) x (B, C, H, W) measured as y.
    Returns (lam, the MSE of every lam)."""
    if not lambdas:
        raise ValueError("pick_lambda: give at least one lambda")
    errors = [float((fista_dct(a, y, tuple(x.shape[1:]), lam, iterations) - x).square().mean()) for lam in lambdas]
    return float(lambdas[min(range(len(errors)), key=errors.__getitem__)]), errors
