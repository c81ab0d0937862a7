"""What an OES mask search costs beside IMP's search, on one problem of a params file (default: params.yaml).

IMP's search at the headline round K is K fits of the run length (rounds 0..K-1: each round's fit gives the
weights the next prunes); OES's is evaluate.oes.steps_per_iteration x the run length steps of the mask search
(lipcore.oes.search: a forward and backward through theta_0 * relaxed mask per step). Both are timed here,
interleaved (an OES search, then one IMP fit, `--repeats` times; medians), on one thread:

    OMP_NUM_THREADS=1 python bench/oes_cost.py --image f16 --task denoise

Prints a markdown table: steps / iterations, seconds per step, total seconds of each search and the ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipcore import io, prune  # noqa: E402
from lipcore.fit import FitJob, fit_many  # noqa: E402
from lipcore.imp import headline_round, nominal_sparsity  # noqa: E402
from lipcore.nets import net_from_state  # noqa: E402
from lipcore.oes import search  # noqa: E402
from lipcore.physics import make_problem  # noqa: E402
from lipcore.seeding import generator  # noqa: E402
from lipcore.trials import initialisation  # noqa: E402
from stages.plumbing import layout  # noqa: E402
from stages.plumbing.params import load_params  # noqa: E402


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--image", default="f16")
    ap.add_argument("--task", default="denoise")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = load_params(args.params)
    x_true = io.center_crop_to(
        io.load_image(ROOT / layout.image_file(args.image), channels=3), *[params.image_size] * 2
    )
    degradation = params.task(args.task).degradation
    problem = make_problem(x_true[None], degradation, generator(params.seed, "degrade", args.image, args.task))
    fit_cfg = params.fit_for(args.task)
    theta0, z = initialisation(params.net, params.seed, 0, *x_true.shape[-2:])
    k = headline_round(params.sparsity, params.imp)
    names = list(prune.prunable(net_from_state(params.net, theta0)))
    total = sum(theta0[n].numel() for n in names)
    kept = prune.round_count(1.0 - nominal_sparsity(params.imp.fraction, k), total)
    steps = params.evaluate.oes.steps(fit_cfg.iterations)
    oes_s, fit_s = [], []
    for r in range(args.repeats):
        t = time.perf_counter()
        search(
            params.net, theta0, z, problem, names, kept, params.evaluate.oes, steps, torch.Generator().manual_seed(r)
        )
        oes_s.append(time.perf_counter() - t)
        job = FitJob(net_from_state(params.net, theta0), z, problem.op, problem.y, problem.x_true, seed=r)
        t = time.perf_counter()
        fit_many([job], fit_cfg, device="cpu")
        fit_s.append(time.perf_counter() - t)
    oes, one_fit = statistics.median(oes_s), statistics.median(fit_s)
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"{cpu_name()}, torch CPU capability {capability}, 1 thread, torch {torch.__version__}")
    sparsity = nominal_sparsity(params.imp.fraction, k)
    print(f"{args.image}-{args.task}, {params.image_size} px, headline round {k} ({sparsity:.1%})")
    print()
    print("| search | length | s per step | total s | vs IMP |")
    print("|---|---|---|---|---|")
    per_it = one_fit / fit_cfg.iterations
    print(
        f"| IMP (rounds 0-{k - 1}) | {k} x {fit_cfg.iterations} iterations | {per_it:.4f} | {k * one_fit:.1f} | 1.00 |"
    )
    print(f"| OES | {steps} steps | {oes / steps:.4f} | {oes:.1f} | {oes / (k * one_fit):.2f} |")


if __name__ == "__main__":
    main()
