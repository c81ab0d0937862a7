"""The paper-scale run on paper: its stages (DVC's own graph of params.paper.yaml), the fits and FLOPs of each,
the critical path, the wall time the Ray executor would need on 1, 8 and 64 GPUs at a given throughput, and the
peak GPU memory of each stage's fits on 80 and 141 GB cards (lipcore.memory: the estimate fit_many caps its vmap
batches by, with this params file's executor.num_gpus share of the card).

    python bench/paper_plan.py                             # params.paper.yaml, 30 TFLOP/s achieved per GPU
    python bench/paper_plan.py --tflops 40 --gpus 1 8 64 --params params.cpu-study.yaml
    python bench/paper_plan.py --gpu-memory 40 80 --precision fp32

FLOPs per iteration are counted by torch.utils.flop_counter on the meta device (nothing is computed): one
forward and backward of the net at the image size; a mask skips no FLOPs, so every fit of a stage costs the
same per iteration. Fits per stage follow the stage code (stages/evaluate.py, transfer.py, rounds.py,
multi_*.py; gan_*.py: generator latent-steps and the 64 px DIP fits); the deep decoder is counted as a fit
of the full net (it is far smaller: an upper bound). Each stage is placed on one whole GPU; the schedule is
the executor's: ready stages, longest remaining chain first.
"""

from __future__ import annotations

import argparse
import heapq
import shlex
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipcore import memory, methods  # noqa: E402
from lipcore.nets import skeleton  # noqa: E402
from stages.executor import ledger  # noqa: E402
from stages.plumbing.params import Params, load_params  # noqa: E402


def flops_per_iteration(params: Params, size: int | None = None) -> int:
    """One forward + backward of the skip net on one image of `size` (default image_size; meta tensors: counted,
    not run)."""
    from torch.utils.flop_counter import FlopCounterMode

    size = params.image_size if size is None else size
    net = skeleton(params.net)
    z = torch.zeros(1, params.net.in_channels, size, size, device="meta")
    with FlopCounterMode(display=False) as counter:
        net(z).square().mean().backward()
    return counter.get_total_flops()


def gan_flops(params: Params) -> tuple[int, int, int]:
    """FLOPs of the GAN study's units: one latent through the generator forward + backward, forward only, and
    one forward + backward of the DIP skip net on a 64x64 test image (meta tensors: counted, not run)."""
    from torch.utils.flop_counter import FlopCounterMode

    from lipcore.gan import IMAGE_SIZE, LATENT_DIM, DCGANGenerator

    with torch.device("meta"):
        gen = DCGANGenerator()
    counts = []
    for backward in (True, False):
        with FlopCounterMode(display=False) as counter:
            out = gen(torch.zeros(1, LATENT_DIM, device="meta", requires_grad=backward)).square().mean()
            if backward:
                out.backward()
        counts.append(counter.get_total_flops())
    return counts[0], counts[1], flops_per_iteration(params, IMAGE_SIZE)


def gan_stage_flops(kind: str, params: Params, units: tuple[int, int, int]) -> int:
    """FLOPs of a GAN stage, following the stage code (FISTA and the adjoint are matrix products: not counted)."""
    gan, (fwd_bwd, fwd, dip) = params.gan, units
    latents = (gan.in_range + len(gan.faces)) * gan.cs.restarts
    if kind == "gan_imp_round":  # LIP and its random control, each distilled from the dense generator
        return 2 * gan.distill.steps * gan.distill.batch * (fwd_bwd + fwd)
    if kind == "gan_cs":  # dense, then lip, random and rewind at every round
        return (1 + 3 * len(gan.chain)) * gan.cs.iterations * latents * fwd_bwd
    if kind == "gan_robust":  # dense and the last round, least squares and median-of-means
        return 4 * gan.cs.iterations * latents * fwd_bwd
    if kind == "gan_dip":  # the dense DIP and its ticket on every test image
        return 2 * (gan.in_range + len(gan.faces)) * params.gan_dip_fit().iterations * dip
    return 0


def argument(cmd: str, name: str) -> str | None:
    argv = shlex.split(cmd)
    return argv[argv.index(name) + 1] if name in argv else None


def fit_iterations(params: Params, task: str) -> int:
    """Iterations of one round's fits: the search fit (if shorter runs are set) and the evaluation fit."""
    fit = params.fit_for(task).iterations
    search = params.imp.search.iterations
    return fit + (search if search is not None else 0)


def stage_iterations(kind: str, cmd: str, params: Params) -> int:
    """Net-iterations a stage runs (fits x iterations), following the stage code."""
    seeds = len(params.seeds)
    rounds = len(params.imp.chain)
    if kind in ("dense_fit", "imp_round"):
        return fit_iterations(params, argument(cmd, "--task"))
    if kind in ("multi_dense_fit", "multi_imp_round"):
        group = params.multi.groups[argument(cmd, "--group")]
        return fit_iterations(params, params.multi.task) * len(group.train)  # one batch of the group's images
    if kind == "evaluate":
        curves = set(params.evaluate.curve_methods)
        controls = len(methods.controls(params.imp.rewind_iteration))  # reinit (and lip_theta0 with late rewinding)
        per_seed = len(curves) * rounds + len(set(params.evaluate.baselines) - curves) + controls + 1  # + decoder
        return per_seed * seeds * params.fit_for(argument(cmd, "--task")).iterations
    if kind == "transfer":
        pairs = [(i, t) for i in params.images for t in params.tasks]
        measured = sum(params.transfer.measures(s, t) for s in pairs for t in pairs)
        mean_its = sum(params.fit_for(t).iterations for _, t in pairs) / len(pairs)
        return round(measured * seeds * mean_its)
    if kind == "multi_evaluate":
        group = params.multi.groups[argument(cmd, "--group")]
        scored = len(params.multi.rounds or range(1, rounds + 1))
        per_round = len(params.multi.modes) + len(group.train) + 1  # group masks, members' masks, random
        return per_round * scored * len(group.heldout) * seeds * params.fit_for(params.multi.task).iterations
    return 0  # degrade, report: no fit; the GAN stages: gan_stage_flops


def stage_batch(kind: str, cmd: str, params: Params) -> tuple[int, int, int] | None:
    """(members of the stage's largest fit_many call, images per member's z, image size), following the stage code;
    None: no DIP fit (degrade, report, the GAN stages but gan_dip). The deep decoder's fit (evaluate) is far smaller."""
    rounds = len(params.imp.chain)
    if kind in ("dense_fit", "imp_round"):
        return 1, 1, params.image_size
    if kind in ("multi_dense_fit", "multi_imp_round"):  # one member, the group's images as one batch (mode shared)
        return 1, len(params.multi.groups[argument(cmd, "--group")].train), params.image_size
    if kind == "evaluate":  # one call per seed: the curve methods at every round, the other baselines, controls
        curves = set(params.evaluate.curve_methods)
        controls = len(methods.controls(params.imp.rewind_iteration))
        return len(curves) * rounds + len(set(params.evaluate.baselines) - curves) + controls, 1, params.image_size
    if kind == "transfer":  # one call per seed and target: the sources it measures onto it
        pairs = [(i, t) for i in params.images for t in params.tasks]
        most = max(sum(params.transfer.measures(s, t) for s in pairs if s != t) for t in pairs)
        return (most, 1, params.image_size) if most else None
    if kind == "multi_evaluate":  # one call per seed and held-out image: every scored round's masks
        group = params.multi.groups[argument(cmd, "--group")]
        scored = len(params.multi.rounds or range(1, rounds + 1))
        return (len(params.multi.modes) + len(group.train) + 1) * scored, 1, params.image_size
    if kind == "gan_dip":  # the dense DIP and its ticket on every test image, one call
        from lipcore.gan import IMAGE_SIZE

        return 2 * (params.gan.in_range + len(params.gan.faces)), 1, IMAGE_SIZE
    return None


def stage_memory(kind: str, cmd: str, params: Params, precision: str, cards: list[float]) -> dict | None:
    """Per member and peak GPU memory of a stage's fits (lipcore.memory, as fit_many caps its batches), and the
    batches of its largest call on each card (the stage's executor.num_gpus share of it)."""
    batch = stage_batch(kind, cmd, params)
    if batch is None:
        return None
    members, images, size = batch
    net = skeleton(params.net)
    z = (images, params.net.in_channels, size, size)
    fit = params.gan_dip_fit() if kind == "gan_dip" else params.fit_for(argument(cmd, "--task") or params.tasks[0])
    engine = "vmap" if members > 1 else "sequential"
    need = memory.estimate(net, z, fit.es_window, precision, engine).per_member
    share = params.executor.num_gpus if 0 < params.executor.num_gpus <= 1 else 1.0
    out = {"members": members, "per_member": need, "all": members * need}
    for card in cards:
        budget = int(card * 1e9 * share * memory.HEADROOM - memory.RESERVED)
        most = min(memory.cap(need, budget), members)
        out[card] = (len(memory.batches(members, most)), most * need + memory.RESERVED, most * need <= budget)
    return out


def dvc_plan(params_file: Path) -> ledger.Plan:
    """DVC's own graph of the pipeline with `params_file` as params.yaml (a scratch copy of the project)."""
    from dvc.repo import Repo

    scratch = Path(tempfile.mkdtemp(prefix="lip-plan-"))
    try:
        shutil.copy(ROOT / "dvc.yaml", scratch / "dvc.yaml")
        shutil.copy(params_file, scratch / "params.yaml")
        Repo.init(str(scratch), no_scm=True).close()
        with Repo(str(scratch)) as repo:
            return ledger.plan(repo)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def schedule(plan: ledger.Plan, seconds: dict, gpus: int) -> float:
    """Makespan of list scheduling on `gpus` GPUs, one stage per GPU, longest remaining chain (in seconds) first."""
    tail: dict = {}
    dependents: dict = {s: [] for s in plan.stages}
    for stage in plan.stages:
        for up in plan.upstream[stage]:
            dependents[up].append(stage)
    for stage in reversed(plan.stages):
        tail[stage] = seconds[stage] + max((tail[d] for d in dependents[stage]), default=0.0)
    left = {s: len(plan.upstream[s]) for s in plan.stages}
    order = {s: i for i, s in enumerate(plan.stages)}
    ready = [(-tail[s], order[s], s) for s in plan.stages if not left[s]]
    heapq.heapify(ready)
    running: list = []  # (finish time, order, stage)
    now, free = 0.0, gpus
    while ready or running:
        while ready and free:
            _, i, stage = heapq.heappop(ready)
            heapq.heappush(running, (now + seconds[stage], i, stage))
            free -= 1
        now, _, stage = heapq.heappop(running)
        free += 1
        for d in dependents[stage]:
            left[d] -= 1
            if not left[d]:
                heapq.heappush(ready, (-tail[d], order[d], d))
    return now


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=ROOT / "params.paper.yaml")
    ap.add_argument("--tflops", type=float, default=30.0, help="achieved TFLOP/s per GPU (assumed, not measured)")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--gpu-memory", type=float, nargs="+", default=[80, 141], help="GB per card")
    ap.add_argument("--precision", choices=("fp32", "bf16"), help="default: fit.precision ('auto': bf16, CUDA's)")
    args = ap.parse_args()
    params = load_params(args.params)
    plan = dvc_plan(args.params)
    per_iteration = flops_per_iteration(params)
    rate = args.tflops * 1e12
    kinds = {s: s.name.split("@")[0] for s in plan.stages}
    its = {s: stage_iterations(kinds[s], s.cmd, params) for s in plan.stages}
    units = gan_flops(params)
    flops = {s: its[s] * per_iteration + gan_stage_flops(kinds[s], params, units) for s in plan.stages}
    seconds = {s: flops[s] / rate for s in plan.stages}
    count, fits, kind_flops = Counter(kinds.values()), Counter(), Counter()
    for s in plan.stages:
        fits[kinds[s]] += its[s]
        kind_flops[kinds[s]] += flops[s]
    print(
        f"{args.params.name}: {len(plan.stages)} stages; {per_iteration / 1e9:.1f} GFLOP per iteration "
        f"({params.image_size} px, {params.net.channels_down[0]}-channel net); at {args.tflops:g} TFLOP/s per GPU\n"
    )
    print("| stage | count | net-iterations (DIP) | GPU-hours |")
    print("|---|---|---|---|")
    for kind in count:
        hours = kind_flops[kind] / rate / 3600
        print(f"| {kind} | {count[kind]} | {fits[kind]:,} | {hours:.2f} |")
    total = sum(seconds.values())
    chain = schedule(plan, seconds, gpus=len(plan.stages))  # unlimited GPUs: the critical path
    print(
        f"\ntotal {sum(its.values()):,} DIP net-iterations and the GAN study = "
        f"{sum(flops.values()) / 1e18:.2f} EFLOP = "
        f"{total / 3600:.1f} GPU-hours; critical path {chain / 3600:.1f} h\n"
    )
    print("| GPUs | wall time (h) | speed-up vs 1 GPU |")
    print("|---|---|---|")
    one = schedule(plan, seconds, 1)
    for g in args.gpus:
        wall = schedule(plan, seconds, g)
        print(f"| {g} | {wall / 3600:.1f} | {one / wall:.1f}x |")

    precision = args.precision or ("bf16" if params.fit.precision == "auto" else params.fit.precision)
    share = params.executor.num_gpus if 0 < params.executor.num_gpus <= 1 else 1.0
    cards = args.gpu_memory
    print(
        f"\nGPU memory ({precision}; each stage gets {share:g} of a card, executor.num_gpus; peak: the largest "
        f"fit_many call, in batches of what the budget holds, + {memory.RESERVED / 1e9:.1f} GB reserved)\n"
    )
    print(
        "| stage | members per call | GB per member | GB in one batch | "
        + " | ".join(f"{c:g} GB card" for c in cards)
        + " |"
    )
    print("|---|---|---|---|" + "---|" * len(cards))
    done: set = set()
    for s in plan.stages:
        if kinds[s] in done:
            continue
        done.add(kinds[s])
        m = stage_memory(kinds[s], s.cmd, params, precision, cards)
        if m is None:
            continue
        cells = []
        for c in cards:
            n, peak, fits = m[c]
            cells.append(f"{n} batch{'es' if n > 1 else ''}, peak {peak / 1e9:.1f} GB" + ("" if fits else " (too big)"))
        print(
            f"| {kinds[s]} | {m['members']} | {m['per_member'] / 1e9:.2f} | {m['all'] / 1e9:.1f} | "
            + " | ".join(cells)
            + " |"
        )


if __name__ == "__main__":
    main()
