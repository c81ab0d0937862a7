"""Writing the report's figures: one way for every figure, so that none is left half-written."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from lipcore import io, methods  # noqa: E402

from ..plumbing import layout  # noqa: E402


def grid_names() -> list[str]:
    """What an image grid shows: the clean and the degraded image, then the methods lipcore.methods puts in it."""
    return ["clean", "degraded", *methods.grid()]


def save(fig: Any, path: Path) -> None:
    """Lay `fig` out, write it to `path` as PNG in one step (a crash leaves the old file, not a torn one), free it."""
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


PANEL = 192  # the height each image of a grid is shown at
PAD, LABEL, HEADER = 8, 20, 26  # grid spacing, the method-name row and the title row, in pixels


def grid(eval_dir: Path, title: str, path: Path) -> None:
    """One row of images from an evaluate output folder: clean, degraded, then each method's reported output,
    each under its name. Composed with PIL (a matplotlib figure spent ~0.8 s laying out its axes, more than a
    small stage's fits); enlarged pixel for pixel, so what the method made is what one sees."""
    names = [n for n in grid_names() if (eval_dir / layout.method_png(n)).exists()]
    images = [Image.open(eval_dir / layout.method_png(n)).convert("RGB") for n in names]
    ref = max(images, key=lambda img: img.height)  # the full-size images (a super-resolution input is smaller)
    width = math.ceil(ref.width * PANEL / ref.height)
    canvas = Image.new("RGB", (PAD + len(images) * (width + PAD), HEADER + LABEL + PANEL + PAD), "white")
    draw = ImageDraw.Draw(canvas)
    font, title_font = ImageFont.load_default(size=13), ImageFont.load_default(size=15)
    draw.text((canvas.width / 2, HEADER / 2), title, fill="black", font=title_font, anchor="mm")
    for k, (name, img) in enumerate(zip(names, images)):
        left = PAD + k * (width + PAD)
        shown = img.resize((width, PANEL), Image.NEAREST if img.height <= PANEL else Image.LANCZOS)
        canvas.paste(shown, (left, HEADER + LABEL))
        draw.text((left + width / 2, HEADER + LABEL / 2), name, fill="black", font=font, anchor="mm")
    with io.atomic_path(path) as tmp:
        canvas.save(tmp, format="png")
