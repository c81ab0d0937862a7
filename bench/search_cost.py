"""Ticket-search compute vs PSNR at the target sparsity: the table behind the imp.search knobs.

For every image x task x seed of a params file (default: params.yaml) and every search setting below, find
the ticket at the target sparsity's round with lipcore.lottery.find_ticket (the same observations, theta_0,
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
import tempfile
import time
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipcore.config import SearchConfig  # noqa: E402
from lipcore.lottery import find_ticket, train_and_score  # noqa: E402
from lipcore.seeding import derive_seed  # noqa: E402
from stages import common  # noqa: E402
from stages.degrade import main as degrade  # noqa: E402
from stages.evaluate import headline_round  # noqa: E402

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
    params = common.load_params(args.params)
    if args.seeds:
        params["seeds"] = args.seeds
    rounds = headline_round(params)
    net_cfg, prune_cfg = common.net_cfg(params), common.prune_cfg(params)
    protocol, device, shown = (
        common.protocol(params),
        common.device(params),
        common.shown_point(common.protocol(params)),
    )
    rows = []  # one per setting x problem x seed
    start_time = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for image in params["images"]:
            for task in params["tasks"]:
                obs = Path(tmp) / common.pair_id(image, task)
                degrade(
                    ["--params", args.params, "--image", str(ROOT / "data" / f"{image}.png"), "--name", image]
                    + ["--task", task, "--out", str(obs)]
                )
                problem = common.load_problem(obs)
                fit_cfg = common.fit_cfg(params, task, rewind_iteration=common.rewind_iteration(params))
                for seed in params["seeds"]:
                    theta0, z = common.initial_net(params, seed, *problem.x_true.shape[-2:])
                    fit_seed = derive_seed(params["seed"], "fit", seed)
                    for name in args.settings:
                        ticket = find_ticket(
                            net_cfg,
                            theta0,
                            z,
                            problem,
                            fit_cfg,
                            protocol,
                            prune_cfg,
                            rounds,
                            fit_seed,
                            device,
                            SETTINGS[name],
                        )
                        scored = train_and_score(
                            net_cfg,
                            ticket.start,
                            z,
                            problem,
                            common.fit_cfg(params, task),
                            protocol,
                            ticket.mask,
                            fit_seed,
                            device,
                        )
                        rows.append(
                            {
                                "setting": name,
                                "problem": common.pair_id(image, task),
                                "seed": seed,
                                "search_iterations": ticket.search_iterations,
                                "psnr": scored.scores[shown]["psnr"],
                                "oracle_psnr": scored.scores["oracle_best"]["psnr"],
                            }
                        )
                        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(table(rows, args.settings, rounds, shown, params))
    print(f"({time.perf_counter() - start_time:.0f} s)")


def table(rows: list[dict], settings: list[str], rounds: int, shown: str, params: dict) -> str:
    problems = sorted({r["problem"] for r in rows})
    by = {(r["setting"], r["problem"], r["seed"]): r for r in rows}
    seeds = params["seeds"]
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
