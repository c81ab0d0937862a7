"""The report's channel tickets (evaluate.channels, stages.plumbing.channel_tickets): structured tickets that are
physically smaller nets, against the dense DIP and against unstructured LIP of about as many parameters.

Per round, pooled over every (image, task, seed): the ticket's parameters and FLOPs per fitting step as shares of
the dense net's, its PSNR, ticket − dense and ticket − LIP paired, LIP's round being the one whose nets keep the
number of parameters nearest the ticket's (conv weights kept + every bias and BN parameter, on both sides).
"""

from __future__ import annotations

from typing import Any

from lipcore.stats import Paired, paired

from . import claims

MARGIN_DB = 0.3  # "within 0.3 dB of dense": the bar for a ticket worth its speed


def _nearest_lip_round(lip_parameters: dict[str, list[int]], n: int) -> int:
    return min((int(k) for k in lip_parameters), key=lambda k: (abs(lip_parameters[str(k)][0] - n), k))


def rows(records: dict[str, dict], point: str) -> list[dict[str, Any]]:
    """One row per channel round: cost shares, mean PSNR, and the paired comparisons."""
    by_round: dict[int, dict[str, list]] = {}
    for rec in records.values():
        ch = rec.get("channels")
        if not ch:
            continue
        dense = [claims.psnr(s, point) for s in rec["per_seed_curves"]["lip"]["0"]]
        lip_curve = rec["per_seed_curves"]["lip"]
        for seed, tickets in enumerate(ch["per_seed"]):
            for t in tickets:
                r = by_round.setdefault(t["round"], {k: [] for k in ("t", "d", "lt", "l", "p", "f", "lk", "lp")})
                r["t"].append(claims.psnr(t, point))
                r["d"].append(dense[seed])
                r["p"].append(t["parameters"] / ch["dense"]["parameters"])
                r["f"].append(ch["dense"]["flops"] / t["flops"])
                if ch["lip_parameters"]:  # no IMP round (an empty imp.chain): nothing unstructured to compare
                    k = _nearest_lip_round(ch["lip_parameters"], t["parameters"])
                    r["l"].append(claims.psnr(lip_curve[str(k)][seed], point))
                    r["lk"].append(k)
                    r["lp"].append(ch["lip_parameters"][str(k)][seed] / ch["dense"]["parameters"])
    out = []
    for k, r in sorted(by_round.items()):
        out.append(
            {
                "round": k,
                "n": len(r["t"]),
                "parameters": claims.mean(r["p"]),
                "flops_ratio": claims.mean(r["f"]),
                "psnr": claims.mean(r["t"]),
                "vs_dense": paired(r["t"], r["d"]),
                "lip_rounds": sorted(set(r["lk"])),
                "lip_parameters": claims.mean(r["lp"]) if r["lp"] else None,
                "vs_lip": paired(r["t"], r["l"]) if r["l"] else None,
            }
        )
    return out


def within(p: Paired) -> str:
    """Whether the ticket is within MARGIN_DB of dense at 95% (its whole interval above -MARGIN_DB)."""
    if p.n < 2:
        return "not measured"
    return "yes" if p.low > -MARGIN_DB else ("no" if p.high < -MARGIN_DB else "not shown")


def section(records: dict[str, dict], point: str) -> list[str]:
    """The channel tickets' table (nothing when none were fitted)."""
    table = rows(records, point)
    if not table:
        return []
    fraction = next(r["channels"]["fraction"] for r in records.values() if r.get("channels"))
    lines = [
        "## Channel tickets: structured sparsity that runs faster",
        "",
        f"IMP over whole output channels: each round removes {fraction:.1%} of every conv's remaining channels "
        "(smallest L1 norm of the trained filter), and the ticket is a physically smaller skip net trained from "
        "the slice of LIP's rewind weights. *Parameters*: the small net's, as a share of the dense net's. *FLOPs "
        "×*: the dense net's FLOPs per fitting step over the ticket's (torch's counter, convs and matmuls). "
        f"Measured seconds per step: bench/channel_speed.py. PSNR at **{point}**, paired per (image, task, seed) "
        "against the dense DIP and against the LIP round of the nearest parameter count; *within "
        f"{MARGIN_DB} dB*: the whole 95% interval of ticket − dense above −{MARGIN_DB} dB.",
        "",
        "| round | fits | parameters | FLOPs × | PSNR | ticket − dense [95% CI] | detectable | "
        f"within {MARGIN_DB} dB of dense | LIP round (parameters) | ticket − LIP [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lip, vs_lip = "–", "–"
        if r["vs_lip"] is not None:
            lip = ", ".join(str(k) for k in r["lip_rounds"]) + f" ({r['lip_parameters']:.1%})"
            vs_lip = claims.fmt_paired(r["vs_lip"])
        lines.append(
            f"| {r['round']} | {r['n']} | {r['parameters']:.1%} | {r['flops_ratio']:.2f} | {r['psnr']:.2f} | "
            f"{claims.fmt_paired(r['vs_dense'])} | {claims.fmt_detectable(r['vs_dense'])} | "
            f"{within(r['vs_dense'])} | {lip} | {vs_lip} |"
        )
    return [*lines, ""]
