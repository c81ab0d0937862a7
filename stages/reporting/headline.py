"""The few numbers an experiment is compared by (metrics/headline.json, the pipeline's only DVC metrics file), so
that `dvc exp show` and `dvc metrics diff` answer "at this sparsity, how does LIP compare with dense and random,
and did my change move it?" on one screen. Everything else (stds, SSIM, the other reporting points, per-seed
values, every baseline) stays in the stages' full records (metrics/<image>-<task>.json and the outs), which are
outputs, not DVC metrics.

PSNR is at each problem's reported point (ES-WMV under the blind protocol, the oracle best under the paper's),
in dB, averaged over seeds and then over image-tasks; `random` is the better of the random baselines of each
image-task (the stronger opponent; lipcore.methods says which method feeds which column). The GAN numbers are the
MSE at the largest measurement count, at the last round's sparsity.
"""

from __future__ import annotations

from typing import Any

from lipcore import methods

DIGITS = 4  # decimals kept: enough to see a change of 0.001 dB, short enough for a column


def problem_psnr(summary: dict[str, Any]) -> dict[str, float | None]:
    """One image-task's PSNR per column at its reported point (None where no method of it was run); a column of
    several methods (random: random_global and random_layer) takes the best of them, the stronger opponent."""
    point, fitted = summary["shown_point"], summary["headline"]["methods"]

    def best(names: list[str]) -> float | None:
        values = [fitted[m][f"{point}_psnr"]["mean"] for m in names if m in fitted]
        return max(values) if values else None

    return {c: best(names) for c, names in methods.headline_columns().items()}


def headline(summaries: dict[str, dict[str, Any]], gan: dict[str, Any] | None) -> dict[str, Any]:
    """metrics/headline.json from evaluate's summaries ({image-task: summary}) and gan_evaluate's results (None
    when the GAN study has not run)."""
    rows = {pid: problem_psnr(s) for pid, s in summaries.items()}
    out: dict[str, Any] = {
        # not plain `sparsity`: that is the params key (the target), and DVC would prefix one of the two
        "effective_sparsity": _r(_mean([s["headline"]["effective_sparsity"] for s in summaries.values()])),
        "psnr": {c: _r(_mean([row[c] for row in rows.values()])) for c in methods.headline_columns()},
        "gain": {
            "lip-dense": _r(_mean([_diff(row["lip"], row["dense"]) for row in rows.values()])),
            "lip-random": _r(_mean([_diff(row["lip"], row["random"]) for row in rows.values()])),
        },
        "lip-dense": {pid: _r(_diff(row["lip"], row["dense"])) for pid, row in rows.items()},
    }
    if gan is not None:
        out["gan_mse"] = gan_headline(gan)
    return out


def gan_headline(results: dict[str, Any]) -> dict[str, float]:
    """Dense, LIP and random generators' MSE at the largest m, the LIP and random ones at the last round."""
    m = max(results["m"], key=int)
    last = results["rounds"][-1]["round"]
    methods = results["m"][m]["methods"]
    pick = {"dense": "dense", "lip": f"lip@{last}", "random": f"random@{last}"}
    return {name: _r(methods[key]["all"]["mse"]["mean"]) for name, key in pick.items() if key in methods}


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, DIGITS)
