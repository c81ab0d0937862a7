"""Image quality metrics. Images are (B, C, H, W) or (C, H, W) in [0, 1]; every metric returns one value
per image, shape (B,), and never synchronises with the host except `ssim` (computed by scikit-image); nor does a
metric copy from the host, but the first time it meets a device and dtype."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _batched(x: Tensor) -> Tensor:
    if x.dim() == 3:
        return x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected an image (C, H, W) or a batch (B, C, H, W), got shape {tuple(x.shape)}")
    return x


def _check_pair(x: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    x, ref = _batched(x), _batched(ref)
    if x.shape[1:] != ref.shape[1:]:
        raise ValueError(f"images differ in shape: {tuple(x.shape)} vs {tuple(ref.shape)}")
    return x, ref


def mse(x: Tensor, ref: Tensor) -> Tensor:
    """Mean squared error per image, (B,)."""
    x, ref = _check_pair(x, ref)
    return (x - ref).pow(2).flatten(1).mean(1)


def psnr_from_mse(err: Tensor, data_range: float = 1.0) -> Tensor:
    """10 log10(range^2 / mse), elementwise; +inf where mse == 0."""
    return 10.0 * torch.log10(data_range**2 / err)


def psnr(x: Tensor, ref: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR in dB over all channels and pixels (no clipping), one value per image, (B,)."""
    return psnr_from_mse(mse(x, ref), data_range)


def rgb_to_y(x: Tensor) -> Tensor:
    """ITU-R BT.601 luma on the [0, 1] scale (MATLAB rgb2ycbcr, the SR convention): (B,3,H,W) -> (B,1,H,W)."""
    x = _batched(x)
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"rgb_to_y needs 1 or 3 channels, got {x.shape[1]}")
    return (x * _y_weights(x.device, x.dtype)).sum(1, keepdim=True) + 16.0 / 255.0


_Y_WEIGHTS: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def _y_weights(device: torch.device, dtype: torch.dtype) -> Tensor:
    """rgb_to_y's weights (1, 3, 1, 1), made once per device and dtype: building them from a Python list at every
    call is a host-to-device copy, which on CUDA waits for the device (the SR oracle scores twice a step)."""
    w = _Y_WEIGHTS.get((device, dtype))
    if w is None:  # computed as x.new_tensor([...]) / 255.0 was, in the images' dtype: the same numbers
        w = torch.tensor([65.481, 128.553, 24.966], dtype=dtype).view(1, 3, 1, 1) / 255.0
        w = _Y_WEIGHTS.setdefault((device, dtype), w.to(device))
    return w


def psnr_y(x: Tensor, ref: Tensor, shave: int = 4) -> Tensor:
    """Super-resolution protocol: PSNR on the Y channel with `shave` pixels cut from every border, (B,)."""
    x, ref = _check_pair(x, ref)
    yx, yr = rgb_to_y(x), rgb_to_y(ref)
    if shave:
        if 2 * shave >= min(x.shape[-2:]):
            raise ValueError(f"shave={shave} leaves nothing of a {x.shape[-2]}x{x.shape[-1]} image")
        yx = yx[..., shave:-shave, shave:-shave]
        yr = yr[..., shave:-shave, shave:-shave]
    return psnr(yx, yr)


def ssim(x: Tensor, ref: Tensor) -> Tensor:
    """SSIM (scikit-image, Gaussian window as in Wang et al. 2004, data range 1) per image, (B,) on CPU."""
    from skimage.metrics import structural_similarity  # imported here: scipy/skimage load slowly

    x, ref = _check_pair(x, ref)
    a = x.detach().float().cpu().numpy()
    b = ref.detach().float().cpu().numpy()
    vals = [
        structural_similarity(
            ai,
            bi,
            data_range=1.0,
            channel_axis=0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        for ai, bi in zip(a, b)
    ]
    return torch.from_numpy(np.asarray(vals, dtype=np.float64))
