"""Stage evaluate: one image x task. Curves over all IMP rounds, and the headline at the target sparsity.

Headline: LIP (the first round whose nominal sparsity reaches `sparsity`) vs the baselines of
evaluate.baselines (random masks with exactly the same number of weights removed, globally and layer-wise
matched; SNIP one-shot, at LIP's per-layer counts, iterative) vs the dense DIP vs a deep decoder with about
as many parameters as the LIP net keeps, all from the same theta_0 (the rewind state); and the lottery-ticket
controls, the LIP mask from a fresh theta_0 (reinit) or, with late rewinding, from theta_0 (lip_theta0).
Scored at the oracle best, the last iterate and the ES-WMV stop; mean +- std over seeds, and every value
per seed (results.json) for the report's paired statistics.

    python -m stages.evaluate --name f16 --task denoise --obs outs/degrade/f16-denoise \
        --rounds outs/rounds/f16-denoise --out outs/evaluate/f16-denoise --metrics metrics/f16-denoise.json \
        --sparsity-plot plots/sparsity/f16-denoise.csv --iteration-plot plots/iteration/f16-denoise.csv \
        --grid-plot plots/grids/f16-denoise.png
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor

from lipcore import io, prune
from lipcore.baselines import baseline_mask, matched_decoder
from lipcore.imp import headline_round, nominal_sparsity
from lipcore.nets import build_net, make_input
from lipcore.physics import Problem
from lipcore.prune import Mask, sparsity
from lipcore.scoring import reported_images, shown_point, summarise
from lipcore.seeding import derive_seed, generator
from lipcore.trials import Trial, fresh_initialisation, train_and_score

from .plumbing import artifacts, entry, layout, live
from .plumbing.params import Params, load_params
from .reporting import figures

log = logging.getLogger(__name__)


@live.watches_fits
def main(argv: list[str] | None = None) -> None:
    ap = entry.parser(__doc__)
    ap.add_argument("--name", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--obs", type=Path, required=True)
    ap.add_argument("--rounds", type=Path, required=True, help="the problem's rounds directory (s<seed>/r<round>)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--metrics",
        type=entry.output_file(".json", ("round", "methods")),
        required=True,
        help="the headline's full record (JSON; metrics/headline.json holds what DVC compares)",
    )
    ap.add_argument(
        "--sparsity-plot",
        type=entry.output_file(".csv", ("sparsity", "psnr", "series")),
        required=True,
        help="CSV: PSNR vs sparsity per method",
    )
    ap.add_argument(
        "--iteration-plot",
        type=entry.output_file(".csv", ("iteration", "psnr", "series")),
        required=True,
        help="CSV: PSNR vs iteration, with each fit's ES-WMV stop",
    )
    ap.add_argument("--grid-plot", type=entry.output_file(".png"), required=True, help="PNG: the image grid")
    args = entry.start(ap, argv)
    layout.EVALUATE_OUT.check(args.out)  # before any work: never replace a folder given by mistake
    params = load_params(args.params)
    imp = params.imp
    head = headline_round(params.sparsity, imp)
    rounds = [0, *imp.rounds]
    fit_cfg = params.fit_for(args.task)
    problem = artifacts.load_problem(args.obs, params.task(args.task).degradation, args.name)
    first = params.seeds[0]
    iteration_rows = iteration_plot_rows(args.rounds, first, head)  # reads histories: fails before any fit
    curve_methods = list(params.evaluate.curve_methods)
    shown = shown_point(params.protocol)
    pid = layout.pair_id(args.name, args.task)  # names the fits and the plots

    controls = lottery_controls(imp.rewind_iteration) if head > 0 else ()
    curves: dict[str, dict[int, list[dict]]] = {m: {} for m in ["lip", *curve_methods]}
    baselines = list(params.evaluate.baselines)
    headline: dict[str, list[dict]] = {m: [] for m in ["dense", "lip", *baselines, *controls, "decoder"]}
    effective: list[float] = []
    images: dict[str, Any] = {}
    for seed in params.seeds:
        start, z = artifacts.load_rewind(layout.round_dir(args.rounds, seed, 0), params.net)
        fit_seed = derive_seed(params.seed, "fit", seed)
        # The baseline fits of this seed share the architecture and the problem: one batched fit (on GPU).
        planned: list[tuple[str, int, dict[str, Tensor], Mask]] = []
        for k in rounds:
            m = artifacts.read_fit_metrics(layout.round_dir(args.rounds, seed, k), k)
            curves["lip"].setdefault(k, []).append(m)
            if k == head:
                headline["lip"].append(m)
                effective.append(m["sparsity"]["effective"])
            if k == 0:
                headline["dense"].append(m)
                continue
            lip_mask = artifacts.load_round_mask(layout.round_dir(args.rounds, seed, k), params.net, k)
            if k == head:
                head_mask = lip_mask  # the deep decoder below is sized to it
            methods = set(curve_methods) | (set(baselines) if k == head else set())
            for method in sorted(methods):
                gen = generator(params.seed, method, args.name, args.task, seed, k)
                mask = baseline_mask(method, params.net, start, z, problem, lip_mask, gen, params.device)
                planned.append((method, k, start, mask))
        for method in controls:  # the LIP mask itself, from another start
            planned.append((method, head, control_start(method, params, args.rounds, seed), head_mask))
        log.info("seed %s: fitting %d baseline masks", seed, len(planned))
        trials = [
            Trial(begin, z, problem, mask, fit_seed, label=f"{pid} s{seed} r{k} {method}")
            for method, k, begin, mask in planned
        ]
        outcomes = train_and_score(params.net, trials, fit_cfg, "blind", None, params.device) if trials else []
        for (method, k, _, mask), res in zip(planned, outcomes):
            scores = {**res.scores, "sparsity": {"effective": sparsity(mask)}}
            scores["collapsed_layers"] = prune.collapsed_layers(mask)
            if method in curves:
                curves[method].setdefault(k, []).append(scores)
            if k == head:
                headline[method].append(scores)
                if seed == params.seeds[0]:
                    images[method] = reported_images(res.result, fit_cfg)[shown]
        if head > 0:
            log.info("seed %s: fitting the deep decoder", seed)
            scores, image = fit_decoder(params, args.task, head_mask, problem, seed, f"{pid} s{seed} decoder")
            headline["decoder"].append(scores)
            if seed == params.seeds[0]:
                images["decoder"] = image[shown]

    summary = {
        "image": args.name,
        "task": args.task,
        "protocol": params.protocol,
        "shown_point": shown,
        "headline": {
            "target_sparsity": params.sparsity,
            "round": head,
            "nominal_sparsity": nominal_sparsity(imp.fraction, head),
            "effective_sparsity": sum(effective) / len(effective),
            "methods": {m: summarise(v) for m, v in headline.items() if v},
        },
        "curves": {
            m: [
                {
                    "round": k,
                    "nominal_sparsity": nominal_sparsity(imp.fraction, k),
                    "effective_sparsity": sum(s["sparsity"]["effective"] for s in v) / len(v),
                    **summarise(v),
                }
                for k, v in sorted(by_round.items())
            ]
            for m, by_round in curves.items()
        },
    }
    sparsity_rows = sparsity_plot_rows(summary["curves"], shown)
    with layout.EVALUATE_OUT.write(args.out) as tmp:
        artifacts.write_numerics(tmp, params.device, fit_cfg)
        per_seed_curves = {m: {str(k): v for k, v in sorted(by_round.items())} for m, by_round in curves.items()}
        record = {"summary": summary, "per_seed": headline, "per_seed_curves": per_seed_curves}
        io.write_json(tmp / layout.RESULTS, record)
        shutil.copy(args.obs / layout.CLEAN_PNG, tmp / layout.method_png("clean"))
        shutil.copy(args.obs / layout.DEGRADED_PNG, tmp / layout.method_png("degraded"))
        for method, k in (("dense", 0), ("lip", head)):
            shutil.copy(
                layout.round_dir(args.rounds, first, k) / layout.output_png(shown), tmp / layout.method_png(method)
            )
        for method, img in images.items():
            io.save_png(img, tmp / layout.method_png(method))
    io.write_json(args.metrics, summary["headline"])
    for path, rows, columns in (
        (args.sparsity_plot, sparsity_rows, SPARSITY_COLUMNS),
        (args.iteration_plot, iteration_rows, ITERATION_COLUMNS),
    ):  # `plot` heads the chart (.dvc/plots templates): which image-task it is
        artifacts.write_csv(path, [{**row, "plot": pid} for row in rows], [*columns, "plot"])
    figures.grid(args.out, f"{pid} ({shown})", args.grid_plot)


def lottery_controls(rewind_iteration: int) -> tuple[str, ...]:
    """The lottery-ticket controls of the headline LIP mask (Frankle & Carbin 2019; Frankle et al. 2020).

    reinit: the mask trained from a fresh theta_0 (a draw no LIP run uses): if it matches LIP, the ticket's
    value is in the mask, not in its initialisation. lip_theta0 (late rewinding only): the mask trained from
    theta_0 instead of the rewind weights. The "shuffled" control (the mask permuted within each layer) is
    the random_layer baseline.
    """
    return ("reinit", "lip_theta0") if rewind_iteration > 0 else ("reinit",)


def control_start(method: str, params: Params, rounds: Path, seed: int) -> dict[str, Tensor]:
    """The weights a control trains the LIP mask from."""
    if method == "reinit":
        return fresh_initialisation(params.net, params.seed, seed)
    if method == "lip_theta0":
        return artifacts.load_init(layout.round_dir(rounds, seed, 0))[0]
    raise ValueError(f"unknown control {method!r}")


def fit_decoder(
    params: Params, task: str, lip_mask: Mask, problem: Problem, seed: int, label: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The deep decoder with about as many parameters as the LIP net of `lip_mask` keeps: scores, images."""
    dec_cfg = matched_decoder(params.net, lip_mask, params.evaluate.decoder_layers)
    dec = build_net(dec_cfg, generator(params.seed, "decoder", seed))
    z_dec = make_input(dec, *problem.x_true.shape[-2:], generator(params.seed, "decoder_z", seed))
    dec_fit = params.fit_for(task, reg_noise_std=0.0)  # the deep decoder uses no input noise
    trial = Trial(dec.state_dict(), z_dec, problem, None, derive_seed(params.seed, "fit", seed), label)
    (res,) = train_and_score(dec_cfg, [trial], dec_fit, "blind", None, params.device)
    parameters = sum(p.numel() for p in dec.parameters())
    scores = {**res.scores, "channels": dec_cfg.decoder_channels, "parameters": parameters}
    return scores, reported_images(res.result, dec_fit)


SPARSITY_COLUMNS = ("sparsity", "psnr", "series")


def sparsity_plot_rows(curves: dict[str, list[dict]], shown: str) -> list[dict[str, Any]]:
    """PSNR (mean over seeds, at the shown point) vs nominal sparsity, long format: one row per method and round,
    each method's curve starting at the dense net (round 0), and the dense net's level as a flat `dense` series
    (the line every pruned curve is judged against)."""
    dense = next(p for p in curves["lip"] if p["round"] == 0)[f"{shown}_psnr"]["mean"]
    levels = sorted({round(p["nominal_sparsity"], 6) for points in curves.values() for p in points} | {0.0})
    rows = [{"sparsity": x, "psnr": dense, "series": "dense"} for x in levels]
    for method, points in curves.items():
        by_x = {round(p["nominal_sparsity"], 6): p[f"{shown}_psnr"]["mean"] for p in points}
        by_x[0.0] = dense  # round 0 is the dense net, for every method
        rows += [{"sparsity": x, "psnr": v, "series": method} for x, v in sorted(by_x.items())]
    return rows


ITERATION_COLUMNS = ("iteration", "psnr", "series", "es_stop")


def iteration_plot_rows(rounds: Path, seed: int, head: int) -> list[dict[str, Any]]:
    """PSNR of the reported output vs iteration for the dense fit and the LIP fit at the headline round (first
    seed), one row per logged iteration and fit, each carrying that fit's ES-WMV stop (the plot marks it).

    Long format, so that fits of different lengths (fit.es_stop) need no empty cells.
    """
    rows: list[dict[str, Any]] = []
    for name, k in (("dense", 0), ("lip", head)):
        round_dir = layout.round_dir(rounds, seed, k)
        hist = artifacts.read_history(round_dir)
        fit = artifacts.read_fit_metrics(round_dir, k)
        column = hist["psnr_ema" if fit["output"] == "ema" else "psnr_out"]
        stop = fit["es"]["iteration"]
        for it, value in zip(hist["iteration"], column):
            rows.append({"iteration": int(it), "psnr": value, "series": name, "es_stop": stop})
    return rows


if __name__ == "__main__":
    entry.run(main)
