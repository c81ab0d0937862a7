"""Degradations, one Operator class per task (params `degradation.task`), each split into parts kept apart:

- the deterministic forward operator A (an nn.Module whose state, random parts included, are buffers, so
  `op.state_dict()` saves it and `operator_from_state` rebuilds exactly the same A),
- the sampling of its random parts (`sample_operator`, from an explicit torch.Generator),
- the observation noise (`op.observe(x, generator)`).

A task's class also owns what the rest of the library asks of a task: the image sizes it refuses
(`check_shape`), its noise default, its picture of an observation (`display`) and the PSNR it reports (`metric`).
Adding a task is one class registered with `@register_task` (see README "How to add a task").

Images are (B, C, H, W) in [0, 1]. The fitting loss is ||A(x_hat) - y||^2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from typing import ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from .config import MIN_KNOWN, DegradationConfig
from .metrics import psnr, psnr_y

# A dense Gaussian CS matrix larger than this many entries (1 GiB in fp32) is refused: it would not fit.
MAX_CS_ENTRIES = 2**28


Shape = tuple[int, int, int]  # (C, H, W) of the clean image
Metric = Callable[[Tensor, Tensor], Tensor]  # (x, ref) -> (B,)


class Operator(nn.Module):
    """A linear degradation y = A x (+ noise). A task's class sets `task` (its params name), implements forward /
    adjoint, and overrides what differs from these defaults: no random parts, no size rule, noise std 0 unless
    `sigma` is given, A^T y as the picture of an observation, PSNR over all channels and pixels."""

    task: ClassVar[str] = ""
    default_sigma: ClassVar[float] = 0.0  # the noise std when the degradation's sigma is null
    paper_searches_clean: ClassVar[bool] = False  # protocol 'paper' searches its masks on the clean image
    random_parts: ClassVar[tuple[str, ...]] = ()  # its buffers drawn by `sample`: the constructor's last arguments

    def __init__(self, image_shape: Shape, noise_std: float) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.noise_std = float(noise_std)

    @classmethod
    def check_shape(cls, cfg: DegradationConfig, image_shape: Shape) -> None:
        """Refuse image sizes the task cannot degrade; the message starts with the degradation field at fault."""

    @classmethod
    def build(cls, cfg: DegradationConfig, image_shape: Shape, parts: dict[str, Tensor]) -> Operator:
        """The operator with the given random parts (buffers by name, as `state_dict()` saves them)."""
        return cls(image_shape, cfg.noise_std, *(parts[name] for name in cls.random_parts))

    @classmethod
    def sample(
        cls, cfg: DegradationConfig, image_shape: Shape, generator: torch.Generator | None, mask: Tensor | None
    ) -> Operator:
        """Draw the random parts from `generator` (CPU tensors); `mask`: a given inpainting mask (others ignore it)."""
        return cls.build(cfg, image_shape, {})

    @classmethod
    def from_state(cls, cfg: DegradationConfig, image_shape: Shape, state: dict[str, Tensor]) -> Operator:
        """Exactly the operator whose `state_dict()` was saved (load_state_dict: no saved part missing or extra)."""
        op = cls.build(cfg, image_shape, state)
        op.load_state_dict(state)
        return op

    @classmethod
    def metric(cls, cfg: DegradationConfig) -> Metric:
        """The PSNR this task reports."""
        return psnr

    def adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def observe(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Simulate an observation of the clean image x: A(x) plus Gaussian noise of std `noise_std`."""
        return _add_noise(self(x), self.noise_std, generator)

    def display(self, y: Tensor) -> Tensor:
        """A viewable picture (1, C, H, W) in [0, 1] of the observation y (degrade's PNG)."""
        return self.adjoint(y).clamp(0, 1)


TASKS: dict[str, type[Operator]] = {}  # params name -> class, in registration order
OperatorClass = TypeVar("OperatorClass", bound=type[Operator])


def register_task(cls: OperatorClass) -> OperatorClass:
    """Make an Operator class the task named by its `task` (a class decorator)."""
    if not cls.task or TASKS.get(cls.task, cls) is not cls:
        raise ValueError(f"{cls.__name__}: task {cls.task!r} is empty or registered already (by {TASKS.get(cls.task)})")
    TASKS[cls.task] = cls
    return cls


def task_class(task: str) -> type[Operator]:
    """The Operator class of the task named `task`."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    return TASKS[task]


def _add_noise(y: Tensor, std: float, generator: torch.Generator | None) -> Tensor:
    if std == 0:
        return y
    noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device="cpu").to(y.device)
    return y + std * noise


@register_task
class Denoise(Operator):
    """A = identity; y = clip(x + sigma * n, 0, 1) as in DIP."""

    task = "denoise"
    default_sigma = 25.0 / 255.0
    paper_searches_clean = True

    def forward(self, x: Tensor) -> Tensor:
        return x

    def adjoint(self, y: Tensor) -> Tensor:
        return y

    def observe(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return super().observe(x, generator).clamp(0.0, 1.0)

    def display(self, y: Tensor) -> Tensor:
        return y


@register_task
class Inpaint(Operator):
    """A = elementwise multiplication by a 0/1 mask of shape (1, 1 or C, H, W); 1 = pixel known."""

    task = "inpaint"
    random_parts = ("mask",)

    def __init__(self, image_shape: Shape, noise_std: float, mask: Tensor) -> None:
        super().__init__(image_shape, noise_std)
        c, h, w = self.image_shape
        if mask.dim() != 4 or mask.shape[0] != 1 or mask.shape[1] not in (1, c) or mask.shape[-2:] != (h, w):
            raise ValueError(f"inpainting mask has shape {tuple(mask.shape)}; expected (1, 1 or {c}, {h}, {w})")
        self.register_buffer("mask", mask.float())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.mask

    def adjoint(self, y: Tensor) -> Tensor:
        return y * self.mask

    def observe(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return super().observe(x, generator) * self.mask  # unknown pixels carry no value, noise or not

    def display(self, y: Tensor) -> Tensor:
        return y

    @classmethod
    def sample(
        cls, cfg: DegradationConfig, image_shape: Shape, generator: torch.Generator | None, mask: Tensor | None
    ) -> Operator:
        """A Bernoulli(keep) mask per pixel (or per channel), unless `mask` (H, W) or (1, 1, H, W) is given."""
        c, h, w = image_shape
        if mask is None:
            mask = (torch.rand((1, c if cfg.per_channel else 1, h, w), generator=generator) < cfg.keep).float()
        else:
            mask = mask[None, None] if mask.dim() == 2 else mask
            check_known_share(float(mask.float().mean()))
        return cls.build(cfg, image_shape, {"mask": mask})

    @classmethod
    def from_state(cls, cfg: DegradationConfig, image_shape: Shape, state: dict[str, Tensor]) -> Operator:
        check_known_share(float(state["mask"].float().mean()))  # a saved mask too: no fit on an empty one
        return super().from_state(cfg, image_shape, state)


def lanczos2_kernel(factor: int) -> Tensor:
    """DIP's Lanczos2 downsampling kernel: 4f x 4f taps, phase 0.5, support 2, normalised to sum 1."""
    width = 4 * factor
    center = (width + 1 + 1) / 2.0  # DIP computes the centre for a (4f+1)-wide kernel, then drops a tap
    d = (torch.arange(1, width + 1, dtype=torch.float64) + 0.5 - center).abs() / factor
    taps = torch.ones_like(d)
    nz = d != 0
    taps[nz] = 2 * torch.sin(math.pi * d[nz]) * torch.sin(math.pi * d[nz] / 2) / (math.pi**2 * d[nz] ** 2)
    kernel = torch.outer(taps, taps)  # DIP's 2-D formula is this separable product
    return (kernel / kernel.sum()).float()


@register_task
class Downsample(Operator):
    """Super-resolution A: replication padding, then a depthwise Lanczos2 filter with stride `factor`.

    Output size is exactly (H / f, W / f). The observation is made as in DIP: a Lanczos resize of the
    HR image (PIL), not by A itself. Its PSNR is on the Y channel with a border of `factor` pixels shaved
    (the SR convention).
    """

    task = "sr"

    def __init__(self, image_shape: Shape, noise_std: float, factor: int) -> None:
        super().__init__(image_shape, noise_std)
        c = self.image_shape[0]
        _refuse_indivisible(factor, self.image_shape)
        self.factor = factor
        self.pad = (4 * factor - factor) // 2  # DIP's preserve_size rule for an even kernel
        k = lanczos2_kernel(factor)
        self.register_buffer("kernel", k.expand(c, 1, *k.shape).contiguous())

    def forward(self, x: Tensor) -> Tensor:
        p = self.pad
        x = F.pad(x, (p, p, p, p), mode="replicate")
        return F.conv2d(x, self.kernel.to(x.dtype), stride=self.factor, groups=x.shape[1])

    def adjoint(self, y: Tensor) -> Tensor:
        c, h, w = self.image_shape
        p = self.pad
        g = F.conv_transpose2d(y, self.kernel.to(y.dtype), stride=self.factor, groups=c)
        # conv_transpose may come out short of the padded size by up to f-1 rows/cols that the
        # strided conv never read; those get zero gradient.
        g = F.pad(g, (0, w + 2 * p - g.shape[-1], 0, h + 2 * p - g.shape[-2]))
        return _replicate_pad_adjoint(g, p)

    def observe(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return _add_noise(lanczos_resize(x, self.factor), self.noise_std, generator)

    def display(self, y: Tensor) -> Tensor:
        return F.interpolate(y, scale_factor=self.factor, mode="nearest")

    @classmethod
    def check_shape(cls, cfg: DegradationConfig, image_shape: Shape) -> None:
        _refuse_indivisible(cfg.factor, image_shape)

    @classmethod
    def build(cls, cfg: DegradationConfig, image_shape: Shape, parts: dict[str, Tensor]) -> Operator:
        return cls(image_shape, cfg.noise_std, cfg.factor)

    @classmethod
    def metric(cls, cfg: DegradationConfig) -> Metric:
        return partial(psnr_y, shave=cfg.factor)


def _refuse_indivisible(factor: int, image_shape: Shape) -> None:
    _, h, w = image_shape
    if h % factor or w % factor:
        raise ValueError(f"factor: the SR factor {factor} does not divide the image size {h}x{w}")


def _replicate_pad_adjoint(g: Tensor, p: int) -> Tensor:
    """Adjoint of replication padding by p: fold each border strip back onto the edge row/column."""
    for dim in (-2, -1):
        n = g.shape[dim] - 2 * p
        inner = g.narrow(dim, p, n).clone()
        inner.narrow(dim, 0, 1).add_(g.narrow(dim, 0, p).sum(dim, keepdim=True))
        inner.narrow(dim, n - 1, 1).add_(g.narrow(dim, p + n, p).sum(dim, keepdim=True))
        g = inner
    return g


def lanczos_resize(x: Tensor, factor: int) -> Tensor:
    """Downscale by `factor` with PIL's Lanczos filter (DIP's LR images), per channel in float precision."""
    out = []
    for img in x.detach().float().cpu().numpy():
        h, w = img.shape[-2:]
        chans = [
            np.asarray(Image.fromarray(ch, mode="F").resize((w // factor, h // factor), Image.Resampling.LANCZOS))
            for ch in img
        ]
        out.append(np.stack(chans))
    return torch.from_numpy(np.stack(out)).clamp(0.0, 1.0).to(device=x.device, dtype=x.dtype)


@register_task
class CompressiveSensing(Operator):
    """A = dense Gaussian matrix (m, n), entries N(0, 1/m), applied to the flattened image; y: (B, m)."""

    task = "cs"
    random_parts = ("matrix",)

    def __init__(self, image_shape: Shape, noise_std: float, matrix: Tensor) -> None:
        super().__init__(image_shape, noise_std)
        n = math.prod(self.image_shape)
        if matrix.dim() != 2 or matrix.shape[1] != n:
            raise ValueError(f"CS matrix has shape {tuple(matrix.shape)}; expected (m, {n})")
        self.register_buffer("matrix", matrix.float())

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.matrix.T

    def adjoint(self, y: Tensor) -> Tensor:
        return (y @ self.matrix).view(y.shape[0], *self.image_shape)

    @classmethod
    def check_shape(cls, cfg: DegradationConfig, image_shape: Shape) -> None:
        try:
            cs_measurements(cfg.ratio, math.prod(image_shape))
        except ValueError as err:
            raise ValueError(f"ratio: {err}") from None

    @classmethod
    def sample(
        cls, cfg: DegradationConfig, image_shape: Shape, generator: torch.Generator | None, mask: Tensor | None
    ) -> Operator:
        """The matrix's entries N(0, 1/m), m = round(ratio * n) rows."""
        n = math.prod(image_shape)
        m = cs_measurements(cfg.ratio, n)
        return cls.build(cfg, image_shape, {"matrix": torch.randn((m, n), generator=generator) / math.sqrt(m)})


def sample_operator(
    cfg: DegradationConfig,
    image_shape: Shape,
    generator: torch.Generator | None = None,
    mask: Tensor | None = None,
) -> Operator:
    """Draw the random parts of the degradation `cfg` for images of shape (C, H, W); CPU tensors.

    `mask` (inpainting only): a given mask (H, W) or (1, 1, H, W), 1 = known, used instead of a random one.
    """
    cls = task_class(cfg.task)
    cls.check_shape(cfg, image_shape)
    return cls.sample(cfg, image_shape, generator, mask)


def cs_measurements(ratio: float, n: int) -> int:
    """The number m of CS measurements of n unknowns at `ratio`; refuses a dense m x n matrix over MAX_CS_ENTRIES."""
    m = max(1, round(ratio * n))
    if m * n > MAX_CS_ENTRIES:
        raise ValueError(f"a dense {m}x{n} Gaussian CS matrix is too large; use a smaller image (e.g. 64x64) or ratio")
    return m


def check_known_share(known: float) -> None:
    """Refuse inpainting masks that keep almost nothing (the fit sees no image: its loss is ~0 at every step)
    or everything (nothing to inpaint)."""
    if known < MIN_KNOWN:
        raise ValueError(
            f"the inpainting mask keeps {known:.2%} of the pixels; it must keep at least {MIN_KNOWN:.0%} "
            "(white = known pixel: is the mask inverted or empty?)"
        )
    if known >= 1.0:
        raise ValueError("the inpainting mask keeps every pixel: there is nothing to inpaint (use task denoise)")


def operator_from_state(cfg: DegradationConfig, image_shape: Shape, state: dict[str, Tensor]) -> Operator:
    """Rebuild exactly the operator whose `state_dict()` was saved (its random parts included)."""
    cls = task_class(cfg.task)
    cls.check_shape(cfg, image_shape)
    return cls.from_state(cfg, image_shape, state)


@dataclass
class Problem:
    """What a fit sees, operator and observation, and the ground truth x_true that only scores it."""

    op: Operator
    y: Tensor
    x_true: Tensor
    degradation: DegradationConfig

    @cached_property  # one object per problem: fit_many scores members that share it in one call
    def psnr(self) -> Metric:
        """The PSNR this task reports, (x, ref) -> (B,) (its Operator class's `metric`)."""
        return task_class(self.degradation.task).metric(self.degradation)


def make_problem(
    x_true: Tensor, cfg: DegradationConfig, generator: torch.Generator, mask: Tensor | None = None
) -> Problem:
    """Degrade the clean image x_true (1, C, H, W): draw the operator's random parts, then the observation,
    both from `generator`. mask (inpainting): a given mask (H, W), 1 = known, instead of a random one."""
    op = sample_operator(cfg, tuple(x_true.shape[1:]), generator, mask=mask)
    return Problem(op, op.observe(x_true, generator), x_true, cfg)
