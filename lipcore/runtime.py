"""Process-level runtime choices: which device to run on, and the CPU allocator setting that makes DIP fast."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

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
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    return device


def tune_cpu_allocator() -> bool:
    """Stop glibc from handing the large activation buffers back to the OS after every step.

    Without this, each DIP iteration on CPU re-maps and page-faults its activations (about a quarter of
    the step time on our 2-core machines, see PERF-NOTES). Returns True if glibc accepted the settings.
    Idempotent; a no-op where glibc is absent or the user set MALLOC_* variables themselves.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if any(k.startswith("MALLOC_") for k in os.environ):
        return False
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        libc = ctypes.CDLL(libc_name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD)
    ok_trim = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # mallopt takes a C int
    # The threshold cannot exceed 32 MiB, and a 128-channel 256x256 fp32 activation is 32 MiB plus a
    # header: it would still be mmapped and faulted in every step. Serving every block from the heap
    # instead measured 1.4x faster steps at 256 px (0.82 vs 1.16-1.24 s/it, interleaved runs).
    ok_max = mallopt(_M_MMAP_MAX, 0)
    _allocator_tuned = bool(ok_mmap and ok_trim and ok_max)
    return _allocator_tuned
