"""The report's long runs (evaluate.long_run, stages.plumbing.long_run): does a sparse prior overfit less?

Per method, the PSNR at the peak of a long run (the oracle best over all its iterations), at its end (the last
iterate) and the drop between them; each paired per (image, task, seed) against the dense DIP and against LIP.
A drop is compared as `dense's drop - X's drop`: positive when X overfits less.
"""

from __future__ import annotations

from lipcore import methods
from lipcore.stats import Paired, paired

from ..plumbing.long_run import LONG_RUN, RECIPE
from . import claims

WHAT = {RECIPE: "the dense DIP at OES's training recipe: no input noise, no output averaging (control)"}


def values(records: dict[str, dict], method: str, what: str) -> list[float]:
    """`what` (drop; or a point's PSNR: oracle_best, last) of `method`'s long fits, one per (image, task, seed)."""
    out = []
    for rec in records.values():
        for s in rec.get("long_run", {}).get("per_seed", {}).get(method, []):
            out.append(float(s["drop"]) if what == "drop" else claims.psnr(s, what))
    return out


def against(records: dict[str, dict], a: str, b: str, what: str) -> Paired | None:
    """a - b paired per (image, task, seed); for `drop`, b's drop - a's (positive: a drops less than b)."""
    va, vb = values(records, a, what), values(records, b, what)
    if len(va) < 1 or len(va) != len(vb):
        return None
    return paired(vb, va) if what == "drop" else paired(va, vb)


def methods_run(records: dict[str, dict]) -> list[str]:
    """The long-run methods every problem fitted, in LONG_RUN order, then the recipe control."""
    present = [set(rec.get("long_run", {}).get("per_seed", {})) for rec in records.values()]
    common = set.intersection(*present) if present else set()
    return [m for m in (*LONG_RUN, RECIPE) if m in common]


def what(method: str) -> str:
    return WHAT.get(method) or methods.get(method).what


def claim_rows(records: dict[str, dict]) -> list[str]:
    """The claims table's rows "sparse priors overfit less": dense's drop - X's drop over the long runs, for LIP
    and every other sparse method that ran them (none when no long run was fitted)."""
    rows = []
    for m in methods_run(records):
        p = against(records, m, "dense", "drop")
        if m in ("dense", RECIPE) or p is None:
            continue
        found = f"dense's drop − {m}'s drop {claims.fmt_paired(p)}, {m} drops less in {p.wins}/{p.n}"
        claim = f"a sparse prior overfits less: {m} (long runs: peak − end vs dense)"
        rows.append(claims.claim_row(claim, found, claims.superiority(p), p))
    return rows


def section(records: dict[str, dict]) -> list[str]:
    """The long runs' table and their paired comparisons (nothing when no long run was fitted)."""
    ran = methods_run(records)
    if not ran:
        return []
    rec = next(r for r in records.values() if "long_run" in r)["long_run"]
    lines = [
        "## Long runs: does a sparse prior overfit less?",
        "",
        f"Each method at the headline sparsity fitted {rec['factor']}x the run length ({rec['iterations']} "
        "iterations), from its headline start, z and reg-noise stream. *Peak*: the oracle best over the run; *end*: "
        "the last iterate; *drop*: peak − end (dB). Paired per (image, task, seed); for drops the difference is "
        "dense's (or LIP's) drop − the method's: positive when the method overfits less.",
        "",
        "| method | what it is | fits | peak | end | drop | drop vs dense [95% CI] | detectable | "
        "end − dense's end | drop vs LIP [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in ran:
        peak, end, drop = (values(records, m, w) for w in ("oracle_best", "last", "drop"))
        vs_dense = against(records, m, "dense", "drop") if m != "dense" else None
        end_dense = against(records, m, "dense", "last") if m != "dense" else None
        vs_lip = against(records, m, "lip", "drop") if m not in ("lip",) and "lip" in ran else None
        cells = [
            claims.fmt_paired(vs_dense) if vs_dense else "–",
            claims.fmt_detectable(vs_dense) if vs_dense else "–",
            claims.fmt_paired(end_dense) if end_dense else "–",
            claims.fmt_paired(vs_lip) if vs_lip else "–",
        ]
        lines.append(
            f"| {m} | {what(m)} | {len(drop)} | {claims.mean(peak):.2f} | {claims.mean(end):.2f} | "
            f"{claims.mean(drop):.2f} | " + " | ".join(cells) + " |"
        )
    return [*lines, ""]
