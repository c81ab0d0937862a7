"""Stage report: figures and a Markdown report from evaluate, transfer and multi_evaluate: the paper's claims
checked with paired statistics (stages.claims), LIP against each method, tables, image grids, transfer matrix.

python -m stages.report --evaluate outs/evaluate --transfer outs/transfer --out report/default \
    --headline metrics/headline.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from lipcore import io, methods  # noqa: E402
from lipcore.schema import mark_read  # noqa: E402

from .plumbing import artifacts, entry, layout  # noqa: E402
from .plumbing.params import load_params  # noqa: E402
from .reporting import claims, figures, gan_report, headline, overfitting, structured  # noqa: E402


def fmt(stat: dict[str, float] | None, digits: int = 2) -> str:
    return "–" if stat is None else f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def headline_table(summary: dict[str, Any]) -> list[str]:
    head = summary["headline"]
    lines = [
        f"Headline round {head['round']}: nominal sparsity {head['nominal_sparsity']:.3f}, "
        f"effective {head['effective_sparsity']:.3f} (target {head['target_sparsity']}).",
        "",
        "| method | PSNR oracle best | PSNR last | PSNR ES-WMV | SSIM oracle best | SSIM last | SSIM ES-WMV |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in methods.names():  # the registry's order
        s = head["methods"].get(m)
        if s is None:
            continue
        cells = [fmt(s.get(f"{p}_psnr")) for p in ("oracle_best", "last", "es")]
        cells += [fmt(s.get(f"{p}_ssim"), 3) for p in ("oracle_best", "last", "es")]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def curves_figure(summaries: list[dict[str, Any]], path: Path) -> None:
    """PSNR vs sparsity as a grid, one row per image and one column per task: LIP (and any curve baseline) along
    the rounds, the dense fit's level as a dashed line, the headline baselines as markers at LIP's sparsity."""
    images = list(dict.fromkeys(s["image"] for s in summaries))
    tasks = list(dict.fromkeys(s["task"] for s in summaries))
    fig, axes = plt.subplots(
        len(images), len(tasks), figsize=(3.6 * len(tasks), 2.6 * len(images)), squeeze=False, sharex=True
    )
    for s in summaries:
        ax = axes[images.index(s["image"])][tasks.index(s["task"])]
        point = s["shown_point"]
        dense = s["curves"]["lip"][0]  # round 0: every method starts from the dense net
        ax.axhline(dense[f"{point}_psnr"]["mean"], color="grey", ls="--", lw=1, label="dense")
        for method, pts in s["curves"].items():
            pts = pts if pts[0]["round"] == 0 else [dense, *pts]
            x = [p["effective_sparsity"] for p in pts]
            y = [p[f"{point}_psnr"]["mean"] for p in pts]
            e = [p[f"{point}_psnr"]["std"] for p in pts]
            ax.errorbar(x, y, yerr=e, marker="o", ms=3, capsize=2, label=method)
        head = s["headline"]
        for method in methods.markers():  # every baseline and control that was fitted
            m = head["methods"].get(method)
            if m:
                stat = m[f"{point}_psnr"]
                ax.errorbar(
                    [head["effective_sparsity"]],
                    [stat["mean"]],
                    yerr=[stat["std"]],
                    marker="s",
                    ms=4,
                    ls="none",
                    capsize=2,
                    label=method,
                )
        ax.set_title(f"{s['image']} / {s['task']}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("sparsity (effective)", fontsize=8)
    for row in axes:
        row[0].set_ylabel(f"PSNR at {summaries[0]['shown_point']} (dB)", fontsize=8)
    axes[0][0].legend(fontsize=6)  # the same methods in every panel
    figures.save(fig, path)


def transfer_table(transfer: dict, ids: list[str]) -> list[str]:
    """The transfer section: the PSNR matrix, or why there is none."""
    if "note" in transfer:
        return ["## Transfer", "", f"No transfer measured: {transfer['note']}."]
    title = f"## Transfer (round {transfer['round']}, PSNR at {transfer['point']}; rows: mask source, columns: target)"
    lines = [title, "", "| source \\ target | " + " | ".join(ids) + " |", "|---|" + "---|" * len(ids)]
    for src in ids:
        row = transfer["psnr"][src]
        lines.append(f"| {src} | " + " | ".join(f"{row[t]:.2f}" if t in row else "–" for t in ids) + " |")
    return lines


def statistics_section(records: dict[str, dict], point: str, tasks: list[str]) -> list[str]:
    """LIP against every method at the headline round, pooled and per task; LIP against dense along the rounds;
    layer collapse."""
    if records[next(iter(records))]["summary"]["headline"]["round"] == 0:
        return []
    lines = ["## LIP against each method (headline round, paired)", ""]
    points = [point] + (["oracle_best"] if point != "oracle_best" else [])
    for p in points:
        lines += [f"All problems, PSNR at **{p}**:", "", *claims.comparison_table(claims.comparisons(records, p)), ""]
    if len(tasks) > 1:
        for task in tasks:
            compared = claims.comparisons(records, point, task)
            lines += [f"Task **{task}**, PSNR at {point}:", "", *claims.comparison_table(compared), ""]
    lines += [
        f"LIP round k against the dense fit, all problems, PSNR at {point}:",
        "",
        "| round | nominal sparsity | pairs | LIP − dense, mean [95% CI] | verdict |",
        "|---|---|---|---|---|",
    ]
    for k, s, p in claims.rounds_against_dense(records, point):
        lines.append(f"| {k} | {s:.3f} | {p.n} | {claims.fmt_paired(p)} | LIP {claims.verdict_words(p)} |")
    return [*lines, "", *claims.run_length_lines(records), "", *claims.collapse_lines(records), ""]


def main(argv: list[str] | None = None) -> None:
    ap = entry.parser(__doc__)
    ap.add_argument("--evaluate", type=Path, required=True, help="directory of evaluate outputs")
    ap.add_argument("--transfer", type=Path, required=True, help="transfer output directory")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--headline",
        type=entry.output_file(".json", ("effective_sparsity", "psnr", "gain")),
        required=True,
        help="the numbers experiments are compared by (JSON, the DVC metrics file)",
    )
    args = entry.start(ap, argv)
    layout.REPORT_OUT.check(args.out)  # before any work: never replace a folder given by mistake
    params = load_params(args.params)
    ids = [layout.pair_id(i, t) for i in params.images for t in params.tasks]
    keys = ("summary", "per_seed", "per_seed_curves")
    records = {i: artifacts.read_record(args.evaluate / i / layout.RESULTS, keys) for i in ids}
    summaries = [records[i]["summary"] for i in ids]
    transfer = artifacts.read_record(args.transfer / layout.MATRIX, ("round", "point", "psnr", "per_seed"))
    mark_read(*params.multi.groups.values())  # the report depends on each group as a whole (its membership)
    multi = {
        g: artifacts.read_record(args.evaluate / layout.multi_id(g) / layout.RESULTS, ("summary", "rows"))
        for g in params.multi.groups
    }
    point = summaries[0]["shown_point"]

    with layout.REPORT_OUT.write(args.out) as tmp:
        curves_figure(summaries, tmp / layout.CURVES_PNG)
        lines = [
            f"# Lottery image priors: report ({params.setting})",
            "",
            f"Protocol **{params.protocol}**; images {list(params.images)}, tasks {list(params.tasks)}, "
            f"seeds {list(params.seeds)}, image size {params.image_size}, {claims.run_lengths(records)}. "
            "Values are mean ± std over seeds. *Oracle best* picks the iteration with the ground "
            "truth (as the LIP paper reports); *ES-WMV* stops without it.",
            "",
            *claims.claims_section(records, transfer, multi, point),
            *overfitting.claim_rows(records),
            "",
            *statistics_section(records, point, list(params.tasks)),
            f"![PSNR vs sparsity]({layout.CURVES_PNG})",
            "",
            *overfitting.section(records),
            *structured.section(records, point),
            *claims.multi_section(multi, point),
        ]
        for s, i in zip(summaries, ids):
            figures.grid(args.evaluate / i, f"{i} ({s['shown_point']})", tmp / layout.grid_png(i))
            lines += [
                f"## {s['image']} / {s['task']}",
                "",
                *headline_table(s),
                "",
                f"![grid]({layout.grid_png(i)})",
                "",
            ]
        lines += transfer_table(transfer, ids)
        lines += ["", *gan_report.section(args.evaluate / layout.GAN_EVALUATE.name, tmp)]
        (tmp / layout.REPORT_MD).write_text("\n".join(lines) + "\n")
    gan_results = args.evaluate / layout.GAN_EVALUATE.name / layout.RESULTS
    gan = artifacts.read_record(gan_results, ("m", "rounds")) if gan_results.exists() else None
    io.write_json(args.headline, headline.headline(dict(zip(ids, summaries)), gan))


if __name__ == "__main__":
    entry.run(main)
