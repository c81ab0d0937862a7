"""The report's GAN compressive-sensing section (from gan_evaluate's results.json): tables of MSE per method
and m, the paired LIP-G - dense-G differences, the robust setting, MSE vs sparsity and vs m, and image grids."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from ..plumbing import artifacts, layout
from . import figures

TITLE = "## GAN compressive sensing: a pruned pretrained generator as the prior"


def by_m(res: dict[str, Any]) -> dict[str, Any]:
    """The record with its m entries in increasing m (JSON keeps them as sorted strings: 1000 before 200)."""
    return {**res, "m": dict(sorted(res["m"].items(), key=lambda item: int(item[0])))}


def section(gan_dir: Path, out: Path) -> list[str]:
    """The section's Markdown lines; its figures written into `out` (the report folder being made)."""
    if not (Path(gan_dir) / layout.RESULTS).exists():  # only when the stage is called by hand: dvc repro runs it
        return [TITLE, "", f"Not measured: {gan_dir} holds no results; run `dvc repro gan_evaluate`."]
    res = by_m(artifacts.read_record(Path(gan_dir) / layout.RESULTS, ("m", "rounds", "robust", "images", "kinds")))
    ms = list(res["m"])
    rounds = res["rounds"]
    sparsity_figure(res, out / layout.GAN_SPARSITY_PNG)
    m_figure(res, out / layout.GAN_M_PNG)
    n_range, n_face = res["kinds"].count("in_range"), res["kinds"].count("face")
    levels = ", ".join(f"{r['sparsity']:.1%}" for r in rounds[1:])
    faces = ", ".join(n for n, k in zip(res["images"], res["kinds"]) if k == "face")
    faces = f" ({faces})" if faces else ""
    rewind = (
        "; *rewind*: the LIP mask on the pretrained weights, not retrained"
        if "rewind" in pruned_kinds(res)
        else " (the rewind control was left out: `gan.rewind: false`)"
    )
    lines = [
        TITLE,
        "",
        f"The DCGAN face generator of `gan-face-generate` (3,574,784 conv weights), pruned by IMP "
        f"({levels}), each round rewound to the pretrained "
        "weights and retrained by distillation from the dense generator; *random*: a random mask with the same "
        f"sparsity in every layer, retrained the same way{rewind}. CSGM on {n_range} in-range images (made by the "
        f"dense generator) and {n_face} real faces{faces}. Per-pixel MSE in [-1, 1] "
        "units (lower is better), mean ± std over the images.",
        "",
        *verdict_lines(res),
        "",
        *convergence_lines(res, out / layout.GAN_CURVE_PNG),
    ]
    for m in ms:
        lines += [f"### m = {m} measurements ({int(m) / 12288:.1%} of n)", "", *mse_table(res["m"][m]), ""]
        lines += [*paired_table(res["m"][m], [r["round"] for r in rounds[1:]], pruned_kinds(res)), ""]
        grid = layout.GAN_GRID.format(m=m)
        shutil.copyfile(Path(gan_dir) / grid, out / grid)
        lines += [
            f"Columns: {', '.join(res['grid_columns'])} (round {res['grid_round']}); rows: the test images.",
            "",
            f"![m={m}]({grid})",
            "",
        ]
    lines += [
        f"![MSE vs sparsity]({layout.GAN_SPARSITY_PNG})",
        "",
        f"![MSE vs m]({layout.GAN_M_PNG})",
        "",
        *robust_lines(res["robust"]),
    ]
    return lines


def pruned_kinds(res: dict[str, Any]) -> list[str]:
    """The pruned generators gan_evaluate scored per round (lip, random, and rewind unless it was left out), read
    from the methods it scored at its first m."""
    methods = next(iter(res["m"].values()))["methods"]
    return [kind for kind in ("lip", "random", "rewind") if any(n.startswith(f"{kind}@") for n in methods)]


def stat(v: dict[str, Any], kind: str) -> str:
    s = v.get(kind)
    return "–" if s is None else f"{s['mse']['mean']:.4f} ± {s['mse']['std']:.4f}"


def mse_table(entry: dict[str, Any]) -> list[str]:
    rows = ["| method | all | in-range | faces |", "|---|---|---|---|"]
    for name, v in entry["methods"].items():
        rows.append(f"| {name} | {stat(v, 'all')} | {stat(v, 'in_range')} | {stat(v, 'face')} |")
    return rows


def interval(p: dict[str, Any] | None) -> str:
    if p is None:
        return "–"
    if p["verdict"] == "too few pairs":
        return f"{p['mean']:+.4f} (n={p['n']})"
    power = f", detects ±{p['detectable']:.4f}" if "detectable" in p else ""
    return f"{p['mean']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}] {p['verdict']} ({p['lower']}/{p['n']} lower{power})"


def paired_table(entry: dict[str, Any], rounds: list[int], kinds: list[str]) -> list[str]:
    rows = [
        "Paired MSE difference to the dense generator per image, mean [95% interval]; *better*: the interval lies "
        "below 0.",
        "",
        "| generator | all | in-range | faces |",
        "|---|---|---|---|",
    ]
    for kind in kinds:
        for k in rounds:
            p = entry["paired_vs_dense"][f"{kind}@{k}"]
            rows.append(
                f"| {kind}@{k} | {interval(p.get('all'))} | {interval(p.get('in_range'))} | {interval(p.get('face'))} |"
            )
    for name, p in (entry.get("paired_lip_vs_random") or {}).items():
        k = name.split("@")[1]
        rows.append(
            f"| {name} − random@{k} | {interval(p.get('all'))} | {interval(p.get('in_range'))} | "
            f"{interval(p.get('face'))} |"
        )
    return rows


def verdict_lines(res: dict[str, Any]) -> list[str]:
    """Whether "a sparse generator beats the dense one" holds here: per m, the best LIP round's paired test on the
    generator's own distribution (in-range images) and on real faces apart, and LIP against random at its sparsity."""
    lines = ["**Does a sparse generator beat the dense one here?** (in-range images and real faces apart)", ""]
    words = {"better": "yes", "worse": "no, worse", "no difference": "not shown"}
    for m, entry in by_m(res)["m"].items():
        for kind, what in (("in_range", "in-range images"), ("face", "real faces")):
            if kind not in entry["methods"]["dense"]:
                continue
            best = min(
                (n for n in entry["methods"] if n.startswith("lip@")),
                key=lambda n: entry["methods"][n][kind]["mse"]["mean"],
            )
            p = entry["paired_vs_dense"][best][kind]
            dense = entry["methods"]["dense"][kind]["mse"]["mean"]
            ours = entry["methods"][best][kind]["mse"]["mean"]
            line = (
                f"- m = {m}, {what}: {words.get(p['verdict'], 'too few images')}. Best LIP round {best}: MSE "
                f"{ours:.4f} vs dense {dense:.4f}; paired difference {interval(p)}"
            )
            control = (entry.get("paired_lip_vs_random") or {}).get(best, {}).get(kind)
            if control is not None:
                line += f"; against random at its sparsity {interval(control)}"
            lines.append(line + ".")
    return lines


def convergence_lines(res: dict[str, Any], path: Path) -> list[str]:
    """The dense generator's latent-search loss per m (figure), and how much its last fifth still took off."""
    curves = {m: e.get("search_curve") for m, e in by_m(res)["m"].items()}
    if not all(curves.values()):
        return []
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for m, c in curves.items():
        dense = c["methods"]["dense"]  # before every `every`-th step, then after the last one
        ax.plot([i * c["every"] for i in range(len(dense))], dense, label=f"m = {m}")
    ax.set_yscale("log")
    ax.set_xlabel("Adam step on z")
    ax.set_ylabel("measurement loss (mean over images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figures.save(fig, path)
    drops = ", ".join(f"m = {m}: {c['dense_last_fifth_drop']:.1%}" for m, c in curves.items())
    lines = [
        "**Has the latent search converged?** The dense generator's measurement loss along the search (kept "
        f"restart, mean over the test images); the last 20% of the search took off {drops} of its final loss.",
        "",
    ]
    if all("dense_last_fifth_progress" in c for c in curves.values()):  # records from before: the drop only
        lines += [
            "| m | loss at the end | noise floor σ² | end / floor | last fifth's share of all the search shed | "
            "flat (< 1%) |",
            "|---|---|---|---|---|---|",
            *(
                f"| {m} | {c['methods']['dense'][-1]:.3g} | {c['noise_floor']:.3g} | "
                f"{c['methods']['dense'][-1] / c['noise_floor']:.3g}× | {c['dense_last_fifth_progress']:.2%} | "
                f"{'yes' if c['dense_flat'] else '**no**'} |"
                for m, c in curves.items()
            ),
            "",
        ]
    return [
        *lines,
        f"![search curve]({layout.GAN_CURVE_PNG})",
        "",
    ]


def robust_lines(robust: dict[str, Any] | None) -> list[str]:
    if robust is None:
        return ["### Robust setting", "", "Not run here (`gan.robust: false`).", ""]
    rows = [
        f"### Robust setting: {robust['m']} measurements, the last {robust['outliers']} all-ones rows measuring "
        f"{robust['outlier_value']:g}",
        "",
        f"Least squares (ERM) against median-of-means (MOM, blocks of {robust['mom_block']} rows), from the same "
        "starting latents.",
        "",
        "| generator / loss | all | in-range | faces |",
        "|---|---|---|---|",
    ]
    for name, v in robust["methods"].items():
        rows.append(f"| {name} | {stat(v, 'all')} | {stat(v, 'in_range')} | {stat(v, 'face')} |")
    return [*rows, ""]


def sparsity_figure(res: dict[str, Any], path: Path) -> None:
    ms = list(res["m"])
    fig, axes = plt.subplots(1, len(ms), figsize=(4.2 * len(ms), 3.4), squeeze=False)
    x = [r["sparsity"] for r in res["rounds"]]
    for ax, m in zip(axes[0], ms):
        methods = res["m"][m]["methods"]
        for kind in pruned_kinds(res):
            names = ["dense", *(f"{kind}@{r['round']}" for r in res["rounds"][1:])]
            y = [methods[n]["all"]["mse"]["mean"] for n in names]
            ax.plot(x, y, marker="o", label=kind)
        ax.set_title(f"m = {m}", fontsize=10)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("MSE ([-1, 1] units)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figures.save(fig, path)


def m_figure(res: dict[str, Any], path: Path) -> None:
    ms = list(res["m"])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name in res["m"][ms[0]]["methods"]:
        if name.startswith(("random@", "rewind@")):
            continue  # the sparsity figure shows the controls
        ax.plot(
            [int(m) for m in ms],
            [res["m"][m]["methods"][name]["all"]["mse"]["mean"] for m in ms],
            marker="o",
            label=name,
        )
    ax.set_xscale("log")
    ax.set_xlabel("measurements m")
    ax.set_ylabel("MSE ([-1, 1] units)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    figures.save(fig, path)
