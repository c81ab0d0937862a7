"""All file I/O of lipcore: images, safetensors artifacts with metadata, JSON, atomic writes.

Tensor artifacts are safetensors only: loading never unpickles anything.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

PathLike = str | os.PathLike


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- images


def load_image(path: PathLike, channels: int | None = None) -> Tensor:
    """Read a PNG/JPEG of any mode as a float image (C, H, W) in [0, 1].

    channels=None keeps the file's own colour (1 for grayscale modes, 3 otherwise; alpha is dropped);
    channels=1 converts to luma, channels=3 repeats a grayscale image. 16-bit grayscale files keep their
    precision (Pillow reads 16-bit RGB PNGs as 8-bit RGB). The EXIF orientation, if any, is applied.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        img = Image.open(path)
        img.load()
    except Image.DecompressionBombError as err:  # PIL's guard against huge images (not an OSError)
        raise ValueError(f"{path} is too large to read safely ({err}); use a smaller image") from err
    except (OSError, Image.UnidentifiedImageError) as err:
        raise ValueError(f"cannot read {path} as an image: {err}") from err
    img = ImageOps.exif_transpose(img)  # a camera's EXIF orientation: the pixels as the image is meant to be seen
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"{path}: integer pixel values span [{arr.min():g}, {arr.max():g}]; expected 8 or 16 bits")
        arr = arr / (65535.0 if arr.max() > 255 or img.mode.startswith("I;16") else 255.0)
        x = torch.from_numpy(arr.astype(np.float32))[None]
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        # Float images are on the [0, 1] scale; a little overshoot (from processing) is clipped below, but values
        # far beyond it mean another scale (e.g. 0..255), which clipping would turn into a white image.
        if arr.size and not (np.isfinite(arr).all() and arr.min() >= -1.0 and arr.max() <= 2.0):
            raise ValueError(
                f"{path}: a floating-point image must hold values on the [0, 1] scale, "
                f"got [{arr.min():g}, {arr.max():g}]"
            )
        x = torch.from_numpy(arr.copy())[None]
    else:
        gray = img.mode in ("1", "L", "LA") or (img.mode == "P" and _palette_is_gray(img))
        img = img.convert("L" if gray else "RGB")
        arr = np.asarray(img, dtype=np.float32) / 255.0
        x = torch.from_numpy(arr[None] if gray else arr.transpose(2, 0, 1).copy())
    return _to_channels(x.clamp(0.0, 1.0), channels, path)


def _palette_is_gray(img: Image.Image) -> bool:
    rgb = np.asarray(img.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _to_channels(x: Tensor, channels: int | None, path: Path) -> Tensor:
    if channels is None or channels == x.shape[0]:
        return x
    if channels == 3 and x.shape[0] == 1:
        return x.expand(3, -1, -1).contiguous()
    if channels == 1 and x.shape[0] == 3:
        w = x.new_tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (x * w).sum(0, keepdim=True)
    raise ValueError(f"{path}: cannot turn a {x.shape[0]}-channel image into {channels} channels")


def is_gray(x: Tensor) -> bool:
    """True for 1-channel images and for RGB images whose three channels are equal."""
    return x.shape[-3] == 1 or bool((x[..., 0:1, :, :] == x).all())


def center_crop(x: Tensor, multiple: int) -> Tensor:
    """Crop (..., H, W) centrally to the largest size divisible by `multiple` (the net's 2**scales)."""
    h, w = x.shape[-2:]
    nh, nw = h - h % multiple, w - w % multiple
    if nh == 0 or nw == 0:
        raise ValueError(f"image of {h}x{w} is smaller than the net's size multiple {multiple}")
    top, left = (h - nh) // 2, (w - nw) // 2
    return x[..., top : top + nh, left : left + nw]


def center_crop_to(x: Tensor, height: int, width: int) -> Tensor:
    """Crop (..., H, W) centrally to exactly height x width."""
    h, w = x.shape[-2:]
    if height > h or width > w:
        raise ValueError(f"cannot crop a {h}x{w} image to {height}x{width}")
    top, left = (h - height) // 2, (w - width) // 2
    return x[..., top : top + height, left : left + width]


def load_mask_image(path: PathLike, height: int, width: int) -> Tensor:
    """An inpainting mask image (white = known pixel), centre-cropped to height x width: (H, W), 1 = known."""
    return (center_crop_to(load_image(path, channels=1), height, width)[0] > 0.5).float()


def save_png(x: Tensor, path: PathLike) -> None:
    """Write an image (C, H, W) or (1, C, H, W) in [0, 1] as an 8-bit PNG, atomically."""
    x = x.detach().float().cpu()
    if x.dim() == 4:
        x = x[0]
    arr = (x.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


# ---------------------------------------------------------------- atomic writes


def sweep_stale(path: PathLike) -> list[Path]:
    """Remove what an earlier write of `path` left beside it when it was killed (SIGKILL, the OOM killer): the
    temporary `.<name>.<8 random characters>.tmp` it was writing and the `.<name>.old` it was replacing. Only these
    exact names: `.r0.x.tmp`, another output's, stays. Returns what was removed."""
    path = Path(path)
    stale = re.compile(rf"\.{re.escape(path.name)}\.(?:[a-z0-9_]{{8}}\.tmp|old)")
    removed = []
    for entry in path.parent.iterdir() if path.parent.is_dir() else ():
        if stale.fullmatch(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds. What a killed
    earlier write left beside `path` is swept first (sweep_stale)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_replaceable(path: PathLike, signature: str, patterns: tuple[str, ...], what: str) -> None:
    """Refuse to let `what` replace `path` unless it is absent, an empty directory, or a directory that looks
    like what `what` writes: it holds `signature` and nothing whose name matches none of `patterns`.

    A stage replaces its output directory as a whole: given an existing folder by mistake (`--out data`),
    it would otherwise delete everything in it.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise ValueError(f"refusing to replace {path} with the output of {what}: it is not a directory")
    names = sorted(entry.name for entry in path.iterdir())
    if not names:
        return
    foreign = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if signature not in names or foreign:
        shown = foreign[:5] or names[:5]
        raise ValueError(
            f"refusing to replace {path} with the output of {what}: it is not an output of {what} "
            f"(it holds {shown}{' ...' if len(foreign or names) > 5 else ''}, no {signature}). An output "
            "directory must be new, empty, or one this stage wrote; check the path, or move that directory away"
        )


@contextlib.contextmanager
def atomic_dir(path: PathLike, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a fresh temporary directory; it replaces `path` only if the block succeeds. What a killed earlier
    write left beside `path` is swept first (sweep_stale).

    check(path): called before an existing `path` is replaced; raises to keep it (see check_replaceable).
    """
    path = Path(path)
    if check is not None:  # early too: refuse before the caller does the work
        check(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 directories
        if check is not None:
            check(path)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: PathLike, data: Any) -> None:
    """Write JSON (sorted keys, indented) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n")


def read_json(path: PathLike) -> Any:
    """A JSON file; an error that names it if it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); rerun the stage that writes it") from err


def read_metadata(path: PathLike) -> dict[str, Any]:
    """The JSON metadata of a safetensors artifact, without loading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        return json.loads(raw.get(_META_KEY, "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a valid safetensors file as lipcore writes it: {err}") from err


# ---------------------------------------------------------------- safetensors artifacts


_META_KEY = "lipcore"


def save_tensors(path: PathLike, tensors: dict[str, Tensor], metadata: dict[str, Any] | None = None) -> None:
    """Save tensors as safetensors with `metadata` as one JSON string (sorted keys).

    One key, because safetensors writes several metadata keys in an arbitrary order: the same content
    would give different bytes, and DVC would see a changed output after every rerun.
    """
    meta = {_META_KEY: json.dumps(metadata or {}, sort_keys=True)}
    plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(plain, str(tmp), metadata=meta)
        except SafetensorError as err:  # e.g. a full disk: an OSError like every other failed write
            raise OSError(f"cannot write {path}: {err}") from err


def load_tensors(path: PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load a safetensors file (no pickle) and its JSON-decoded metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"artifact not found: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a valid safetensors file: {err}") from err
    return tensors, read_metadata(path)


def check_against(tensors: dict[str, Tensor], expected: dict[str, Tensor], what: str, path: PathLike) -> None:
    """Raise unless `tensors` has exactly the names and shapes of `expected`."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{path}: {what} does not fit this net: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise ValueError(
                f"{path}: {what} '{name}' has shape {tuple(t.shape)}, the net has {tuple(expected[name].shape)}"
            )


def save_state(path: PathLike, net: nn.Module, metadata: dict[str, Any] | None = None) -> None:
    """Save every parameter and buffer (BN running stats included) of `net`."""
    save_tensors(path, dict(net.state_dict()), metadata)


def load_state(path: PathLike, net: nn.Module) -> dict[str, Any]:
    """Load weights saved by `save_state` into `net` after checking names and shapes; returns metadata."""
    tensors, meta = load_tensors(path)
    own = net.state_dict()
    check_against(tensors, own, "weights", path)
    net.load_state_dict({k: v.to(own[k].device, own[k].dtype) for k, v in tensors.items()})
    return meta
