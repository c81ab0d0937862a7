"""Ticket-search compute vs PSNR at the target sparsity: the table behind the imp.search knobs.

For every image x task x seed of a params file (default: params.yaml) and every search setting below, find
the ticket at the target sparsity's round with lipcore.imp.find_ticket (the same observations, theta_0,
z and seeds as the pipeline), then train it with the full evaluation fit and score it. Search compute is
the iterations of the search fits of rounds 0..K-1 (every iteration costs the same: masks do not skip
FLOPs); the ticket's own evaluation fit is the same for every setting and not counted.

    python bench/search_cost.py                      # default params: 2 images x 2 tasks x 2 seeds
    python bench/search_cost.py --settings default short100 early_bird --seeds 0 1 2 3

Writes bench/out/search_cost.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipcore import io  # noqa: E402
from lipcore.config import SearchConfig  # noqa: E402
from lipcore.imp import find_ticket, headline_round  # noqa: E402
from lipcore.physics import make_problem  # noqa: E402
from lipcore.runtime import tune_cpu_allocator  # noqa: E402
from lipcore.schema import derive  # noqa: E402
from lipcore.scoring import shown_point  # noqa: E402
from lipcore.seeding import generator  # noqa: E402
from lipcore.trials import Trial, initialisation, search_problem, train_and_score  # noqa: E402
from stages.plumbing import layout  # noqa: E402
from stages.plumbing.params import load_params  # noqa: E402
from stages.plumbing.retrain import fit_stream  # noqa: E402

SETTINGS = {
    "default": SearchConfig(),
    "short150": SearchConfig(iterations=150),
    "short100": SearchConfig(iterations=100),
    "short75": SearchConfig(iterations=75),
    "early_bird": SearchConfig(early_bird=0.01, early_bird_every=10, early_bird_patience=3),
    "early_bird_strict": SearchConfig(early_bird=0.006, early_bird_every=10, early_bird_patience=3),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--seeds", type=int, nargs="+", help="initialisation indices (default: the params' seeds)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "search_cost.json"))
    args = ap.parse_args()
    tune_cpu_allocator()
    params = load_params(args.params)
    seeds = args.seeds or list(params.seeds)
    rounds = headline_round(params.sparsity, params.imp)
    shown = shown_point(params.protocol)
    rows = []  # one per setting x problem x seed
    start_time = time.perf_counter()
    for image in params.images:
        for task in params.tasks:
            # the pipeline's observation (stages.degrade draws it from the same generator)
            x_true = io.center_crop_to(
                io.load_image(ROOT / layout.image_file(image), channels=3), *[params.image_size] * 2
            )
            degradation = params.task(task).degradation
            mask = io.load_mask_image(ROOT / degradation.mask, *x_true.shape[-2:]) if degradation.mask else None
            problem = make_problem(x_true[None], degradation, generator(params.seed, "degrade", image, task), mask)
            fit_cfg = params.fit_for(task)
            for seed in seeds:
                theta0, z = initialisation(params.net, params.seed, seed, *x_true.shape[-2:])
                fit_seed = fit_stream(params.seed, seed)
                for name in args.settings:
                    imp = derive(params.imp, search=SETTINGS[name])
                    searched = search_problem(problem, params.protocol)
                    ticket = find_ticket(params.net, theta0, z, searched, fit_cfg, imp, rounds, fit_seed, params.device)
                    trial = Trial(ticket.start, z, problem, ticket.mask, fit_seed)
                    (scored,) = train_and_score(params.net, [trial], fit_cfg, params.protocol, None, params.device)
                    rows.append(
                        {
                            "setting": name,
                            "problem": layout.pair_id(image, task),
                            "seed": seed,
                            "search_iterations": ticket.search_iterations,
                            "psnr": scored.scores[shown]["psnr"],
                            "oracle_psnr": scored.scores["oracle_best"]["psnr"],
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(table(rows, args.settings, rounds, shown, seeds))
    print(f"({time.perf_counter() - start_time:.0f} s)")


def table(rows: list[dict], settings: list[str], rounds: int, shown: str, seeds: list[int]) -> str:
    problems = sorted({r["problem"] for r in rows})
    by = {(r["setting"], r["problem"], r["seed"]): r for r in rows}
    base = "default" if "default" in settings else settings[0]
    base_cost = mean(sum(r["search_iterations"]) for r in rows if r["setting"] == base)

    def mean_over_seeds(setting: str, problem: str, key: str) -> float:
        return mean(by[(setting, problem, s)][key] for s in seeds)

    head = (
        f"| setting | search iterations (rounds 0-{rounds - 1}) | compute vs {base} | PSNR {shown} | "
        f"delta {shown} | oracle PSNR | delta oracle | " + " | ".join(f"delta {p}" for p in problems) + " |"
    )
    lines = [head, "|" + "---|" * (7 + len(problems))]
    for setting in settings:
        cost = mean(sum(r["search_iterations"]) for r in rows if r["setting"] == setting)
        cells = [setting, f"{cost:.0f}", f"{cost / base_cost:.2f}"]
        for key in ("psnr", "oracle_psnr"):
            value = mean(mean_over_seeds(setting, p, key) for p in problems)
            ref = mean(mean_over_seeds(base, p, key) for p in problems)
            cells += [f"{value:.2f}", f"{value - ref:+.2f}"]
        cells += [f"{mean_over_seeds(setting, p, 'psnr') - mean_over_seeds(base, p, 'psnr'):+.2f}" for p in problems]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
