"""Speed of lipcore's fit against a reference loop that does what the original DIP code does every iteration.

Reference loop (DIP's denoising notebook), on the net built from DIP's modules (every conv a
ReflectionPad2d, 1x1 convs included, then nn.Conv2d; same weights): plain torch.optim.Adam; PSNR against
the observation, the ground truth and the averaged output computed on the host each step (three
device->host copies); a host copy of all parameters for backtracking each step; default allocator. Both
run the standard skip net (same weights) on the same input for the same number of iterations, each in its
own fresh process (the allocator setting is process-wide), interleaved ref/lip/ref/lip so machine noise
hits both. Also reports achieved FLOP/s (FLOPs counted with
torch.utils.flop_counter) as a fraction of the fp32 matmul rate measured in the same run, and peak memory.

    python bench/compare.py                       # CPU: 128 and 256 px; GPU: 256 and 512 px
    python bench/compare.py --sizes 256 --iterations 20 --repeats 2
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time
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


def problem(size: int, device: torch.device):
    x = center_crop_to(load_image(ROOT / "data" / "f16.png", channels=3), size, size)[None]
    g = torch.Generator().manual_seed(0)
    net = build_net(NetConfig(), g)
    z = make_input(net, size, size, g)
    op = sample_operator(DegradationConfig(task="denoise"), x.shape[1:], g)
    y = op.observe(x, g)
    return net, z, op, y, x


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


class DipConv(torch.nn.Module):
    """A conv as DIP's `conv()` helper builds it: ReflectionPad2d(k // 2), 1x1 convs included, then an
    unpadded nn.Conv2d."""

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        k = conv.kernel_size[0]
        self.pad = torch.nn.ReflectionPad2d(k // 2)
        self.conv = torch.nn.Conv2d(
            conv.in_channels, conv.out_channels, k, stride=conv.stride, bias=conv.bias is not None
        )
        self.conv.load_state_dict(conv.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


def dip_net(net: torch.nn.Module) -> torch.nn.Module:
    """The same net (same weights, same function) built from the modules the original DIP code uses."""
    net = copy.deepcopy(net)
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Conv2d):
                setattr(parent, name, DipConv(child))
    return net


def reference_loop(net, z, y, x_true, iterations: int, device: torch.device) -> float:
    """What DIP's code does per iteration, on DIP's modules. Seconds per iteration (after 3 warm-up steps)."""
    net, z, y = dip_net(net).to(device), z.to(device), y.to(device)
    y_np, x_np = y.cpu().numpy()[0], x_true.numpy()[0]
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    noise = torch.empty_like(z)
    out_avg, last_psnr, last_net = None, None, None
    start = 0.0
    for i in range(iterations + 3):
        if i == 3:
            sync(device)
            start = time.perf_counter()
        opt.zero_grad()
        out = net(z + noise.normal_() * (1.0 / 30.0))
        out_avg = out.detach() if out_avg is None else out_avg * 0.99 + out.detach() * 0.01
        loss = torch.nn.functional.mse_loss(out, y)
        loss.backward()
        psnr_noisy = host_psnr(y_np, out.detach().cpu().numpy()[0])
        host_psnr(x_np, out.detach().cpu().numpy()[0])
        host_psnr(x_np, out_avg.detach().cpu().numpy()[0])
        if last_psnr is not None and psnr_noisy - last_psnr < -5:
            with torch.no_grad():
                for p, s in zip(net.parameters(), last_net):
                    p.copy_(s.to(device))
        else:
            last_net = [p.detach().cpu() for p in net.parameters()]
            last_psnr = psnr_noisy
        opt.step()
    sync(device)
    return (time.perf_counter() - start) / iterations


VARIANTS = {
    "lip": {"precision": "fp32"},  # explicit: the default "auto" is bf16 on GPUs
    "lip-bf16": {"precision": "bf16"},
    "lip-channels-last": {"precision": "fp32", "channels_last": True},
    "lip-cudnn-benchmark": {"precision": "fp32", "cudnn_benchmark": True},  # CUDA only; on CPU the same as "lip"
}


def lipcore_loop(net, z, op, y, x_true, iterations: int, device: torch.device, variant: str) -> tuple[float, float]:
    """Seconds per iteration and the final EMA PSNR (for the quality check of reduced precision)."""
    opts = VARIANTS[variant]
    start = {k: v.clone() for k, v in net.state_dict().items()}
    fit(net, z, op, y, FitConfig(iterations=3, log_every=25, **opts), device=device)  # warm-up
    net.load_state_dict(start)
    res = fit(net, z, op, y, FitConfig(iterations=iterations, log_every=25, **opts), x_true=x_true, device=device)
    return res.seconds / iterations, float(psnr(res.x_ema, x_true))


def count_flops(net, z, y, device: torch.device) -> int:
    """FLOPs of one forward + backward (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    net, z, y = net.to(device), z.to(device), y.to(device)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.mse_loss(net(z), y).backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_flops_per_s(device: torch.device, n: int = 4096, reps: int = 5) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    if args.worker != "ref" and device.type == "cpu":
        tune_cpu_allocator()  # lipcore's setting, process-wide: the reference loop keeps the default allocator
    torch.manual_seed(0)
    net, z, op, y, x = problem(args.size, device)
    quality = None
    if args.worker == "ref":
        s = reference_loop(net, z, y, x, args.iterations, device)
    else:
        s, quality = lipcore_loop(net, z, op, y, x, args.iterations, device, args.worker)
    print(json.dumps({"s_per_it": s, "peak_mb": peak_memory_mb(device), "psnr": quality}))


def run_worker(kind: str, size: int, iterations: int, device: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--size",
        str(size),
        "--iterations",
        str(iterations),
        "--device",
        device,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved ref/lip pairs per size")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--variants",
        nargs="*",
        default=["lip"],
        choices=list(VARIANTS),
        help="lipcore settings to time against the reference (and each other)",
    )
    ap.add_argument("--worker", choices=["ref", *VARIANTS], help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    device = resolve_device(args.device)
    sizes = args.sizes or ([256, 512] if device.type == "cuda" else [128, 256])
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"iterations={args.iterations} repeats={args.repeats}"
    )
    rate = matmul_flops_per_s(device)
    print(f"fp32 matmul 4096^2: {rate / 1e9:.1f} GFLOP/s")
    for size in sizes:
        net, z, _, y, _ = problem(size, device)
        flops = count_flops(net, z, y, device)
        runs: dict[str, list[dict]] = {k: [] for k in ["ref", *args.variants]}
        for _ in range(args.repeats):  # interleaved, so machine noise hits every variant alike
            for kind in runs:
                runs[kind].append(run_worker(kind, size, args.iterations, str(device)))
        r = min(d["s_per_it"] for d in runs["ref"])
        print(
            f"{size} px: {flops / 1e9:.1f} GFLOP/iteration; reference loop {r:.4f} s/it, "
            f"peak memory {max(d['peak_mb'] for d in runs['ref']):.0f} MiB"
        )
        for kind in args.variants:
            q = min(d["s_per_it"] for d in runs[kind])
            print(
                f"  {kind:18s} {q:.4f} s/it | speed-up vs reference {r / q:.2f}x | {flops / q / 1e9:.1f} GFLOP/s "
                f"= {100 * flops / q / rate:.0f}% of matmul | peak memory "
                f"{max(d['peak_mb'] for d in runs[kind]):.0f} MiB | EMA PSNR after {args.iterations} its "
                f"{runs[kind][0]['psnr']:.2f} dB"
            )


if __name__ == "__main__":
    main()
