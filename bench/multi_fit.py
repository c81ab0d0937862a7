"""Throughput of batched multi-fit (lipcore.fit.fit_many) against N sequential fits.

N members = N seeds (own theta_0, z and noise stream) with N different random masks at 50% sparsity on the
F16 denoising problem: what the evaluate and transfer stages fit side by side. Modes, interleaved so machine
noise hits all of them, each timed after a 2-iteration warm-up:
  sequential  N calls of fit()
  vmap        fit_many(engine="vmap"): one loop over the members stacked into grouped convolutions
  auto        fit_many(engine="auto"): what the pipeline runs (vmap on CUDA, sequential fits on CPU)
This script is the measurement behind the auto choice.

    python bench/multi_fit.py                                  # CPU cases below; GPU: 256 px, N = 8
    python bench/multi_fit.py --case 64:32:4 --iterations 20   # size:channels:members
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipcore import DegradationConfig, FitConfig, NetConfig, build_net, make_input, prune, resolve_device  # noqa: E402
from lipcore.fit import FitJob, fit, fit_many  # noqa: E402
from lipcore.io import center_crop_to, load_image  # noqa: E402
from lipcore.physics import sample_operator  # noqa: E402
from lipcore.runtime import tune_cpu_allocator  # noqa: E402


def jobs(size: int, channels: int, n: int) -> list[FitJob]:
    x = center_crop_to(load_image(ROOT / "data" / "f16.png", channels=3), size, size)[None]
    cfg = NetConfig(channels_down=channels, channels_up=channels)
    op = sample_operator(DegradationConfig(task="denoise"), x.shape[1:], torch.Generator().manual_seed(0))
    y = op.observe(x, torch.Generator().manual_seed(0))
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        net = build_net(cfg, g)
        mask = prune.random_mask(net, 0.5, g)
        out.append(FitJob(net, make_input(net, size, size, g), op, y, x, mask, seed=i))
    return out


def run(mode: str, size: int, channels: int, n: int, iterations: int, device: torch.device) -> float:
    """Seconds per iteration of all N members together."""
    cfg = FitConfig(iterations=iterations, log_every=25)
    warm = FitConfig(iterations=2, log_every=25)
    js = jobs(size, channels, n)
    if mode == "sequential":
        for j in js[:1]:
            fit(j.net, j.z, j.op, j.y, warm, x_true=j.x_true, mask=j.mask, seed=j.seed, device=device)
        js = jobs(size, channels, n)
        start = time.perf_counter()
        for j in js:
            fit(j.net, j.z, j.op, j.y, cfg, x_true=j.x_true, mask=j.mask, seed=j.seed, device=device)
        return (time.perf_counter() - start) / iterations
    fit_many(js, warm, device=device, engine=mode)
    js = jobs(size, channels, n)
    start = time.perf_counter()
    fit_many(js, cfg, device=device, engine=mode)
    return (time.perf_counter() - start) / iterations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", nargs="+", help="size:channels:members (default: CPU 64:32:4 128:128:4; GPU 256:128:8)")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["sequential", "vmap", "auto"])
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()  # process-wide, so the entry script's call (see lipcore.runtime)
    cases = args.case or (["256:128:8"] if device.type == "cuda" else ["64:32:4", "128:128:4"])
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for case in cases:
        size, channels, n = (int(v) for v in case.split(":"))
        times: dict[str, list[float]] = {m: [] for m in args.modes}
        for _ in range(args.repeats):
            for mode in args.modes:
                times[mode].append(run(mode, size, channels, n, args.iterations, device))
        best = {m: min(t) for m, t in times.items()}
        print(f"{size} px, {channels} channels, {n} nets, {args.iterations} iterations (best of {args.repeats}):")
        base = best.get("sequential")
        for mode, t in best.items():
            ratio = f" | {base / t:.2f}x the throughput of sequential" if base else ""
            print(f"  {mode:<10} {t:.4f} s per iteration of all {n} nets{ratio}")


if __name__ == "__main__":
    main()
