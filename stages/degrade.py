"""Stage degrade: one image x one task -> the observation, the operator's random parts, and the clean image.

python -m stages.degrade --image data/f16.png --name f16 --task denoise --out outs/degrade/f16-denoise
"""

from __future__ import annotations

from pathlib import Path

from lipcore import io
from lipcore.physics import make_problem
from lipcore.seeding import generator

from .plumbing import artifacts, entry, layout
from .plumbing.params import load_params


def main(argv: list[str] | None = None) -> None:
    ap = entry.parser(__doc__)
    ap.add_argument("--image", type=Path, required=True)
    ap.add_argument("--name", required=True, help="image id (seeds are derived from it)")
    ap.add_argument("--task", required=True, help="a key of task_defs in params.yaml")
    ap.add_argument("--out", type=Path, required=True)
    args = entry.start(ap, argv)
    layout.DEGRADE_OUT.check(args.out)  # before any work: never replace a folder given by mistake
    params = load_params(args.params)
    cfg = params.task(args.task).degradation
    size = params.image_size  # the net checks divisibility by 2**scales when it fits

    image = io.load_image(args.image, channels=3)
    if min(image.shape[-2:]) < size:
        h, w = image.shape[-2:]
        raise ValueError(f"{args.image} is {h}x{w}, smaller than image_size {size} (params.yaml): lower image_size")
    x_true = io.center_crop_to(image, size, size)[None]
    mask = None
    if cfg.mask is not None:
        where = f"task_defs.{args.task}.degradation.mask"
        if Path(cfg.mask).parent != layout.MASK_IMAGES:
            raise ValueError(f"{where}: {cfg.mask} must live in {layout.MASK_IMAGES}/ (a dependency of degrade)")
        mask_image = io.load_image(cfg.mask, channels=1)
        if mask_image.shape[-2:] != image.shape[-2:]:  # both are centre-cropped: only equal sizes stay aligned
            raise ValueError(
                f"{where}: {cfg.mask} is {tuple(mask_image.shape[-2:])} (H, W) but {args.image} is "
                f"{tuple(image.shape[-2:])}; a mask must have its image's size (both are centre-cropped to image_size)"
            )
        mask = io.load_mask_image(cfg.mask, size, size)
    problem = make_problem(x_true, cfg, generator(params.seed, "degrade", args.name, args.task), mask)
    with layout.DEGRADE_OUT.write(args.out) as tmp:
        artifacts.save_problem(tmp, problem, {"image": str(args.image), "name": args.name})
        io.save_png(x_true, tmp / layout.CLEAN_PNG)
        io.save_png(problem.op.display(problem.y), tmp / layout.DEGRADED_PNG)  # the task's picture of y


if __name__ == "__main__":
    entry.run(main)
