"""CSGM: the batched latent search (every image x restart as one batch through the generator) against solving one
image at a time, on the pretrained DCGAN face generator. Both start from the same latents and take the same
steps, so they return the same images (tests/test_csgm.py checks that); only the wall time differs.

    python bench/csgm.py                       # 8 images x 2 restarts, m = 1000, 50 steps, 1 thread
    python bench/csgm.py --images 16 --restarts 4 --threads 2 --device cuda

Prints seconds per solve (one image's search) for both and their ratio; writes bench/out/csgm.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lipcore.csgm import gaussian_matrix, measure, recover  # noqa: E402
from lipcore.gan import LATENT_DIM, in_range_images, load_pretrained  # noqa: E402
from lipcore.runtime import resolve_device  # noqa: E402


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--m", type=int, default=1000)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    net = load_pretrained().to(device)
    x = in_range_images(net, args.images, torch.Generator().manual_seed(0)).cpu()
    a = gaussian_matrix(args.m, x[0].numel(), torch.Generator().manual_seed(1))
    y = measure(a, x, 0.01, torch.Generator().manual_seed(2))
    z0 = torch.randn(args.images * args.restarts, LATENT_DIM, generator=torch.Generator().manual_seed(3))
    a, y, z0 = a.to(device), y.to(device), z0.to(device)
    kw = {"latent_dim": LATENT_DIM, "restarts": args.restarts, "iterations": args.iterations, "lr": 0.05}
    r = args.restarts
    recover(net, a, y[:1], z0=z0[:r], **{**kw, "iterations": 2})  # warm-up
    batched, _ = timed(lambda: recover(net, a, y, z0=z0, **kw))
    looped, _ = timed(lambda: [recover(net, a, y[i : i + 1], z0=z0[i * r : (i + 1) * r], **kw) for i in range(len(y))])
    record = {
        "device": str(device),
        "threads": args.threads,
        "images": args.images,
        "restarts": args.restarts,
        "m": args.m,
        "iterations": args.iterations,
        "batched_s_per_solve": batched / args.images,
        "looped_s_per_solve": looped / args.images,
        "speedup": looped / batched,
    }
    out = ROOT / "bench" / "out" / "csgm.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"| {device} | {args.threads} thread(s) | {args.images} images x {args.restarts} restarts | m={args.m} | "
        f"{args.iterations} steps | batched {record['batched_s_per_solve']:.3f} s/solve | looped "
        f"{record['looped_s_per_solve']:.3f} s/solve | {record['speedup']:.2f}x |"
    )


if __name__ == "__main__":
    main()
