"""CSGM: the measurement operator, median-of-means against least squares with outliers, and the batched solver
equal to solving each image alone."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lipcore import csgm


class TinyGenerator(nn.Module):
    """A small smooth generator (latent 8 -> 3x8x8) so the solver tests run in a second."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 192), nn.Tanh())

    def forward(self, z):
        return self.net(z).view(-1, 3, 8, 8)


def test_gaussian_rows_keep_the_norm_on_average():
    a = csgm.gaussian_matrix(150, 192, torch.Generator().manual_seed(0))
    x = torch.randn(50, 192, generator=torch.Generator().manual_seed(1))
    ratio = (x @ a.T).square().sum(1) / x.square().sum(1)
    assert ratio.mean() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("m", [0, -3, 193])
def test_measurement_counts_outside_1_to_n_are_refused(m):
    with pytest.raises(ValueError, match=f"m = {m} measurements"):
        csgm.gaussian_matrix(m, 192, torch.Generator())


def test_median_of_means_ignores_outlier_rows_that_least_squares_follows():
    residual = torch.full((1, 1000), 0.1)
    residual[0, -20:] = 10_000.0  # one block of 20 corrupted rows
    assert csgm.measurement_loss(residual, "mom").item() == pytest.approx(0.01)
    assert csgm.measurement_loss(residual, "ls").item() > 1e6


def test_with_outliers_mom_recovers_and_least_squares_breaks():
    g = TinyGenerator()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = g(torch.randn(2, 8, generator=gen))
    a, outlier = csgm.with_outliers(csgm.gaussian_matrix(100, 192, gen), count=20, value=10_000.0)
    y = csgm.measure(a, x, 0.01, gen)
    y[:, outlier] = 10_000.0
    errors = {}
    for loss in csgm.LOSSES:
        rec = csgm.recover(
            g, a, y, latent_dim=8, restarts=3, iterations=300, lr=0.05, loss=loss, gen=torch.Generator().manual_seed(1)
        )
        errors[loss] = (rec.x - x).square().mean().item()
    assert errors["mom"] < 0.01 < errors["ls"], errors


def measured(images: int) -> tuple[nn.Module, Tensor, Tensor]:
    """The tiny generator, a 60 x 192 Gaussian A, and noisy measurements y of `images` images it makes."""
    g = TinyGenerator()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = g(torch.randn(images, 8, generator=gen))
    a = csgm.gaussian_matrix(60, 192, gen)
    return g, a, csgm.measure(a, x, 0.01, gen)


def test_the_batched_solver_equals_one_image_at_a_time():
    g, a, y = measured(3)
    kw = dict(latent_dim=8, restarts=2, iterations=50, lr=0.05)
    z0 = torch.randn(3 * 2, 8, generator=torch.Generator().manual_seed(5))
    together = csgm.recover(g, a, y, z0=z0, **kw)
    for i in range(3):  # image i's restarts are rows 2i, 2i+1
        alone = csgm.recover(g, a, y[i : i + 1], z0=z0[2 * i : 2 * i + 2], **kw)
        assert torch.allclose(alone.x, together.x[i : i + 1], atol=1e-5)
        assert torch.allclose(alone.loss, together.loss[i : i + 1], rtol=1e-4)


def test_the_solver_runs_on_a_non_cpu_device():
    """On `meta` (shapes and devices, no data) any CPU tensor meeting the device's raises, as on CUDA."""
    g = TinyGenerator().to("meta")
    a, y = torch.empty(20, 192, device="meta"), torch.empty(2, 20, device="meta")
    got = csgm.recover(g, a, y, latent_dim=8, restarts=3, iterations=2, lr=0.1, z0=torch.empty(6, 8, device="meta"))
    assert got.x.device.type == got.z.device.type == got.loss.device.type == "meta"
    assert got.x.shape == (2, 3, 8, 8) and got.loss.shape == (2,)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"m": [200, 20000]}, r"m: \[20000\] measurements; each must be in 1\.\.12288"),
        ({"m": [0]}, r"m: \[0\] measurements"),
        ({"m": []}, "the list is empty"),
        ({"outliers": 1000}, r"need 0 <= outliers \(1000\) < robust_m \(1000\)"),
        ({"restarts": 0}, "restarts >= 1"),
    ],
)
def test_cs_settings_are_checked(change, message):
    from lipcore.schema import from_dict

    with pytest.raises(ValueError, match=message):
        from_dict(csgm.CsgmConfig, change, key="gan.cs")


def test_the_search_curve_is_the_chosen_restarts_loss_at_every_step():
    """Recovery.curve shows whether a search has flattened (issue 26): one row per Adam step, one column per image,
    the measurement loss of the restart that was kept, as that restart alone would have traced it."""
    g, a, y = measured(2)
    kw = dict(latent_dim=8, iterations=40, lr=0.05)
    z0 = torch.randn(2 * 3, 8, generator=torch.Generator().manual_seed(5))
    got = csgm.recover(g, a, y, restarts=3, z0=z0, **kw)
    assert got.curve.shape == (40, 2)
    assert (got.curve[-1] < got.curve[0]).all()
    for i in range(2):  # image i's restarts are rows 3i .. 3i+2: the kept one ends at got.z[i]
        alone = [csgm.recover(g, a, y[i : i + 1], restarts=1, z0=z0[r : r + 1], **kw) for r in range(3 * i, 3 * i + 3)]
        (kept,) = [r for r in alone if torch.allclose(r.z[0], got.z[i], atol=1e-5)]
        torch.testing.assert_close(got.curve[:, i], kept.curve[:, 0], rtol=1e-4, atol=1e-6)
    empty = csgm.recover(g, a, y, restarts=3, z0=z0, **{**kw, "iterations": 0})
    assert empty.curve is None
