"""Speed of channel tickets (lipcore.channels.materialise) against the dense skip net: seconds per fitting step.

For each width and image size: the dense net and the channel tickets after k = 1..K rounds of 20% per layer (masks
from the L1 filter norms of the random initialisation: the timing depends on the widths only). Per net: kept
parameters, forward + backward FLOPs per step (FlopCounterMode: convs and matmuls), and the measured seconds of one
step (forward, ||x - y||^2, backward, fused Adam, as lipcore.fit steps; without fit's EMA / ES-WMV bookkeeping) on
one thread. Interleaved: every repeat times a dense block right before each ticket's block, and a ticket's speed-up
is the median of its dense blocks over the median of its own.

    python bench/channel_speed.py --channels 16 32 --sizes 64 256 --rounds 5 --repeats 5
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipcore import NetConfig, build_net, count_parameters  # noqa: E402
from lipcore import channels as C  # noqa: E402


def cpu_name() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


class Stepper:
    """One net, its Adam and its problem: `run(n)` times n fitting steps, in seconds per step."""

    def __init__(self, net: nn.Module, z: Tensor, y: Tensor) -> None:
        self.net, self.z, self.y = net.train(), z, y
        self.opt = torch.optim.Adam(net.parameters(), lr=0.01, fused=True)

    def run(self, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            (self.net(self.z) - self.y).square().mean().backward()
            self.opt.step()
        return (time.perf_counter() - start) / n


def bench(channels: int, size: int, rounds: int, repeats: int, block_seconds: float) -> list[dict]:
    cfg = NetConfig(
        kind="skip", in_channels=32, scales=5, channels_down=channels, channels_up=channels, channels_skip=4
    )
    g = torch.Generator().manual_seed(0)
    dense_net = build_net(cfg, g)
    state = {k: v.clone() for k, v in dense_net.state_dict().items()}
    z = torch.rand(1, cfg.in_channels, size, size, generator=g) * cfg.input_scale
    y = torch.rand(1, cfg.out_channels, size, size, generator=g)
    scores = C.channel_scores(state, cfg)
    masks = [C.dense_channel_mask(dense_net)]
    for _ in range(rounds):
        masks.append(C.prune_channels(scores, masks[-1], 0.2))
    nets = [dense_net] + [C.materialise(cfg, state, m) for m in masks[1:]]
    flops = [C.flops_per_iteration(net, z) for net in nets]
    steppers = [Stepper(net, z, y) for net in nets]
    for s in steppers:
        s.run(2)  # warm-up: allocator, oneDNN primitives
    n = max(3, math.ceil(block_seconds / steppers[0].run(2)))
    times: list[list[float]] = [[] for _ in nets]
    dense_beside: list[list[float]] = [[] for _ in nets]  # the dense block timed right before each ticket's
    for _ in range(repeats):
        for k in range(1, len(nets)):
            d = steppers[0].run(n)
            times[0].append(d)
            dense_beside[k].append(d)
            times[k].append(steppers[k].run(n))
    rows = []
    for k, net in enumerate(nets):
        t = statistics.median(times[k])
        d = statistics.median(dense_beside[k]) if k else t
        rows.append(
            {
                "channels": channels,
                "size": size,
                "net": "dense" if k == 0 else f"k={k}",
                "params": count_parameters(net),
                "params_share": count_parameters(net) / count_parameters(dense_net),
                "gflop": flops[k] / 1e9,
                "flop_share": flops[k] / flops[0],
                "s_it": t,
                "dense_s_it": d,
                "speedup": d / t,
                "block": n,
            }
        )
        if k:
            assert rows[-1]["params"] == C.kept_parameters(cfg, masks[k])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--block-seconds", type=float, default=0.5, help="length of one dense timing block")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} thread")
    start = time.perf_counter()
    print(
        "\n| channels | size | net | parameters | share | GFLOP/step | share | s/step | dense s/step (beside) "
        "| speed-up | steps/block |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for channels in args.channels:
        for size in args.sizes:
            for r in bench(channels, size, args.rounds, args.repeats, args.block_seconds):
                print(
                    f"| {r['channels']} | {r['size']} | {r['net']} | {r['params']:,} | {r['params_share']:.2f} "
                    f"| {r['gflop']:.3f} | {r['flop_share']:.2f} | {r['s_it']:.4f} | {r['dense_s_it']:.4f} "
                    f"| {r['speedup']:.2f}× | {r['block']} |",
                    flush=True,
                )
    print(f"\n{time.perf_counter() - start:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
