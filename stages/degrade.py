"""Stage degrade: one image x one task -> the observation, the operator's random parts, and the clean image.

python -m stages.degrade --image data/f16.png --name f16 --task denoise --out outs/degrade/f16-denoise
"""

from __future__ import annotations

from pathlib import Path

import torch

from lipcore import io
from lipcore.lottery import Problem
from lipcore.physics import sample_operator
from lipcore.seeding import generator

from . import common

MASKS = Path("data/masks")  # every mask image lives here, so dvc.yaml can list them as a dependency


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--image", type=Path, required=True)
    ap.add_argument("--name", required=True, help="image id (seeds are derived from it)")
    ap.add_argument("--task", required=True, help="a key of task_defs in params.yaml")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    params = common.load_params(args.params)
    cfg = common.degradation_cfg(params, args.task)
    size = int(params["image_size"])  # the net checks divisibility by 2**scales when it fits

    x_true = io.center_crop_to(io.load_image(args.image, channels=3), size, size)[None]
    mask = None
    if cfg.mask is not None:
        if Path(cfg.mask).parent != MASKS:
            raise ValueError(f"mask image {cfg.mask} must live in {MASKS}/ (the degrade stage's dependency for masks)")
        mask = io.center_crop_to(io.load_image(cfg.mask, channels=1), size, size)[0] > 0.5
    gen = generator(params["seed"], "degrade", args.name, args.task)
    op = sample_operator(cfg, tuple(x_true.shape[1:]), gen, mask=mask.float() if mask is not None else None)
    y = op.observe(x_true, gen)
    with io.atomic_dir(args.out) as tmp:
        common.save_problem(tmp, Problem(op, y, x_true, cfg), {"image": str(args.image), "name": args.name})
        io.save_png(x_true, tmp / "clean.png")
        io.save_png(display(op, y), tmp / "degraded.png")


def display(op, y: torch.Tensor) -> torch.Tensor:
    """A viewable picture of the observation: the image itself, or A^T y for SR (upsampled) and CS."""
    if op.task in ("denoise", "inpaint"):
        return y
    if op.task == "sr":
        return torch.nn.functional.interpolate(y, scale_factor=op.factor, mode="nearest")
    return op.adjoint(y).clamp(0, 1)


if __name__ == "__main__":
    main()
