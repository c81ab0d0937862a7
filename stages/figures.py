"""Writing the report's matplotlib figures: one way for every figure, so that none is left half-written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from lipcore import io  # noqa: E402

from . import layout  # noqa: E402

GRID = ["clean", "degraded", "dense", "lip", "random_global", "snip", "decoder"]  # the methods an image grid shows


def save(fig: Any, path: Path) -> None:
    """Lay `fig` out, write it to `path` as PNG in one step (a crash leaves the old file, not a torn one), free it."""
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def grid(eval_dir: Path, title: str, path: Path) -> None:
    """One row of images from an evaluate output folder: clean, degraded, then each method's reported output."""
    names = [n for n in GRID if (eval_dir / layout.method_png(n)).exists()]
    fig, axes = plt.subplots(1, len(names), figsize=(2.2 * len(names), 2.6))
    for ax, name in zip(axes, names):
        img = Image.open(eval_dir / layout.method_png(name))
        ax.imshow(img, cmap="gray" if img.mode == "L" else None, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    save(fig, path)
