import math

import pytest
import torch

from lipcore.metrics import psnr, psnr_y, rgb_to_y, ssim


def test_psnr_closed_form():
    ref = torch.full((2, 3, 8, 8), 0.5)
    x = ref.clone()
    x[0] += 0.1  # mse 0.01 -> 20 dB
    x[1] += 0.01  # mse 1e-4 -> 40 dB
    assert torch.allclose(psnr(x, ref), torch.tensor([20.0, 40.0]), atol=1e-4)
    assert math.isinf(float(psnr(ref, ref)[0]))


def test_psnr_y_uses_bt601_luma_and_shaves_borders():
    ref = torch.rand(1, 3, 16, 16)
    assert torch.allclose(rgb_to_y(torch.ones(1, 3, 2, 2)), torch.full((1, 1, 2, 2), 235 / 255))
    x = ref.clone()
    x[..., :2, :] = 1 - x[..., :2, :]  # damage only the 2-pixel border
    assert math.isinf(float(psnr_y(x, ref, shave=2)))
    assert float(psnr_y(x, ref, shave=0)) < 40
    with pytest.raises(ValueError, match="shave"):
        psnr_y(x, ref, shave=8)


def test_ssim_one_value_per_image():
    ref = torch.rand(2, 3, 32, 32)
    s = ssim(ref, ref)
    assert s.shape == (2,) and torch.allclose(s, torch.ones(2, dtype=torch.float64))
    assert float(ssim(torch.rand(1, 3, 32, 32), ref[:1])) < 0.2


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8))
