"""Benchmark + science check: the standard DIP on F16 (center crop) denoising at sigma = 25/255.

Prints seconds per iteration, peak memory, the PSNR curve, the oracle best PSNR (raw and EMA outputs) and
where ES-WMV stops without looking at the ground truth. Not a test: run it by hand, e.g.

    python bench/fit_dip.py --size 256 --iterations 1500 --es-patience 300
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import numpy as np
import torch

from lipcore import DegradationConfig, FitConfig, NetConfig, build_net, fit, make_input, resolve_device
from lipcore.io import center_crop_to, load_image, write_json
from lipcore.metrics import psnr
from lipcore.physics import sample_operator
from lipcore.runtime import tune_cpu_allocator

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT / "data" / "f16.png"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def es_what_if(history: dict[str, np.ndarray], patience: int) -> tuple[int | None, float, float]:
    """From the logged variance curve: where ES-WMV with this patience would stop, and the PSNRs there."""
    it, var = history["iteration"], history["es_variance"]
    best_v, best_i = np.inf, None
    for i, v in enumerate(var):
        if np.isnan(v):
            continue
        if v < best_v:
            best_v, best_i = v, i
        if best_i is not None and it[i] - it[best_i] >= patience:
            return int(it[best_i]), float(history["psnr_out"][best_i]), float(history["psnr_ema"][best_i])
    return None, float("nan"), float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--sigma", type=float, default=25.0, help="noise std on the 0..255 scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--es-window", type=int, default=100)
    ap.add_argument("--es-patience", type=int, default=300)
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"], help="FitConfig.precision")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "fit_dip.json")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()  # process-wide, so the entry script's call (see lipcore.runtime)
    torch.manual_seed(args.seed)
    x_true = center_crop_to(load_image(args.image, channels=3), args.size, args.size)[None]
    gen = torch.Generator().manual_seed(args.seed)
    net = build_net(NetConfig(channels_down=args.channels, channels_up=args.channels), gen)
    z = make_input(net, args.size, args.size, gen)
    op = sample_operator(DegradationConfig(task="denoise", sigma=args.sigma / 255.0), x_true.shape[1:], gen)
    y = op.observe(x_true, gen)
    cfg = FitConfig(
        iterations=args.iterations,
        log_every=args.log_every,
        es_window=args.es_window,
        es_patience=args.es_patience,
        precision=args.precision,
    )
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} size={args.size} "
        f"iterations={args.iterations} sigma={args.sigma}/255 seed={args.seed} precision={args.precision}",
        flush=True,
    )
    res = fit(net, z, op, y, cfg, x_true=x_true, seed=args.seed, device=device)

    h = res.history
    s_per_it = res.seconds / res.iterations
    print(f"seconds/iteration: {s_per_it:.4f}  ({res.seconds:.1f} s for {res.iterations} iterations)")
    print(f"peak memory: {peak_memory_mb(device):.0f} MiB ({'CUDA allocated' if device.type == 'cuda' else 'RSS'})")
    print(f"noisy input PSNR: {float(psnr(y, x_true)):.2f} dB; backtracks: {res.backtracks}")
    print("PSNR curve (iteration: raw / EMA dB):")
    step = max(1, len(h["iteration"]) // 30)
    for i in range(0, len(h["iteration"]), step):
        print(f"  {int(h['iteration'][i]):5d}: {h['psnr_out'][i]:6.2f} / {h['psnr_ema'][i]:6.2f}")
    o_out, o_ema = res.oracle["out"], res.oracle["ema"]
    es_ema_psnr = float(psnr(res.x_es_ema, x_true))
    es_out_psnr = float(psnr(res.x_es, x_true))
    print(f"ORACLE best raw PSNR {o_out.psnr:.2f} dB at iteration {o_out.iteration}")
    print(f"ORACLE best EMA PSNR {o_ema.psnr:.2f} dB at iteration {o_ema.iteration}")
    print(f"final: raw {float(psnr(res.x_last, x_true)):.2f} dB, EMA {float(psnr(res.x_ema, x_true)):.2f} dB")
    detected = res.es_detected if res.es_detected is not None else "never (patience not reached)"
    print(
        f"ES-WMV (W={args.es_window}, P={args.es_patience}): stops at iteration {res.es_iteration} "
        f"(detected at {detected}); PSNR there: EMA {es_ema_psnr:.2f} dB, raw {es_out_psnr:.2f} dB; "
        f"gap to best EMA {o_ema.psnr - es_ema_psnr:.2f} dB"
    )
    print("ES-WMV what-if over patience (from the logged variance, log granularity):")
    for p in (100, 200, 300, 500, 1000):
        at, p_out, p_ema = es_what_if(h, p)
        print(f"  P={p:5d}: stop at {at}, raw {p_out:.2f} dB, EMA {p_ema:.2f} dB")
    write_json(
        args.out,
        {
            "device": str(device),
            "size": args.size,
            "iterations": res.iterations,
            "seconds_per_iteration": s_per_it,
            "peak_memory_mb": peak_memory_mb(device),
            "oracle_best_ema": [o_ema.iteration, o_ema.psnr],
            "oracle_best_out": [o_out.iteration, o_out.psnr],
            "es_iteration": res.es_iteration,
            "es_detected": res.es_detected,
            "es_psnr_ema": es_ema_psnr,
            "es_psnr_out": es_out_psnr,
            "history": {k: v.tolist() for k, v in h.items()},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
