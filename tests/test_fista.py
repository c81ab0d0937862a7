"""The classical CS baseline: the orthonormal 2-D DCT, FISTA recovering a DCT-sparse image, lambda picked by the
tuning image's error."""

from __future__ import annotations

import pytest
import torch

from lipcore import fista


def test_the_dct_is_orthonormal_and_inverts():
    d = fista.dct_matrix(16)
    assert torch.allclose(d @ d.T, torch.eye(16), atol=1e-5)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(fista.idct2(fista.dct2(x, d), d), x, atol=1e-5)


def _sparse_image() -> torch.Tensor:
    """An image with 12 nonzero DCT coefficients per channel."""
    d = fista.dct_matrix(16)
    c = torch.zeros(1, 3, 16, 16)
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 6, (3, 12, 2), generator=gen)
    for ch in range(3):
        c[0, ch, idx[ch, :, 0], idx[ch, :, 1]] = torch.randn(12, generator=gen)
    return fista.idct2(c, d)


def test_fista_recovers_a_dct_sparse_image_from_few_measurements():
    x = _sparse_image()
    a = torch.randn(300, 768, generator=torch.Generator().manual_seed(2)) / 300**0.5
    y = x.flatten(1) @ a.T
    x_hat = fista.fista_dct(a, y, (3, 16, 16), lam=1e-3, iterations=500)
    adjoint = (y @ a).view_as(x)
    assert (x_hat - x).square().mean() < 0.01 * x.square().mean()
    assert (x_hat - x).square().mean() < 0.1 * (adjoint - x).square().mean()


def test_lambda_is_the_one_with_the_lowest_tuning_error():
    x = _sparse_image()
    a = torch.randn(200, 768, generator=torch.Generator().manual_seed(3)) / 200**0.5
    y = x.flatten(1) @ a.T + 0.01 * torch.randn(1, 200, generator=torch.Generator().manual_seed(4))
    lam, errors = fista.pick_lambda(a, y, x, [1e-3, 1e-2, 10.0], iterations=200)
    assert lam == [1e-3, 1e-2, 10.0][errors.index(min(errors))]
    assert errors[-1] == max(errors)  # lam = 10 zeroes every coefficient


@pytest.mark.parametrize("cfg", [{"iterations": 0}, {"lambdas": []}, {"lambdas": [-1.0]}])
def test_fista_settings_are_checked(cfg):
    with pytest.raises(ValueError, match="fista"):
        fista.FistaConfig(**cfg)
