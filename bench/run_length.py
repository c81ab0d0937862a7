"""How long must a study's fits run? A pilot of dense DIP fits on images the study does not use.

Each (image, task, seed) is fitted dense, as the study's round 0 would be (its net, fit and degradation from a
params file), but for a long cap, tracking the oracle best and the ES-WMV detection. Per task it prints where
the oracle best fell and the shortest run length L (a multiple of --step) in which the peak falls before
--before x L in at least --share of the fits: the rule the study's own "Run length" check applies afterwards.
Noise-free tasks (inpainting, SR) may never peak: their PSNR keeps creeping up. For them it also prints the
shortest L whose last (1 - --before) part gains less than --flat dB in at least --share of the fits (a plateau:
running longer would change little), read from each fit's best PSNR so far at every multiple of --step (`best_every`).

    python bench/run_length.py --params params.transfer-study.yaml --cap 3000 \\
        --images ../shared/data/set14/monarch.png ../shared/data/set14/pepper.png --seeds 0 1 --json pilot.json

Run two at once with OMP_NUM_THREADS=1 and half the images each on a 2-core machine; --json files merge with
--merge a.json b.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lipcore import io  # noqa: E402
from lipcore.physics import make_problem  # noqa: E402
from lipcore.runtime import tune_cpu_allocator  # noqa: E402
from lipcore.seeding import generator  # noqa: E402
from lipcore.trials import Trial, initialisation, train_and_score  # noqa: E402
from stages.plumbing.params import load_params  # noqa: E402
from stages.plumbing.retrain import fit_stream  # noqa: E402


def shortest_length(peaks: list[int], before: float, share: float, step: int) -> int:
    """The smallest multiple of `step` whose first `before` part holds the peaks of at least `share` of the fits."""
    need = math.ceil(share * len(peaks))
    cut = sorted(peaks)[need - 1]  # the need-th smallest peak must fall at or before before * L
    return step * math.ceil(cut / before / step)


def plateau_length(curves: list[list[float]], before: float, share: float, step: int, flat: float) -> int | None:
    """The smallest multiple of `step` (within the curves: the PSNR at step, 2 step, ...) at which the best PSNR so far
    gained less than `flat` dB over the run's last (1 - before) part in at least `share` of the fits; None if none
    within the curves."""
    need = math.ceil(share * len(curves))
    best = [list(itertools.accumulate(c, max)) for c in curves]  # the best so far: robust to the PSNR's jitter
    first = math.ceil(1 / (1 - before) - 1e-9)  # shorter runs have no point of the curve inside their last part
    for k in range(first, min(len(c) for c in curves) + 1):
        start = round(before * k)  # the multiple of step nearest before * L (curve index start - 1)
        gains = [b[k - 1] - b[start - 1] for b in best]
        if sum(g < flat for g in gains) >= need:
            return k * step
    return None


def best_every(history: dict, column: str, step: int) -> list[float]:
    """The best of the history's `column` over the logged iterations up to each multiple of `step`."""
    its, values = [int(i) for i in history["iteration"]], [float(v) for v in history[column]]
    out, j, best = [], 0, -math.inf
    for target in range(step, its[-1] + 1, step):
        while j < len(its) and its[j] <= target:
            best = max(best, values[j])
            j += 1
        out.append(round(best, 3))
    return out


def at_fractions(history: dict, column: str, fractions: tuple[float, ...] = (0.25, 0.5, 0.8, 1.0)) -> dict:
    """The history's `column` at the logged iteration nearest each fraction of the last one."""
    its, values = list(history["iteration"]), list(history[column])
    out = {}
    for f in fractions:
        target = f * its[-1]
        i = min(range(len(its)), key=lambda j: abs(its[j] - target))
        out[f"{f:g}"] = round(float(values[i]), 3)
    return out


def pilot(args: argparse.Namespace) -> list[dict]:
    params = load_params(args.params)
    rows = []
    for path in args.images:
        name = Path(path).stem
        image = io.load_image(path, channels=3)
        x_true = io.center_crop_to(image, params.image_size, params.image_size)[None]
        for task in args.tasks or params.tasks:
            degradation = params.task(task).degradation
            if degradation.mask is not None:
                raise SystemExit(f"task {task} reads a mask file; the pilot draws random masks only")
            problem = make_problem(x_true, degradation, generator(params.seed, "pilot", name, task))
            fit_cfg = replace(params.fit_for(task), iterations=args.cap, es_stop=False)
            if args.lr is not None:
                fit_cfg = replace(fit_cfg, lr=args.lr)
            for seed in args.seeds:
                theta0, z = initialisation(params.net, params.seed, seed, params.image_size, params.image_size)
                trial = Trial(theta0, z, problem, None, fit_stream(params.seed, seed), f"{name}-{task} s{seed}")
                start = time.perf_counter()
                (outcome,) = train_and_score(params.net, [trial], fit_cfg, "blind", None, params.device)
                res = outcome.result
                peak = res.oracle["ema" if fit_cfg.ema_weight > 0 else "out"]  # the reported output's peak
                column = "psnr_ema" if fit_cfg.ema_weight > 0 else "psnr_out"
                rows.append(
                    {
                        "image": name,
                        "task": task,
                        "seed": seed,
                        "cap": args.cap,
                        "lr": fit_cfg.lr,
                        "peak": peak.iteration,
                        "peak_psnr": round(peak.psnr, 3),
                        "es_iteration": res.es_iteration,
                        "es_detected": res.es_detected,
                        "seconds": round(time.perf_counter() - start, 1),
                        # the reported output's PSNR at a quarter, half, 80% and all of the cap: how flat the peak is
                        "psnr_at": at_fractions(res.history, column),
                        "best_every": best_every(res.history, column, args.step),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows: list[dict], before: float, share: float, step: int, flat: float) -> None:
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        peaks = sorted(r["peak"] for r in mine)
        detected = [r["es_detected"] for r in mine]
        length = shortest_length(peaks, before, share, step)
        print(
            f"{task}: {len(mine)} fits, oracle peak min / median / max {peaks[0]} / {peaks[len(peaks) // 2]} / "
            f"{peaks[-1]} of {mine[0]['cap']}; ES-WMV detected in {sum(d is not None for d in detected)} "
            f"(at {sorted(d for d in detected if d is not None)}); "
            f"shortest L with the peak before {before:.0%} of L in >= {share:.0%} of fits: {length}"
        )
        curves = [r["best_every"] for r in mine if "best_every" in r]
        if len(curves) == len(mine):
            flat_at = plateau_length(curves, before, share, step, flat)
            print(
                f"{task}: shortest L gaining < {flat:g} dB over its last {1 - before:.0%} in >= {share:.0%} of fits: "
                f"{flat_at if flat_at is not None else f'beyond {min(len(c) for c in curves) * step}'}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--images", nargs="*", default=[])
    ap.add_argument("--tasks", nargs="*", help="default: the params file's tasks")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--cap", type=int, default=3000)
    ap.add_argument("--lr", type=float, help="override the params file's learning rate")
    ap.add_argument("--before", type=float, default=0.8)
    ap.add_argument("--share", type=float, default=0.9)
    ap.add_argument("--step", type=int, default=100)
    ap.add_argument("--flat", type=float, default=0.1, help="dB: the plateau rule's largest gain over the last part")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--merge", type=Path, nargs="*", help="summarise these --json files instead of fitting")
    args = ap.parse_args()
    if args.merge:
        rows = [r for path in args.merge for r in json.loads(path.read_text())]
    else:
        tune_cpu_allocator()
        rows = pilot(args)
        if args.json:
            io.write_json(args.json, rows)
    summary(rows, args.before, args.share, args.step, args.flat)


if __name__ == "__main__":
    main()
