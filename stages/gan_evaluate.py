"""Stage gan_evaluate: the GAN study's numbers, in one place, for the report and `dvc metrics`.

Per measurement count m and method: per-pixel MSE (the generator's [-1, 1] units, as the paper) and PSNR
([0, 1] units), mean +- std over the test images, separately for in-range images and real faces; the paired
difference LIP-G - dense-G per image (same images, same measurements, same starting latents) with its 95%
Student-t interval (lipcore.stats); the robust setting (ERM vs MOM); a grid of images per m.

    python -m stages.gan_evaluate --testset outs/gan/testset --rounds outs/gan/rounds --cs outs/gan/cs \
        --dip outs/gan/dip --out outs/evaluate/gan --metrics metrics/gan.json \
        --sparsity-plot plots/gan/mse_vs_sparsity.csv --m-plot plots/gan/mse_vs_m.csv
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from lipcore import io
from lipcore.stats import paired, verdict

from .plumbing import artifacts, entry, gan_study, layout
from .plumbing.params import load_params

GRID_METHODS = ("adjoint", "fista", "dense", "lip", "random", "rewind", "dip", "dip_lip")  # columns after the truth


def main(argv: list[str] | None = None) -> None:
    ap = entry.parser(__doc__)
    ap.add_argument("--testset", type=Path, required=True)
    ap.add_argument("--rounds", type=Path, required=True)
    ap.add_argument("--cs", type=Path, required=True)
    ap.add_argument("--dip", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=entry.output_file(".json", ("m",)), required=True)
    ap.add_argument("--sparsity-plot", type=entry.output_file(".csv", ("sparsity",)), required=True)
    ap.add_argument("--m-plot", type=entry.output_file(".csv", ("m",)), required=True)
    args = entry.start(ap, argv)
    layout.GAN_EVALUATE_OUT.check(args.out)
    params = load_params(args.params)
    gan = params.gan
    x, names, kinds = gan_study.load_testset(args.testset)
    scored = gan.scored_rounds
    rounds = [artifacts.read_gan_record(layout.gan_round_dir(k, args.rounds)) for k in (0, *scored)]
    last = scored[-1]
    kinds_scored = gan.pruned_kinds
    grid_methods = tuple(c for c in GRID_METHODS if c != "rewind" or "rewind" in kinds_scored)

    per_m, grids, lambdas = {}, {}, {}
    for m in gan.cs.m:
        cs, cs_x = read(layout.gan_cs_dir(m).name, args.cs, m)
        dip, dip_x = read(layout.gan_dip_dir(m).name, args.dip, m)
        methods = {**cs["methods"], **dip["methods"]}
        for name, rows in methods.items():
            if [r["image"] for r in rows] != names:
                raise ValueError(f"{args.cs} / {args.dip}: method {name} at m={m} scored other images; rerun it")
        lambdas[m] = cs["fista"]["lambda"]
        per_m[m] = {
            "methods": {name: summary(rows, kinds) for name, rows in methods.items()},
            "paired_vs_dense": {
                f"{kind}@{k}": paired_mse(methods[f"{kind}@{k}"], methods["dense"], kinds)
                for kind in kinds_scored
                for k in scored
            },
            # the sparse-generator claim's control: LIP against a random mask of the same sparsity, image by image
            "paired_lip_vs_random": {
                f"lip@{k}": paired_mse(methods[f"lip@{k}"], methods[f"random@{k}"], kinds) for k in scored
            },
            "search_curve": search_curve(cs, gan.cs.noise_std),
        }
        images = {**cs_x, **dip_x}
        ticket = next(n for n in dip_x if n.startswith("dip_lip@"))
        columns = {"adjoint": "adjoint", "fista": "fista", "dense": "dense", "dip": "dip", "dip_lip": ticket}
        columns.update({kind: f"{kind}@{last}" for kind in kinds_scored})
        grids[m] = torch.cat([x, *(images[columns[c]] for c in grid_methods)], dim=-1)  # one row per image

    robust = None
    if gan.robust:
        record, _ = read(layout.GAN_ROBUST.name, args.cs, gan.cs.robust_m)
        robust = {
            **{k: record[k] for k in ("m", "outliers", "outlier_value", "mom_block")},
            "methods": {name: summary(rows, kinds) for name, rows in record["methods"].items()},
        }
    results: dict[str, Any] = {
        "images": names,
        "kinds": kinds,
        "rounds": rounds,
        "fista_lambda": {str(m): lam for m, lam in lambdas.items()},
        "m": {str(m): v for m, v in per_m.items()},
        "robust": robust,  # None: left out (gan.robust: false)
        "grid_columns": ["truth", *grid_methods],
        "grid_round": last,
    }
    with layout.GAN_EVALUATE_OUT.write(args.out) as tmp:
        io.write_json(tmp / layout.RESULTS, results)
        for m, grid in grids.items():
            io.save_png(((torch.cat(list(grid), dim=-2) + 1) / 2)[None], tmp / layout.GAN_GRID.format(m=m))
    io.write_json(args.metrics, metrics(per_m, robust))
    sparsity = sparsity_rows(per_m, rounds, kinds_scored)
    for path, (rows, columns) in ((args.sparsity_plot, sparsity), (args.m_plot, m_rows(per_m))):
        # `plot` heads the chart (.dvc/plots templates)
        artifacts.write_csv(path, [{**row, "plot": PLOT_HEADER} for row in rows], [*columns, "plot"])


def read(name: str, parent: Path, m: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """One gan_cs / gan_robust / gan_dip directory: its results.json and recovered images, checked for m."""
    path = Path(parent) / name
    record = artifacts.read_record(path / layout.RESULTS, ("m", "images", "methods"))
    if record["m"] != m:
        raise ValueError(f"{path} holds m={record['m']}, expected m={m}; rerun its stage")
    recovered, _ = io.load_tensors(path / layout.RECOVERED)
    return record, recovered


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summary(rows: list[dict], kinds: list[str]) -> dict[str, Any]:
    """MSE and PSNR mean +- std over all test images and per kind (in_range, face), and the per-image values."""
    out: dict[str, Any] = {"per_image": {r["image"]: r["mse"] for r in rows}}
    for kind in ("all", *gan_study.KINDS):
        chosen = [r for r, k in zip(rows, kinds) if kind in ("all", k)]
        if chosen:
            out[kind] = {key: mean_std([r[key] for r in chosen]) for key in ("mse", "psnr")}
    return out


def paired_mse(method: list[dict], dense: list[dict], kinds: list[str]) -> dict[str, Any]:
    """method - dense MSE per image, its mean and 95% interval, per kind; the verdict reads lower MSE as better."""
    out = {}
    for kind in ("all", *gan_study.KINDS):
        idx = [i for i, k in enumerate(kinds) if kind in ("all", k)]
        if not idx:
            continue
        p = paired([method[i]["mse"] for i in idx], [dense[i]["mse"] for i in idx])
        better = "too few pairs" if p.verdict == "too few pairs" else verdict(-p.high, -p.low)
        out[kind] = {"n": p.n, "mean": p.mean, "low": p.low, "high": p.high, "verdict": better, "lower": p.n - p.wins}
        out[kind]["detectable"] = p.detectable
    return out


# A search is flat when its last fifth made less than this share of all the loss it shed. Near the noise floor
# Adam at a constant lr keeps jittering, so the share of the *final* loss swings by tens of percent there
# (report/transfer-study.md: the GAN search pilot) while the share of the whole decrease stays tiny.
FLAT_PROGRESS = 0.01


def search_curve(cs: dict[str, Any], noise_std: float) -> dict[str, Any] | None:
    """gan_cs's loss curves of the latent search, and how flat the dense generator's was at its end: what the last
    20% of the search still took off, as a share of its final loss and of all the search took off (the loss
    at its start minus at its end), beside the loss a perfect fit leaves (the noise floor, noise_std squared:
    the loss is a mean squared residual per measurement)."""
    curve = cs.get("search_curve")
    if curve is None:
        return None
    dense = curve["methods"]["dense"]
    at_80 = dense[int(0.8 * (len(dense) - 1))]
    shed = dense[0] - dense[-1]
    progress = (at_80 - dense[-1]) / shed if shed > 0 else float("nan")
    return {
        **curve,
        "dense_last_fifth_drop": (at_80 - dense[-1]) / dense[-1],
        "dense_last_fifth_progress": progress,
        "dense_flat": progress < FLAT_PROGRESS,
        "noise_floor": noise_std**2,
    }


def metrics(per_m: dict[int, Any], robust: dict[str, Any] | None) -> dict[str, Any]:
    """metrics/gan.json (dvc metrics show / diff): mean MSE of every method at every m, and the robust setting
    (unless it was left out)."""
    out: dict[str, Any] = {
        f"m{m}": {name: round(v["all"]["mse"]["mean"], 6) for name, v in entry_["methods"].items()}
        for m, entry_ in per_m.items()
    }
    if robust is not None:
        out["robust"] = {name: round(v["all"]["mse"]["mean"], 6) for name, v in robust["methods"].items()}
    out["m"] = list(per_m)
    return out


PLOT_HEADER = "mean over the test images (in-range and real faces)"


def sparsity_rows(per_m: dict[int, Any], rounds: list[dict], kinds: tuple[str, ...]) -> tuple[list[dict], list[str]]:
    """MSE vs sparsity, long format (one row per round, kind and m; round 0 is the dense generator for every kind):
    the plot draws one line per series."""
    rows = []
    for m, entry_ in per_m.items():
        for kind in kinds:
            for r in rounds:
                name = "dense" if r["round"] == 0 else f"{kind}@{r['round']}"
                mse = entry_["methods"][name]["all"]["mse"]["mean"]
                rows.append({"sparsity": r["sparsity"], "mse": mse, "series": f"{kind} m={m}"})
    return rows, ["sparsity", "mse", "series"]


def m_rows(per_m: dict[int, Any]) -> tuple[list[dict], list[str]]:
    """MSE vs m, long format: one row per m and method."""
    rows = [
        {"m": m, "mse": e["methods"][name]["all"]["mse"]["mean"], "series": name}
        for m, e in per_m.items()
        for name in e["methods"]
    ]
    return rows, ["m", "mse", "series"]


if __name__ == "__main__":
    entry.run(main)
