"""Speed of FitConfig(precision="bf16") against fp32: milliseconds per DIP iteration, interleaved runs.

For each image size and net width, the same denoising fit (F16, sigma = 25/255) runs `--iterations` steps in fp32
and in bf16, alternating `--repeats` times, each run after a few warm-up steps; the table gives the range over the
repeats and the bf16 / fp32 ratio of the medians. The CPU is named (torch's capability and whether it has native
bf16): bf16 pays only on a CPU with AVX512-BF16 or AMX, and even there not at every size.

    python bench/precision_speed.py --sizes 64 128 256 --channels 16 128 --iterations 20 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipcore import DegradationConfig, FitConfig, NetConfig, build_net, fit, make_input, resolve_device  # noqa: E402
from lipcore.io import center_crop_to, load_image  # noqa: E402
from lipcore.physics import sample_operator  # noqa: E402
from lipcore.runtime import _cpu_bf16, tune_cpu_allocator  # noqa: E402

WARMUP = 3


def ms_per_iteration(size: int, channels: int, precision: str, iterations: int, device: torch.device) -> float:
    x = center_crop_to(load_image(ROOT / "data" / "f16.png", channels=3), size, size)[None]
    op = sample_operator(DegradationConfig(task="denoise"), x.shape[1:], torch.Generator().manual_seed(0))
    y = op.observe(x, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    net = build_net(NetConfig(channels_down=channels, channels_up=channels), g)
    z = make_input(net, size, size, g)
    cfg = FitConfig(iterations=WARMUP, log_every=WARMUP, es_window=2, precision=precision)
    fit(net, z, op, y, cfg, device=device)  # warm-up: allocator, oneDNN primitives
    cfg = FitConfig(iterations=iterations, log_every=iterations, es_window=2, precision=precision)
    start = time.perf_counter()
    fit(net, z, op, y, cfg, device=device)
    return 1000 * (time.perf_counter() - start) / iterations


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--channels", type=int, nargs="+", default=[16, 128], help="net widths (CPU study: 16)")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    cpu = f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {_cpu_bf16()}"
    print(f"device {device} ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'size':>5} {'channels':>8} {'fp32 ms/it':>16} {'bf16 ms/it':>16} {'bf16/fp32':>9}")
    for size in args.sizes:
        for channels in args.channels:
            runs: dict[str, list[float]] = {"fp32": [], "bf16": []}
            for _ in range(args.repeats):
                for precision in runs:
                    runs[precision].append(ms_per_iteration(size, channels, precision, args.iterations, device))
            spans = {p: f"{min(r):7.1f}-{max(r):7.1f}" for p, r in runs.items()}
            ratio = statistics.median(runs["bf16"]) / statistics.median(runs["fp32"])
            print(f"{size:>5} {channels:>8} {spans['fp32']:>16} {spans['bf16']:>16} {ratio:>9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
