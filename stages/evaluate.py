"""Stage evaluate: one image x task. Curves over all IMP rounds, and the headline at the target sparsity.

Headline: LIP (the first round whose nominal sparsity reaches `sparsity`) vs the baselines of
evaluate.baselines (methods of lipcore.methods, whose entries make their masks and starts: random masks with
exactly the same number of weights removed, globally and layer-wise matched; SNIP one-shot, at LIP's per-layer
counts, iterative) vs the dense DIP vs a deep decoder with about as many parameters as the LIP net keeps, all
from the same theta_0 (the rewind state); and the lottery-ticket controls of lipcore.methods, the LIP mask from a
fresh theta_0 (reinit) or, with late rewinding, from theta_0 (lip_theta0). Every mask is retrained by
stages.plumbing.retrain, on the fit stream of the seed's IMP rounds.
Scored at the oracle best, the last iterate and the ES-WMV stop; mean +- std over seeds, and every value
per seed (results.json) for the report's paired statistics.

    python -m stages.evaluate --name f16 --task denoise --obs outs/degrade/f16-denoise \
        --rounds outs/rounds/f16-denoise --out outs/evaluate/f16-denoise --metrics metrics/f16-denoise.json \
        --sparsity-plot plots/sparsity/f16-denoise.csv --iteration-plot plots/iteration/f16-denoise.csv \
        --grid-plot plots/grids/f16-denoise.png
"""

from __future__ import annotations

import argparse
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from lipcore import io, methods, prune
from lipcore.baselines import matched_decoder, nonzero_parameters
from lipcore.config import FitConfig
from lipcore.imp import headline_round, nominal_sparsity
from lipcore.nets import build_net, make_input
from lipcore.physics import Problem
from lipcore.prune import Mask, sparsity
from lipcore.scoring import reported_images, shown_point, summarise
from lipcore.seeding import generator
from lipcore.trials import Outcome

from .plumbing import artifacts, channel_tickets, entry, layout, live, long_run, resume
from .plumbing.params import Params, load_params
from .plumbing.retrain import retrain
from .reporting import figures

log = logging.getLogger(__name__)


@live.watches_fits
def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    layout.EVALUATE_OUT.check(args.out)  # before any work: never replace a folder given by mistake
    run = plan(args, load_params(args.params))
    iteration_rows = iteration_plot_rows(args.rounds, run.params.seeds[0], run.head)  # fails before any fit
    saved, seeds_done = resume.checkpoint(args.out, resume_key(run)), []
    tally = Tally.empty(run)
    if (earlier := saved.load()) is not None:  # a stopped run's finished seeds (stages/plumbing/resume.py)
        seeds_done, tally = earlier.done, earlier.state
        log.info("seeds %s: read from the stopped run's %s", seeds_done, saved.path)
    for seed in run.params.seeds:
        if seed not in seeds_done:
            retrain_seed(run, seed, tally)
            seeds_done.append(seed)
            saved.save(seeds_done, tally)
    write(run, summarise_run(run, tally), tally, iteration_rows)
    saved.clear()


def parse(argv: list[str] | None) -> argparse.Namespace:
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
    return entry.start(ap, argv)


@dataclass(frozen=True)
class Run:
    """What evaluate fits for one image x task: the methods of lipcore.methods that params choose."""

    args: argparse.Namespace
    params: Params
    problem: Problem
    fit_cfg: FitConfig
    head: int  # the headline round
    rounds: list[int]  # 0 (dense) and every IMP round: LIP's curve
    curve_methods: list[str]  # also fitted at every round
    baselines: list[str]  # fitted at the headline round
    controls: list[str]  # LIP's headline mask from another start
    long_run: int  # > 0: the long-run methods also fitted this many times the run length (plumbing.long_run)
    shown: str  # the reported point of the images and plots
    pid: str  # names the fits and the plots


def plan(args: argparse.Namespace, params: Params) -> Run:
    head = headline_round(params.sparsity, params.imp)
    return Run(
        args=args,
        params=params,
        fit_cfg=params.fit_for(args.task),
        problem=artifacts.load_problem(args.obs, params.task(args.task).degradation, args.name),
        head=head,
        rounds=[0, *params.imp.rounds],
        curve_methods=list(params.evaluate.curve_methods),
        baselines=list(params.evaluate.baselines),
        controls=methods.controls(params.imp.rewind_iteration) if head > 0 else [],
        long_run=params.evaluate.long_run if head > 0 else 0,
        shown=shown_point(params.protocol),
        pid=layout.pair_id(args.name, args.task),
    )


def resume_key(run: Run) -> str:
    """What a saved tally must have been made from to be taken up: this stage's arguments and inputs, its code
    and its arithmetic."""
    args = run.args
    inputs = [args.obs, args.rounds]
    return resume.stage_key(vars(args), Path(args.params), inputs, run.params.device, run.fit_cfg.precision)


@dataclass
class Tally:
    """Every score so far: per method and round (curves), per method at the headline (one per seed), LIP's
    effective sparsity per seed, and each headline method's image of the first seed."""

    curves: dict[str, dict[int, list[dict]]]
    headline: dict[str, list[dict]]
    effective: list[float] = field(default_factory=list)
    images: dict[str, Any] = field(default_factory=dict)
    long: dict[str, list[dict]] = field(default_factory=dict)  # the long runs' scores, by method
    channels: list[list[dict]] = field(default_factory=list)  # per seed, the channel tickets' rounds
    lip_parameters: dict[int, list[int]] = field(default_factory=dict)  # per LIP round, its nets' parameters

    @classmethod
    def empty(cls, run: Run) -> Tally:
        # a curve method is fitted at the headline round too: it joins the headline (the baselines' order first)
        extra = [m for m in run.curve_methods if m not in run.baselines]
        headline = ["dense", "lip", *run.baselines, *extra, *run.controls, "decoder"]
        return cls({m: {} for m in ["lip", *run.curve_methods]}, {m: [] for m in headline})


@dataclass(frozen=True)
class Planned:
    method: str
    k: int
    start: dict[str, Tensor]
    mask: Mask
    notes: dict[str, Any]  # what making the mask reported (OES: its search)


def retrain_seed(run: Run, seed: int, tally: Tally) -> None:
    """One seed: LIP's rounds read, every planned mask retrained in one batched fit, then the deep decoder."""
    start, z = artifacts.load_rewind(layout.round_dir(run.args.rounds, seed, 0), run.params.net)
    planned, head_mask = plan_seed(run, seed, start, z, tally)
    log.info("seed %s: fitting %d baseline masks", seed, len(planned))
    nets = [(p.start, p.mask, f"{run.pid} s{seed} r{p.k} {p.method}") for p in planned]
    outcomes = retrain(params=run.params, seed=seed, nets=nets, z=z, problem=run.problem, fit=run.fit_cfg)
    for p, res in zip(planned, outcomes):
        record(run, seed, p, res, tally)
    if run.head > 0:
        log.info("seed %s: fitting the deep decoder", seed)
        scores, image = fit_decoder(
            run.params, run.args.task, head_mask, run.problem, seed, f"{run.pid} s{seed} decoder"
        )
        tally.headline["decoder"].append(scores)
        if seed == run.params.seeds[0]:
            tally.images["decoder"] = image[run.shown]
    if run.long_run:
        fit_long_runs(run, seed, start, z, [p for p in planned if p.k == run.head], head_mask, tally)
    if run.params.evaluate.channels.rounds:
        trained = artifacts.load_weights(layout.round_dir(run.args.rounds, seed, 0) / layout.TRAINED, run.params.net)
        log.info("seed %s: channel tickets, %d rounds", seed, run.params.evaluate.channels.rounds)
        tally.channels.append(
            channel_tickets.fit_rounds(
                params=run.params,
                seed=seed,
                fit=run.fit_cfg,
                z=z,
                problem=run.problem,
                rewind=start,
                trained=trained,
                label=f"{run.pid} s{seed}",
            )
        )


def fit_long_runs(
    run: Run, seed: int, start: dict[str, Tensor], z: Tensor, head: list[Planned], head_mask: Mask, tally: Tally
) -> None:
    """The long runs of one seed (plumbing.long_run): dense (also at OES's recipe), LIP and the long-run
    baselines of the headline from their starts, and the deep decoder."""
    factor, label = run.long_run, f"{run.pid} s{seed}"
    log.info("seed %s: long runs, %d x %d iterations", seed, factor, run.fit_cfg.iterations)
    theta0 = artifacts.load_init(layout.round_dir(run.args.rounds, seed, 0))[0]
    masked = [("lip", start, head_mask)]
    masked += [(p.method, p.start, p.mask) for p in head if p.method in long_run.LONG_RUN]
    scores = long_run.fit_masks(
        params=run.params,
        seed=seed,
        fit=run.fit_cfg,
        task=run.args.task,
        factor=factor,
        z=z,
        problem=run.problem,
        theta0=theta0,
        masked=masked,
        label=label,
    )
    decoder, _ = fit_decoder(
        run.params, run.args.task, head_mask, run.problem, seed, f"{label} long decoder", factor=factor
    )
    scores["decoder"] = long_run.with_drop(decoder)
    for method, s in scores.items():
        tally.long.setdefault(method, []).append(s)


def plan_seed(
    run: Run, seed: int, start: dict[str, Tensor], z: Tensor, tally: Tally
) -> tuple[list[Planned], Mask | None]:
    """LIP's scores of every round into the tally; the masks to fit (each method's of lipcore.methods, from its
    start; `start`, z: LIP's) and LIP's headline mask (the deep decoder is sized to it)."""
    params, rounds = run.params, run.args.rounds
    starts = methods.StartInputs(
        params.net, start, lambda: artifacts.load_init(layout.round_dir(rounds, seed, 0))[0], params.seed, seed
    )
    planned: list[Planned] = []
    head_mask = None
    for k in run.rounds:
        m = artifacts.read_fit_metrics(layout.round_dir(rounds, seed, k), k)
        tally.curves["lip"].setdefault(k, []).append(m)
        if k in (0, run.head):  # the run-length check's facts (stages/reporting/claims.py): how the best rose
            history = artifacts.read_history(layout.round_dir(rounds, seed, k))
            scored = {**m, "best_by_tenth": best_by_tenth(history, m["output"])}
            if k == 0:
                tally.headline["dense"].append(scored)
            if k == run.head:
                tally.headline["lip"].append(scored)
                tally.effective.append(m["sparsity"]["effective"])
        if k == 0:
            continue
        lip_mask = artifacts.load_round_mask(layout.round_dir(rounds, seed, k), params.net, k)
        tally.lip_parameters.setdefault(k, []).append(nonzero_parameters(params.net, lip_mask))
        if k == run.head:
            head_mask = lip_mask
        chosen = set(run.curve_methods) | (set(run.baselines) if k == run.head else set())
        planned += [made(run, name, seed, k, z, lip_mask, starts) for name in sorted(chosen)]
    # the controls: the LIP mask itself, from another start
    planned += [made(run, name, seed, run.head, z, head_mask, starts) for name in run.controls]
    return planned, head_mask


def made(run: Run, name: str, seed: int, k: int, z: Tensor, lip_mask: Mask, starts: methods.StartInputs) -> Planned:
    """Method `name`'s mask at round k (matched to `lip_mask`, scored at LIP's start, from its own stream) and
    its start."""
    method = methods.get(name)
    gen = generator(run.params.seed, name, run.args.name, run.args.task, seed, k)
    start = method.start(starts)  # a scored mask (SNIP, OES) is scored at the start it is trained from
    oes = run.params.evaluate.oes if name == "oes" else None  # read only when fitted: its params key
    settings = {"oes": (oes, oes.steps(run.fit_cfg.iterations))} if oes is not None else {}
    inputs = methods.MaskInputs(run.params.net, start, z, run.problem, lip_mask, gen, run.params.device, settings)
    return Planned(name, k, start, method.mask(inputs), inputs.notes)


def record(run: Run, seed: int, p: Planned, res: Outcome, tally: Tally) -> None:
    scores = {**res.scores, "sparsity": {"effective": sparsity(p.mask)}}
    scores["collapsed_layers"] = prune.collapsed_layers(p.mask)
    scores.update(p.notes)  # e.g. OES's search: its length and objective
    if p.method in tally.curves:
        tally.curves[p.method].setdefault(p.k, []).append(scores)
    if p.k == run.head:
        tally.headline[p.method].append(scores)
        if seed == run.params.seeds[0]:
            tally.images[p.method] = reported_images(res.result, run.fit_cfg)[run.shown]


def summarise_run(run: Run, tally: Tally) -> dict[str, Any]:
    """The headline (every method's mean +- std over seeds) and every method's curve along the rounds."""
    return summarise_tally(run.params, run.args.name, run.args.task, tally)


def summarise_tally(params: Params, image: str, task: str, tally: Tally) -> dict[str, Any]:
    """summarise_run's summary from the tally alone (and the params): also of seeds tallied in several runs, which
    stages.shards stitches into one."""
    fraction, head = params.imp.fraction, headline_round(params.sparsity, params.imp)
    return {
        "image": image,
        "task": task,
        "protocol": params.protocol,
        "shown_point": shown_point(params.protocol),
        "headline": {
            "target_sparsity": params.sparsity,
            "round": head,
            "nominal_sparsity": nominal_sparsity(fraction, head),
            "effective_sparsity": sum(tally.effective) / len(tally.effective),
            "methods": {m: summarise(v) for m, v in tally.headline.items() if v},
        },
        "curves": {
            m: [
                {
                    "round": k,
                    "nominal_sparsity": nominal_sparsity(fraction, k),
                    "effective_sparsity": sum(s["sparsity"]["effective"] for s in v) / len(v),
                    **summarise(v),
                }
                for k, v in sorted(by_round.items())
            ]
            for m, by_round in tally.curves.items()
        },
    }


def write(run: Run, summary: dict[str, Any], tally: Tally, iteration_rows: list[dict[str, Any]]) -> None:
    """results.json and each method's image into --out; the headline's record, the plots' CSVs and the grid."""
    args, shown = run.args, run.shown
    sparsity_rows = sparsity_plot_rows(summary["curves"], shown)
    with layout.EVALUATE_OUT.write(args.out) as tmp:
        artifacts.write_numerics(tmp, run.params.device, run.fit_cfg)
        per_seed_curves = {m: {str(k): v for k, v in sorted(by.items())} for m, by in tally.curves.items()}
        results = {"summary": summary, "per_seed": tally.headline, "per_seed_curves": per_seed_curves}
        if run.long_run:
            iterations = run.fit_cfg.iterations * run.long_run
            results["long_run"] = {"factor": run.long_run, "iterations": iterations, "per_seed": tally.long}
        if tally.channels:
            results["channels"] = channels_record(run, tally)
        io.write_json(tmp / layout.RESULTS, results)
        shutil.copy(args.obs / layout.CLEAN_PNG, tmp / layout.method_png("clean"))
        shutil.copy(args.obs / layout.DEGRADED_PNG, tmp / layout.method_png("degraded"))
        for method, k in (("dense", 0), ("lip", run.head)):
            shown_png = layout.round_dir(args.rounds, run.params.seeds[0], k) / layout.output_png(shown)
            shutil.copy(shown_png, tmp / layout.method_png(method))
        for method, img in tally.images.items():
            io.save_png(img, tmp / layout.method_png(method))
    io.write_json(args.metrics, summary["headline"])
    for path, rows, columns in (
        (args.sparsity_plot, sparsity_rows, SPARSITY_COLUMNS),
        (args.iteration_plot, iteration_rows, ITERATION_COLUMNS),
    ):  # `plot` heads the chart (.dvc/plots templates): which image-task it is
        artifacts.write_csv(path, [{**row, "plot": run.pid} for row in rows], [*columns, "plot"])
    figures.grid(args.out, f"{run.pid} ({shown})", args.grid_plot)


def channels_record(run: Run, tally: Tally) -> dict[str, Any]:
    """results.json's channel tickets: the per-round fraction, the dense net's cost, the parameters of LIP's
    nets per round (the unstructured tickets they are compared with) and each seed's rounds."""
    _, z = artifacts.load_init(layout.round_dir(run.args.rounds, run.params.seeds[0], 0))
    return {
        "fraction": run.params.evaluate.channels.per_round(run.params.imp.fraction),
        "dense": channel_tickets.dense_cost(run.params.net, z),
        "lip_parameters": {str(k): v for k, v in sorted(tally.lip_parameters.items())},
        "per_seed": tally.channels,
    }


def fit_decoder(
    params: Params, task: str, lip_mask: Mask, problem: Problem, seed: int, label: str, factor: int = 1
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The deep decoder with about as many parameters as the LIP net of `lip_mask` keeps: scores, images
    (factor: a run that many times as long, the long runs')."""
    dec_cfg = matched_decoder(params.net, lip_mask, params.evaluate.decoder_layers)
    dec = build_net(dec_cfg, generator(params.seed, "decoder", seed))
    z_dec = make_input(dec, *problem.x_true.shape[-2:], generator(params.seed, "decoder_z", seed))
    dec_fit = long_run.long_fit(params.fit_for(task, reg_noise_std=0.0), factor)  # no input noise, as its paper
    nets = [(dec.state_dict(), None, label)]
    (res,) = retrain(params=params, seed=seed, nets=nets, z=z_dec, problem=problem, fit=dec_fit, net=dec_cfg)
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


def best_by_tenth(history: dict[str, list], output: str) -> list[float | None]:
    """The best PSNR of the reported output (`output`: out or ema) so far at each tenth of the run (10%, ..., 100%
    of its last logged iteration), from its history.json: a fit whose best still rose in its last fifth had not
    reached its plateau. None for a tenth with no measured row yet."""
    column = history["psnr_ema" if output == "ema" else "psnr_out"]
    rows = [(it, v) for it, v in zip(history["iteration"], column) if v is not None]
    end = history["iteration"][-1] if history["iteration"] else 0
    out: list[float | None] = []
    for tenth in range(1, 11):
        seen = [v for it, v in rows if it <= end * tenth / 10]
        out.append(max(seen) if seen else None)
    return out


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
