"""Runtime choices: the device, the precision it runs well, moving modules there without touching the caller's,
and the process-wide CPU allocator setting that makes DIP fast (for entry points to call, never the library)."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import os
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
# glibc refuses an mmap threshold above 32 MiB on 64-bit; the trim threshold has no such cap.
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
_allocator_tuned = False


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) picks CUDA when present, else CPU; any other name is used as given."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:  # torch's message lists dozens of backends; say what this toolkit runs on
        raise ValueError(f"device {name!r} is not a device name: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    return device


def _concrete(device: torch.device) -> torch.device:
    """'cuda' means the current CUDA device; tensors always name theirs ('cuda:0')."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


# module -> {device: (the module's tensors (weakly) and versions when copied, the copy)}; weak: a copy lives while its
# original does, so the fits of one operator (gan_dip: 46 of one 3000 x 12288 CS matrix) share one copy per device.
_MOVED: weakref.WeakKeyDictionary[nn.Module, dict[torch.device, tuple[tuple, nn.Module]]] = weakref.WeakKeyDictionary()


def on_device(module: M, device: str | torch.device) -> M:
    """`module` itself when all its parameters and buffers are on `device`, else a copy moved there.

    nn.Module.to moves a module in place; a fit must not move its caller's operator, so it moves a copy: one per
    module and device, shared by later calls while none of the module's tensors has been replaced or changed in
    place since (operators are read, never trained). The copy is made on `device` directly (no second host copy).
    """
    device = _concrete(torch.device(device))
    tensors = [*module.parameters(), *module.buffers()]
    if all(t.device == device for t in tensors):
        return module
    kept = _MOVED.get(module, {}).get(device)
    if kept is not None and _unchanged(kept[0], tensors):
        return kept[1]  # type: ignore[return-value]
    memo: dict[int, object] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(p.detach().to(device), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = b.to(device)
    moved = copy.deepcopy(module, memo).to(device)
    _MOVED.setdefault(module, {})[device] = (tuple((weakref.ref(t), t._version) for t in tensors), moved)
    return moved


def _unchanged(stamp: tuple, tensors: list[torch.Tensor]) -> bool:
    """Whether `tensors` are the very tensors of `stamp`, none changed in place since (autograd's version counter)."""
    return len(stamp) == len(tensors) and all(ref() is t and t._version == v for (ref, v), t in zip(stamp, tensors))


def _cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX). The probes are private torch functions:
    if a torch version lacks them, assume no (fp32 is the safe side: emulated bf16 is tens of times slower)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe is not None and probe() for probe in probes)


def _native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: what precision 'auto' resolves by (tests/conftest.py patches
    this one function to run a test under both answers)."""
    if device.type == "cuda":
        # Not torch.cuda.is_bf16_supported(): it counts emulated bf16 (True on V100 and T4, where bf16 runs slower
        # than fp32) and answers for the current device. Ampere (compute capability 8.0) and later have bf16 units.
        major, _ = torch.cuda.get_device_capability(device)
        return major >= 8
    if device.type == "cpu":
        return _cpu_bf16()
    return False


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """FitConfig.precision -> 'bf16' or 'fp32' for `device`. 'fp32' (the default) runs the same arithmetic on
    every CPU; 'auto' is bf16 only where the device runs it natively, so its results depend on the machine.

    An explicit 'bf16' is kept, with a warning where the CPU would emulate it (measured ~60x slower on AVX2).
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        return "bf16" if _native_bf16(device) else "fp32"
    if precision == "bf16" and device.type == "cpu" and not _cpu_bf16():
        warnings.warn(
            f"precision 'bf16' on a CPU without native bf16 (torch CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}, no AVX512-BF16 or AMX): the fit runs tens of times "
            "slower than in fp32. Use precision 'fp32'.",
            stacklevel=2,
        )
    return precision


# On CUDA, one choice for every conv and matmul: no TF32. torch's defaults allow TF32 in cuDNN convs but not in
# matmuls, so on an Ampere or later GPU a net's 3x3 convs and its 1x1 / matmul paths would round differently; fp32
# means fp32 (bf16 is the fast opt-in). Recorded in every CUDA run's outputs (cuda_numerics).
TF32 = False


@contextlib.contextmanager
def cuda_flags(cudnn_benchmark: bool = False) -> Iterator[None]:
    """The process-wide CUDA backend flags, set for a block and put back after: TF32 (off, see TF32) for cuDNN
    convs and for matmuls, and cuDNN's algorithm search (`cudnn_benchmark`). Nothing they change runs on CPU."""
    flags = (torch.backends.cudnn, "benchmark", cudnn_benchmark), (torch.backends.cudnn, "allow_tf32", TF32)
    flags += ((torch.backends.cuda.matmul, "allow_tf32", TF32),)
    before = [getattr(owner, name) for owner, name, _ in flags]
    for owner, name, value in flags:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(flags, before, strict=True):
            setattr(owner, name, value)


def cuda_numerics(device: str | torch.device, precision: str, cudnn_benchmark: bool = False) -> dict | None:
    """What decides a CUDA run's rounding, for its outputs to record: the GPU, the torch / CUDA / cuDNN versions,
    the precision ('fp32' or 'bf16', as resolved), TF32 and cuDNN's algorithm search, and that reruns agree to
    rounding only (bilinear upsampling and reflection padding have non-deterministic CUDA backward kernels, which
    torch cannot make deterministic). None on CPU: a CPU run's outputs stay as they were (and CPU has no TF32)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    device = _concrete(device)
    major, minor = torch.cuda.get_device_capability(device)
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device),
        "compute_capability": f"{major}.{minor}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "precision": precision,
        "tf32": TF32,
        "cudnn_benchmark": cudnn_benchmark,
        "deterministic": False,
    }


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's mallopt(param, value), or None where there is no glibc."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    try:
        return ctypes.CDLL(libc_name).mallopt
    except (OSError, AttributeError):
        return None


def tune_cpu_allocator() -> bool:
    """Stop glibc from handing the large activation buffers back to the OS after every step.

    Without this, each DIP iteration on CPU re-maps and page-faults its activations (about a quarter of
    the step time on our 2-core machines, see PERF-NOTES). Process-wide and irreversible, so the library never
    calls it: entry points (stages/, bench/) do. Returns True if the allocator is tuned (now or by an earlier
    call). Idempotent; a no-op returning False where glibc is absent, and the opt-outs: set any MALLOC_*
    environment variable (your own glibc tuning wins) or LIP_NO_ALLOCATOR_TUNING=1.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if os.environ.get("LIP_NO_ALLOCATOR_TUNING", "") not in ("", "0"):
        return False
    if any(k.startswith("MALLOC_") for k in os.environ):
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD)
    ok_trim = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # mallopt takes a C int
    # The threshold cannot exceed 32 MiB, and a 128-channel 256x256 fp32 activation is 32 MiB plus a
    # header: it would still be mmapped and faulted in every step. Serving every block from the heap
    # instead measured 1.4x faster steps at 256 px (0.82 vs 1.16-1.24 s/it, interleaved runs).
    ok_max = mallopt(_M_MMAP_MAX, 0)
    _allocator_tuned = bool(ok_mmap and ok_trim and ok_max)
    return _allocator_tuned
