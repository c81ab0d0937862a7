import math

import numpy as np
import pytest
import torch

from lipcore.metrics import mse, psnr, psnr_y, rgb_to_y, ssim


def test_psnr_closed_form():
    ref = torch.full((2, 3, 8, 8), 0.5)
    x = ref.clone()
    x[0] += 0.1  # mse 0.01 -> 20 dB
    x[1] += 0.01  # mse 1e-4 -> 40 dB
    assert torch.allclose(mse(x, ref), torch.tensor([1e-2, 1e-4]), rtol=1e-4)
    assert torch.allclose(psnr(x, ref), torch.tensor([20.0, 40.0]), atol=1e-4)
    assert math.isinf(float(psnr(ref, ref)[0]))
    # data_range enters as range^2 / mse: the same images on a 0..255 scale give the same dB
    assert torch.allclose(psnr(255 * x, 255 * ref, data_range=255.0), torch.tensor([20.0, 40.0]), atol=1e-4)
    # one damaged pixel in 64: mse = 0.25^2 / 64 over all channels -> 10 log10(64 / 0.0625) = 30.103 dB
    one = ref[:1].clone()
    one[0, :, 3, 4] += 0.25
    assert float(psnr(one[0], ref[0])) == pytest.approx(10 * math.log10(64 / 0.0625), abs=1e-4)  # (C, H, W)


def test_rgb_to_y_is_bt601_luma():
    # MATLAB rgb2ycbcr: Y = 16 + (65.481 R + 128.553 G + 24.966 B) on the 0..255 scale, R, G, B in [0, 1]
    rgb = torch.tensor([[1.0, 0, 0, 1, 0], [0, 1.0, 0, 1, 0], [0, 0, 1.0, 1, 0]]).view(1, 3, 1, 5)
    expected = torch.tensor([16 + 65.481, 16 + 128.553, 16 + 24.966, 235.0, 16.0]) / 255
    assert torch.allclose(rgb_to_y(rgb), expected.view(1, 1, 1, 5), atol=1e-6)
    gray = torch.rand(1, 1, 4, 4)
    assert torch.equal(rgb_to_y(gray), gray)  # already one channel: unchanged


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rgb_to_y_copies_nothing_from_the_host_after_its_first_call(monkeypatch, dtype):
    """The SR oracle scores with psnr_y every step: a tensor built from a Python list is a host-to-device copy,
    which on CUDA blocks until the device is done. The weights are made once per device and dtype, to the bit."""
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    old = (x * (x.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1) / 255.0)).sum(1, keepdim=True) + 16.0 / 255.0
    assert torch.equal(rgb_to_y(x), old)

    def copy_from_host(*args, **kwargs):
        raise AssertionError("a tensor copied from the host")

    monkeypatch.setattr(torch.Tensor, "new_tensor", copy_from_host)
    monkeypatch.setattr(torch, "tensor", copy_from_host)
    monkeypatch.setattr(torch, "as_tensor", copy_from_host)
    assert torch.equal(rgb_to_y(x), old)
    psnr_y(x, x.flip(0), shave=2)
    meta = x.to("meta")  # another device: its own weights, made there
    monkeypatch.undo()
    assert rgb_to_y(meta).device == meta.device


def test_psnr_y_shaves_exactly_the_border():
    ref = torch.zeros(1, 3, 16, 16)
    x = ref.clone()
    x[0, 1, 2, 5] = 1.0  # pure green just inside a 2-pixel border: Y differs by 128.553 / 255
    x[0, :, 1, 7] = 1.0  # white inside the border: shaved away at shave >= 2
    dy = 128.553 / 255
    # shave=2 keeps the 12 x 12 centre, one damaged pixel: mse = dy^2 / 144
    assert float(psnr_y(x, ref, shave=2)) == pytest.approx(10 * math.log10(144 / dy**2), abs=1e-4)
    assert math.isinf(float(psnr_y(x, ref, shave=3)))  # both damaged pixels shaved
    # no shave: both pixels count over 256, the white one by the full 219 / 255
    mse0 = (dy**2 + (219 / 255) ** 2) / 256
    assert float(psnr_y(x, ref, shave=0)) == pytest.approx(10 * math.log10(1 / mse0), abs=1e-4)
    with pytest.raises(ValueError, match="shave"):
        psnr_y(x, ref, shave=8)


def ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. (2004) SSIM written out: 11x11 Gaussian window (sigma 1.5), population (co)variances,
    K1 = 0.01, K2 = 0.03, L = 1, averaged over the pixels whose window lies inside the image, then channels."""
    from scipy.ndimage import gaussian_filter

    def blur(v):
        return gaussian_filter(v, 1.5, truncate=3.5)  # radius int(3.5 * 1.5 + 0.5) = 5: an 11-tap window

    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for x, y in zip(a.astype(np.float64), b.astype(np.float64)):
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        vals.append(s[5:-5, 5:-5].mean())
    return float(np.mean(vals))


def test_ssim_matches_the_published_definition(f16_small):
    ref = f16_small.expand(2, -1, -1, -1).clone()
    s = ssim(ref, ref)
    assert s.shape == (2,) and torch.allclose(s, torch.ones(2, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    noisy = (ref + 0.05 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    dark = ref * 0.7  # a contrast / luminance change, no noise
    x = torch.cat([noisy[:1], dark[:1]])
    s = ssim(x, ref)
    expected = [ssim_reference(x[i].numpy(), ref[i].numpy()) for i in range(2)]
    assert 0.3 < expected[0] < 0.9 and 0.5 < expected[1] < 0.99  # far from the trivial values 0 and 1
    np.testing.assert_allclose(s.numpy(), expected, atol=1e-5)
    assert float(ssim(x[0], ref[0])) == pytest.approx(expected[0], abs=1e-5)  # (C, H, W) works too


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8))
