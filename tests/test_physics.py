import math

import numpy as np
import pytest
import torch

from lipcore.config import DegradationConfig
from lipcore.physics import lanczos2_kernel, operator_from_state, sample_operator

# Odd, non-square sizes catch padding bugs; SR needs divisibility by the factor.
SHAPES = {"denoise": (3, 37, 31), "inpaint": (3, 37, 31), "sr": (3, 40, 24), "cs": (3, 9, 7)}
TASKS = [
    DegradationConfig(task="denoise"),
    DegradationConfig(task="inpaint", keep=0.5),
    DegradationConfig(task="inpaint", keep=0.3, per_channel=True),
    DegradationConfig(task="sr", factor=2),
    DegradationConfig(task="sr", factor=4),
    DegradationConfig(task="sr", factor=8),
    DegradationConfig(task="cs", ratio=0.3, sigma=0.01),
]
IDS = [f"{c.task}-{i}" for i, c in enumerate(TASKS)]


def make(cfg, seed=0):
    shape = SHAPES[cfg.task]
    return sample_operator(cfg, shape, torch.Generator().manual_seed(seed)), shape


@pytest.mark.parametrize("cfg", TASKS, ids=IDS)
def test_adjoint(cfg):
    op, shape = make(cfg)
    op = op.double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn((2, *shape), generator=g, dtype=torch.float64)
    y = torch.randn(op(x).shape, generator=g, dtype=torch.float64)
    lhs = (op(x) * y).sum()
    rhs = (x * op.adjoint(y)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cfg", TASKS, ids=IDS)
def test_rebuild_from_saved_state_gives_the_same_operator(cfg):
    op, shape = make(cfg)
    rebuilt = operator_from_state(cfg, shape, op.state_dict())
    x = torch.rand((1, *shape))
    assert torch.equal(op(x), rebuilt(x))
    other, _ = make(cfg, seed=5)
    if cfg.task in ("inpaint", "cs"):  # these have random parts; a different seed must change them
        assert not torch.equal(op(x), other(x))


@pytest.mark.parametrize("cfg", TASKS, ids=IDS)
def test_observation_is_reproducible_from_the_generator(cfg):
    op, shape = make(cfg)
    x = torch.rand((1, *shape), generator=torch.Generator().manual_seed(2))
    y1 = op.observe(x, torch.Generator().manual_seed(3))
    y2 = op.observe(x, torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2)
    if op.noise_std > 0:  # the noise comes from the generator: another seed, another observation
        assert not torch.equal(y1, op.observe(x, torch.Generator().manual_seed(4)))
    elif cfg.task == "inpaint":  # noiseless: exactly the known pixels, zeros elsewhere
        assert torch.equal(y1, x * op.mask.expand_as(x))
        assert 0 < int(op.mask.sum()) < op.mask.numel()


def edge_pad(x, p):
    return np.pad(x, [(0, 0)] * (x.ndim - 2) + [(p, p), (p, p)], mode="edge")


@pytest.mark.parametrize("cfg", TASKS, ids=IDS)
def test_forward_matches_a_brute_force_reference(cfg):
    """A x computed independently in float64 numpy: identity, masking, a dense matrix product, or (SR)
    DIP's Lanczos2 kernel summed over every stride-f window of the edge-replicated image."""
    op, shape = make(cfg)
    x = torch.rand((2, *shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    xn = x.numpy()
    if cfg.task == "denoise":
        ref = xn
    elif cfg.task == "inpaint":
        ref = xn * op.mask.double().numpy()
    elif cfg.task == "cs":
        ref = xn.reshape(2, -1) @ op.matrix.double().numpy().T
    else:
        f = cfg.factor
        pad = {2: 3, 4: 6, 8: 12}[f]  # DIP's preserve_size padding for a 4f-tap kernel: (4f - f) / 2
        k = dip_lanczos2(f)
        windows = np.lib.stride_tricks.sliding_window_view(edge_pad(xn, pad), (4 * f, 4 * f), axis=(-2, -1))
        ref = np.einsum("bcijuv,uv->bcij", windows[:, :, ::f, ::f], k)
        assert ref.shape == (2, 3, shape[1] // f, shape[2] // f)
    np.testing.assert_allclose(op.double()(x).numpy(), ref, rtol=1e-6, atol=1e-6)


def dip_lanczos2(factor):
    """DIP's get_kernel('lanczos', phase=0.5, kernel_width=4f+1, support=2), loop for loop."""
    kernel_width = 4 * factor + 1
    kernel = np.zeros([kernel_width - 1, kernel_width - 1])
    center = (kernel_width + 1.0) / 2.0
    for i in range(1, kernel.shape[0] + 1):
        for j in range(1, kernel.shape[1] + 1):
            di = abs(i + 0.5 - center) / factor
            dj = abs(j + 0.5 - center) / factor
            val = 1.0
            if di != 0:
                val = val * 2 * np.sin(np.pi * di) * np.sin(np.pi * di / 2) / (np.pi * np.pi * di * di)
            if dj != 0:
                val = val * 2 * np.sin(np.pi * dj) * np.sin(np.pi * dj / 2) / (np.pi * np.pi * dj * dj)
            kernel[i - 1][j - 1] = val
    return kernel / kernel.sum()


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_lanczos2_kernel_matches_dip_and_sums_to_one(factor):
    k = lanczos2_kernel(factor)
    assert k.shape == (4 * factor, 4 * factor)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(k, k.flip(0)) and torch.equal(k, k.T)
    np.testing.assert_allclose(k.numpy(), dip_lanczos2(factor), atol=1e-7)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_sr_shapes_and_constant_preservation(factor):
    op = sample_operator(DegradationConfig(task="sr", factor=factor), (3, 64, 48))
    x = torch.full((1, 3, 64, 48), 0.7)
    assert op(x).shape == (1, 3, 64 // factor, 48 // factor)
    assert torch.allclose(op(x), torch.full_like(op(x), 0.7), atol=1e-6)  # replication pad + sum-1 kernel
    # The observation is PIL's Lanczos3 resize, not A; on a smooth image the two Lanczos filters agree to
    # under 0.007 (measured: 0.0009, 0.0023, 0.0067 for f = 2, 4, 8), while a transposed, flipped or
    # channel-swapped LR image would be off by more than 0.5.
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 48), indexing="ij")
    smooth = torch.stack(
        [0.5 + 0.4 * torch.sin(2 * math.pi * yy) * torch.cos(math.pi * xx), 0.2 + 0.6 * xx, 0.9 - 0.7 * yy * xx]
    )
    lr = op.observe(smooth[None])
    assert lr.shape == op(x).shape
    assert float((lr - op(smooth[None])).abs().max()) < 0.01


def test_sr_rejects_sizes_not_divisible_by_the_factor():
    with pytest.raises(ValueError, match="SR factor"):
        sample_operator(DegradationConfig(task="sr", factor=4), (3, 30, 32))


def test_denoising_noise_level_and_clipping():
    op = sample_operator(DegradationConfig(task="denoise", sigma=25 / 255), (3, 128, 128))
    x = torch.full((1, 3, 128, 128), 0.5)
    y = op.observe(x, torch.Generator().manual_seed(0))
    assert float((y - x).std()) == pytest.approx(25 / 255, rel=0.02)
    y_edge = op.observe(torch.ones(1, 3, 16, 16), torch.Generator().manual_seed(0))
    assert float(y_edge.max()) <= 1.0 and float(y_edge.min()) >= 0.0


def test_inpainting_masks_keep_the_requested_fraction():
    per_pixel = sample_operator(DegradationConfig(task="inpaint", keep=0.5), (3, 128, 128))
    assert per_pixel.mask.shape == (1, 1, 128, 128)
    assert float(per_pixel.mask.mean()) == pytest.approx(0.5, abs=0.02)
    per_channel = sample_operator(DegradationConfig(task="inpaint", keep=0.3, per_channel=True), (3, 128, 128))
    assert per_channel.mask.shape == (1, 3, 128, 128)
    assert float(per_channel.mask.mean()) == pytest.approx(0.3, abs=0.02)
    given = torch.zeros(128, 128)
    given[:, :64] = 1
    op = sample_operator(DegradationConfig(task="inpaint"), (3, 128, 128), mask=given)
    assert torch.equal(op.mask, given[None, None])
    y = op.observe(torch.ones(1, 3, 128, 128))
    assert torch.equal(y[0, :, :, 64:], torch.zeros(3, 128, 64))  # unknown: nothing
    assert torch.equal(y[0, :, :, :64], torch.ones(3, 128, 64))  # known: the image itself
    noisy = sample_operator(DegradationConfig(task="inpaint", sigma=0.1), (3, 128, 128), mask=given)
    y = noisy.observe(torch.full((1, 3, 128, 128), 0.5), torch.Generator().manual_seed(0))
    assert torch.equal(y[0, :, :, 64:], torch.zeros(3, 128, 64))  # no noise where nothing is known
    assert float((y[0, :, :, :64] - 0.5).std()) == pytest.approx(0.1, rel=0.03)


def test_cs_measurement_count_and_scaling():
    op = sample_operator(DegradationConfig(task="cs", ratio=0.25), (1, 32, 32), torch.Generator().manual_seed(0))
    assert op.matrix.shape == (256, 1024)
    # Entries N(0, 1/m) make E[A^T A] = I, so E||Ax||^2 = ||x||^2. The mean squared column norm estimates the
    # diagonal of A^T A from m * n entries (spread ~0.003), tight enough to catch a wrong 1/sqrt(m) scale.
    assert float(op.matrix.square().sum(0).mean()) == pytest.approx(1.0, abs=0.02)
    # A seeded zero-mean image keeps its energy up to the spread of m measurements (~sqrt(2/m) = 0.09). Its seed
    # differs from A's: seed 0 would make x a copy of A's first row, measured 5x too strongly.
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    assert float(op(x).square().sum() / x.square().sum()) == pytest.approx(1.0, abs=0.2)
    with pytest.raises(ValueError, match="too large"):
        sample_operator(DegradationConfig(task="cs", ratio=0.5), (3, 512, 512))
    # The measurement noise has the configured std (2,048 draws: the estimate's spread is ~1.6%).
    noisy = sample_operator(
        DegradationConfig(task="cs", ratio=1.0, sigma=0.05), (2, 32, 32), torch.Generator().manual_seed(0)
    )
    x2 = torch.rand(1, 2, 32, 32, generator=torch.Generator().manual_seed(1))
    y = noisy.observe(x2, torch.Generator().manual_seed(2))
    assert float((y - noisy(x2)).std()) == pytest.approx(0.05, rel=0.06)


def test_make_problem_draws_operator_and_observation_from_the_generator(f16_small):
    from lipcore.physics import make_problem

    cfg = DegradationConfig(task="inpaint", keep=0.5, sigma=0.05)
    a = make_problem(f16_small, cfg, torch.Generator().manual_seed(7))
    b = make_problem(f16_small, cfg, torch.Generator().manual_seed(7))
    c = make_problem(f16_small, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a.op.mask, b.op.mask) and torch.equal(a.y, b.y)
    assert not torch.equal(a.op.mask, c.op.mask)
    assert a.x_true is f16_small and a.degradation is cfg
    residual = (a.y - f16_small * a.op.mask)[a.op.mask.expand_as(a.y) > 0]
    assert float(residual.std()) == pytest.approx(0.05, rel=0.1)  # ~1,500 noisy known pixels


def test_inpainting_mask_shape_is_checked():
    with pytest.raises(ValueError, match="mask has shape"):
        sample_operator(
            DegradationConfig(task="inpaint"), (3, 16, 16), mask=(torch.arange(240).view(15, 16) % 2).float()
        )
    assert math.isclose(DegradationConfig(task="inpaint").keep, 0.5)
