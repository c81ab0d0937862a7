"""Quality check for FitConfig(precision="bf16"): the same DIP fits in fp32 and in bf16, PSNRs side by side.

The standard net (or one `--channels` wide: the CPU study runs 16) on F16 (center crop) denoising at sigma =
25/255, one fit per seed and precision, each seed with the same theta_0, z and noise stream in both precisions.
Prints, per seed and as the mean over seeds, the
final PSNR of the averaged (EMA) output, the oracle best EMA PSNR and the PSNR where ES-WMV stops, and the
bf16 - fp32 differences. The claim checked: final PSNR within 0.1 dB of fp32 (mean over seeds). Early in a fit
the PSNR still climbs ~0.3 dB per 10 iterations, so compare near the plateau (>= 1000 iterations at 128 px).

A control row, "fp32-cl", runs the same fp32 fit in channels-last layout: the same arithmetic summed in another
order. Its difference from fp32 is the rounding noise floor of a DIP fit (the trajectory is chaotic: tiny
differences grow into different, equally good fits), the scale against which the bf16 difference is read.

    python bench/precision_quality.py --size 128 --iterations 1000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipcore import DegradationConfig, FitConfig, NetConfig, build_net, fit, make_input, resolve_device  # noqa: E402
from lipcore.io import center_crop_to, load_image  # noqa: E402
from lipcore.metrics import psnr  # noqa: E402
from lipcore.physics import sample_operator  # noqa: E402
from lipcore.runtime import tune_cpu_allocator  # noqa: E402

COLUMNS = ("final", "best", "es")


# Explicit precisions: the default "auto" is bf16 on GPUs, which would compare bf16 with itself.
VARIANTS = {
    "fp32": {"precision": "fp32"},
    "bf16": {"precision": "bf16"},
    "fp32-cl": {"precision": "fp32", "channels_last": True},
}


def one_fit(
    size: int, iterations: int, seed: int, variant: str, device: torch.device, channels: int = 128
) -> dict[str, float]:
    x = center_crop_to(load_image(ROOT / "data" / "f16.png", channels=3), size, size)[None]
    op = sample_operator(DegradationConfig(task="denoise"), x.shape[1:], torch.Generator().manual_seed(0))
    y = op.observe(x, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    net = build_net(NetConfig(channels_down=channels, channels_up=channels), g)
    z = make_input(net, size, size, g)
    cfg = FitConfig(iterations=iterations, log_every=10, **VARIANTS[variant])
    res = fit(net, z, op, y, cfg, x_true=x, seed=seed, device=device)
    return {
        "final": float(psnr(res.x_ema, x)),
        "best": res.oracle["ema"].psnr,
        "es": float(psnr(res.x_es_ema, x)),
        "seconds_per_iteration": res.seconds / res.iterations,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--channels", type=int, default=128, help="net width (the standard net: 128; the CPU study: 16)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tolerance", type=float, default=0.1, help="dB, on the mean final EMA PSNR")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()  # process-wide, so the entry script's call (see lipcore.runtime)
    print(
        f"device {device} (CPU capability {torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; skip net of {args.channels} channels, F16 "
        f"{args.size} px denoising, {args.iterations} iterations; PSNR of the EMA output (dB)"
    )
    print(f"{'seed':>4} {'variant':>9} {'final':>7} {'best':>7} {'ES':>7} {'s/it':>7}")
    diffs, noise = [], []
    for seed in args.seeds:
        rows = {v: one_fit(args.size, args.iterations, seed, v, device, args.channels) for v in VARIANTS}
        for p, r in rows.items():
            psnrs = " ".join(f"{r[c]:7.2f}" for c in COLUMNS)
            print(f"{seed:>4} {p:>9} {psnrs} {r['seconds_per_iteration']:7.4f}", flush=True)
        diffs.append([rows["bf16"][c] - rows["fp32"][c] for c in COLUMNS])
        noise.append([rows["fp32-cl"][c] - rows["fp32"][c] for c in COLUMNS])
    for name, d in (("bf16 - fp32", np.asarray(diffs)), ("fp32-cl - fp32 (rounding noise)", np.asarray(noise))):
        per_seed = "; ".join(" / ".join(f"{v:+.2f}" for v in row) for row in d)
        means = ", ".join(f"{c} {v:+.2f}" for c, v in zip(COLUMNS, d.mean(axis=0), strict=True))
        print(f"{name}: per seed (final / best / ES) {per_seed}; mean over {len(args.seeds)} seeds: {means}")
    mean = np.asarray(diffs).mean(axis=0)
    verdict = "PASS" if abs(mean[0]) <= args.tolerance else "FAIL"
    print(f"{verdict}: |mean final difference| {abs(mean[0]):.2f} dB vs tolerance {args.tolerance} dB")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
