"""The report's statistics: LIP against each other method pair by pair, and the paper's claims checked.

A pair is one (image, task, seed): both methods fitted from the same theta_0, z and reg-noise stream on the
same observation. Differences are in dB of PSNR at one reported point (lipcore.stats: mean and 95% Student-t
interval over the pairs, and a verdict). Inputs are the records the stages wrote: evaluate's results.json per
problem, transfer's matrix.json, multi_evaluate's results.json per group. The methods, their order, what each
one is and its claim: lipcore.methods.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lipcore import methods
from lipcore.stats import Paired, paired


def psnr(scores: dict[str, Any], point: str) -> float:
    return float(scores[point]["psnr"])


def headline_pairs(
    records: dict[str, dict], method: str, point: str, task: str | None = None
) -> tuple[list[float], list[float]]:
    """LIP's and `method`'s PSNRs at `point`, one pair per (image, task, seed) of the problems that fitted it."""
    lip, other = [], []
    for rec in records.values():
        per_seed = rec["per_seed"]
        if (task is not None and rec["summary"]["task"] != task) or not per_seed.get(method):
            continue
        if len(per_seed[method]) != len(per_seed["lip"]):
            raise ValueError(f"{method}: {len(per_seed[method])} seeds against LIP's {len(per_seed['lip'])}")
        lip += [psnr(s, point) for s in per_seed["lip"]]
        other += [psnr(s, point) for s in per_seed[method]]
    return lip, other


def comparisons(records: dict[str, dict], point: str, task: str | None = None) -> dict[str, Paired]:
    """LIP - X at the headline round for every opponent X that was fitted (over all problems, or one task's)."""
    out = {}
    for method in methods.opponents():
        lip, other = headline_pairs(records, method, point, task)
        if lip:
            out[method] = paired(lip, other)
    return out


def rounds_against_dense(records: dict[str, dict], point: str) -> list[tuple[int, float, Paired]]:
    """LIP round k - the dense fit, per round k >= 1 of the IMP chain: (k, nominal sparsity, comparison)."""
    by_round: dict[int, tuple[float, list[float], list[float]]] = {}
    for rec in records.values():
        curve = rec["per_seed_curves"]["lip"]
        dense = [psnr(s, point) for s in curve["0"]]
        nominal = {p["round"]: p["nominal_sparsity"] for p in rec["summary"]["curves"]["lip"]}
        for k, per_seed in curve.items():
            if k == "0":
                continue
            entry = by_round.setdefault(int(k), (nominal[int(k)], [], []))
            entry[1].extend(psnr(s, point) for s in per_seed)
            entry[2].extend(dense)
    return [(k, s, paired(a, b)) for k, (s, a, b) in sorted(by_round.items())]


def transfer_pairs(
    records: dict[str, dict], transfer: dict[str, Any], point: str, across: str
) -> dict[str, tuple[list[float], list[float]]]:
    """Transferred masks against the target's own LIP mask and its random_global baseline, same seeds.

    across='task': masks of the same image found on another task; 'image': of another image, same task.
    Returns {'own': (transferred, own LIP), 'random_global': (transferred, random)}.
    """
    out: dict[str, tuple[list[float], list[float]]] = {"own": ([], []), "random_global": ([], [])}
    cells = transfer.get("per_seed") or {}
    for src, row in cells.items():
        for tgt, per_seed in row.items():
            s, t = records[src]["summary"], records[tgt]["summary"]
            same_image, same_task = s["image"] == t["image"], s["task"] == t["task"]
            if src == tgt or (across == "task" and not same_image) or (across == "image" and not same_task):
                continue
            moved = [psnr(x, point) for x in per_seed]
            for name, key in (("own", "lip"), ("random_global", "random_global")):
                ref = records[tgt]["per_seed"].get(key) or []
                if len(ref) == len(moved):
                    out[name][0].extend(moved)
                    out[name][1].extend(psnr(x, point) for x in ref)
    return out


def multi_values(result: dict[str, Any], point: str) -> dict[tuple[int, str], dict[str, list[float]]]:
    """Per scored round and search mode, one value per held-out (image, seed) pair, in the same order for every
    method: the group's mask ('multi'), the mean of the members' single-image masks ('single'), a random mask of
    the same sparsity ('random_global') and the image's own LIP mask ('own')."""
    rows = result["rows"]
    out: dict[tuple[int, str], dict[str, list[float]]] = {}
    for k in sorted({r["round"] for r in rows if r["round"] > 0}):
        at_k = [r for r in rows if r["round"] == k]
        keys = sorted({(r["heldout"], r["seed"]) for r in at_k})

        def value(heldout: str, seed: int, match, at_k=at_k) -> float:
            return mean(psnr(r, point) for r in at_k if (r["heldout"], r["seed"]) == (heldout, seed) and match(r))

        others = {
            "single": lambda r: r["method"].startswith("single_"),
            "random_global": lambda r: r["method"] == "random_global",
            "own": lambda r: r["method"] == "own",
        }
        for mode in result["summary"]["modes"]:
            name = f"multi_{mode}"
            entry = {"multi": [value(h, s, lambda r, n=name: r["method"] == n) for h, s in keys]}
            entry |= {other: [value(h, s, match) for h, s in keys] for other, match in others.items()}
            out[(k, mode)] = entry
    return out


def multi_comparisons(result: dict[str, Any], point: str) -> list[dict[str, Any]]:
    """Per scored round and search mode: the group's mask on held-out images against the single-image masks
    (their mean per held-out image and seed), a random mask of the same sparsity, and the image's own LIP."""
    return [compared(k, mode, v) for (k, mode), v in multi_values(result, point).items()]


def compared(k: int, mode: str, values: dict[str, list[float]]) -> dict[str, Any]:
    row: dict[str, Any] = {"round": k, "mode": mode, "n": len(values["multi"]), "multi": mean(values["multi"])}
    for other in ("single", "random_global", "own"):
        row[other] = mean(values[other])
        row[f"vs_{other}"] = paired(values["multi"], values[other])
    return row


def cross_scored(multi: dict[str, dict]) -> list[tuple[str, str]]:
    """Pairs of groups scored on each other's images (A's training images are B's held-out ones and back): two
    disjoint halves of one set of images, whose held-out pairs pool into one comparison."""
    sets = {g: (frozenset(r["summary"]["train"]), frozenset(r["summary"]["heldout"])) for g, r in multi.items()}
    names = sorted(sets)
    return [
        (a, b)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if sets[a][0] == sets[b][1]
        and sets[a][1] == sets[b][0]
        and multi[a]["summary"]["task"] == multi[b]["summary"]["task"]
    ]


def pooled_comparisons(multi: dict[str, dict], groups: tuple[str, ...], point: str) -> list[dict[str, Any]]:
    """multi_comparisons over several groups at once: their held-out (image, seed) pairs side by side."""
    pooled: dict[tuple[int, str], dict[str, list[float]]] = {}
    for g in groups:
        for key, values in multi_values(multi[g], point).items():
            into = pooled.setdefault(key, {name: [] for name in values})
            for name, v in values.items():
                into[name] += v
    return [compared(k, mode, v) for (k, mode), v in sorted(pooled.items())]


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


# ---------------------------------------------------------------- Markdown


def fmt_paired(p: Paired) -> str:
    """'+0.42 dB [+0.10, +0.74]' (or without interval when there are too few pairs)."""
    if p.n < 2:
        return f"{p.mean:+.2f} dB (n={p.n})"
    return f"{p.mean:+.2f} dB [{p.low:+.2f}, {p.high:+.2f}]"


def fmt_detectable(p: Paired) -> str:
    """The smallest difference the design detects with 80% power (lipcore.stats.detectable), e.g. '±0.45 dB'."""
    return "–" if p.n < 2 else f"±{p.detectable:.2f} dB"


def comparison_table(compared: dict[str, Paired]) -> list[str]:
    lines = [
        "| LIP vs | what it is | pairs | LIP − X, mean [95% CI] | detectable (80% power) | LIP wins | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, p in compared.items():
        what = methods.get(method).what
        lines.append(
            f"| {method} | {what} | {p.n} | {fmt_paired(p)} | {fmt_detectable(p)} | {p.wins}/{p.n} | "
            f"LIP {verdict_words(p)} |"
        )
    return lines


def verdict_words(p: Paired) -> str:
    return {"better": "better", "worse": "worse", "no difference": "no different"}.get(p.verdict, "not decided")


def claim_row(claim: str, found: str, status: str, p: Paired | None = None) -> str:
    """One claim; with `p`, the difference its design could detect, so that 'not shown' says whether it could have."""
    power = f" | {fmt_detectable(p)}" if p is not None else " | –"
    return f"| {claim} | {found}{power} | **{status}** |"


def superiority(p: Paired | None) -> str:
    """A claim 'LIP > X': holds when LIP is better at 95%."""
    if p is None or p.verdict == "too few pairs":
        return "not measured"
    return {"better": "holds", "no difference": "not shown (no difference at 95%)", "worse": "reversed"}[p.verdict]


# A claim "A ≈ B" (no loss) is a non-inferiority claim: it holds when the whole 95% interval of A - B lies
# above -MARGIN_DB. A wide interval that merely holds 0 shows nothing, and is said so.
MARGIN_DB = 0.5


def parity(p: Paired | None) -> str:
    """A claim 'A ≈ B' (no loss): holds when A - B > -MARGIN_DB at 95%, fails when A is worse at 95%."""
    if p is None or p.verdict == "too few pairs":
        return "not measured"
    if p.low > -MARGIN_DB:
        return "holds"
    if p.verdict == "worse":
        return "does not hold"
    return f"not shown (interval reaches below -{MARGIN_DB} dB)"


def non_inferior(p: Paired) -> bool:
    return p.n >= 2 and p.low > -MARGIN_DB


def claims_section(records: dict[str, dict], transfer: dict[str, Any], multi: dict[str, dict], point: str) -> list[str]:
    """The paper's claims, each with what this run measured (paired, at `point`) and whether it holds."""
    head = next(iter(records.values()))["summary"]["headline"]
    lines = [
        "## Claims",
        "",
        f"Each claim of the LIP paper, checked on this run at the headline round {head['round']} (nominal sparsity "
        f"{head['nominal_sparsity']:.1%}), PSNR at **{point}**. Differences are paired per (image, task, seed), "
        "mean and 95% Student-t interval over the pairs; 'X > Y' *holds* when the interval lies above 0, "
        f"'X ≈ Y' (no loss) when it lies above -{MARGIN_DB} dB. *Detectable*: the smallest true difference the "
        "claim's pairs would show with 80% power (two-sided paired t-test at 95%, from the spread of the pairs): "
        "a 'not shown' with a large detectable difference says the design could not have shown a smaller one.",
        "",
        "| claim | this run | detectable | verdict |",
        "|---|---|---|---|",
    ]
    if head["round"] == 0:
        why = "sparsity 0: the headline is the dense net, nothing to compare"
        return [*lines, claim_row("all", why, "not measured")]
    compared = comparisons(records, point)
    dense = compared.get("dense")
    curve = rounds_against_dense(records, point)
    reach = 0.0
    for _, s, p in curve:
        if not non_inferior(p):
            break
        reach = s
    found = f"LIP − dense {fmt_paired(dense)}" if dense else "–"
    if reach > 0:
        found += f"; within {MARGIN_DB} dB of dense (95%) at every round up to {reach:.1%} sparsity"
    else:
        found += f"; no round shown within {MARGIN_DB} dB of dense (95%)"
    found += f" (rounds measured up to {curve[-1][1]:.1%})"
    lines.append(claim_row(methods.get("dense").claim, found, parity(dense), dense))
    for method in methods.claimed():  # the baselines', then the controls'
        claim = methods.get(method).claim
        p = compared.get(method)
        if p is not None:
            found = f"LIP − {method} {fmt_paired(p)}, LIP wins {p.wins}/{p.n}"
            lines.append(claim_row(claim, found, superiority(p), p))
    lines += multi_claims(multi, point, head["round"])
    for across in ("task", "image"):
        lines.append(transfer_claim(records, transfer, point, across, multi, head["round"]))
    return lines


def scored_round(rows: list[dict[str, Any]], head: int) -> int:
    """The multi-image round a claim reads: the headline round, or the highest scored one below it (else the
    lowest scored)."""
    scored = sorted({r["round"] for r in rows if r["round"] > 0})
    return max([k for k in scored if k <= head], default=scored[0])


def multi_claims(multi: dict[str, dict], point: str, head: int) -> list[str]:
    """One row per group and mode at the claim's round; a pair of groups scored on each other's images gives one
    pooled row instead (its held-out pairs side by side: twice the pairs of either)."""
    claim = "Multi-image masks transfer to unseen images better than single-image masks"
    if not multi:
        return [claim_row(claim, "no multi-image group in this run (params: multi.groups)", "not measured")]
    pairs = cross_scored(multi)
    units = [(f"groups {a} + {b} (each scored on the other's images)", (a, b)) for a, b in pairs]
    paired_up = {g for pair in pairs for g in pair}
    units += [(f"group {g}", (g,)) for g in multi if g not in paired_up]
    lines = []
    for name, groups in units:
        k = min(scored_round(multi[g]["rows"], head) for g in groups)
        for r in (r for r in pooled_comparisons(multi, groups, point) if r["round"] == k):
            p = r["vs_single"]
            found = (
                f"{name}, {r['mode']} mode, round {k}: multi − single {fmt_paired(p)} on {r['n']} held-out "
                f"(image, seed) pairs; multi − random {fmt_paired(r['vs_random_global'])}"
            )
            lines.append(claim_row(claim, found, superiority(p), p))
    return lines


def transfer_claim(
    records: dict[str, dict], transfer: dict[str, Any], point: str, across: str, multi: dict[str, dict], head: int
) -> str:
    claim = f"LIP masks transfer across {across}s (≈ the target's own LIP mask)"
    pairs = transfer_pairs(records, transfer, point, across)
    moved, own = pairs["own"]
    if len(moved) < 2 and across == "image" and multi:
        return multi_transfer_claim(claim, multi, point, head)
    if len(moved) < 2:
        why = transfer.get("note") or f"no two problems that differ only in their {across} (transfer.pairs)"
        return claim_row(claim, why, "not measured")
    p = paired(moved, own)
    found = f"transferred − own {fmt_paired(p)} over {p.n} (source, target, seed)"
    rand_moved, rand = pairs["random_global"]
    if len(rand_moved) >= 2:
        found += f"; transferred − random_global {fmt_paired(paired(rand_moved, rand))}"
    return claim_row(claim, found, parity(p), p)


def multi_transfer_claim(claim: str, multi: dict[str, dict], point: str, head: int) -> str:
    """Across images from the multi-image scoring: each member's single-image mask retrained on a held-out image
    against that image's own LIP mask (one pair per group, held-out image, member and seed)."""
    moved, own = [], []
    for result in multi.values():
        rows = result["rows"]
        k = scored_round(rows, head)
        mine = {(r["heldout"], r["seed"]): psnr(r, point) for r in rows if r["round"] == k and r["method"] == "own"}
        for r in rows:
            if r["round"] == k and r["method"].startswith("single_"):
                moved.append(psnr(r, point))
                own.append(mine[(r["heldout"], r["seed"])])
    p = paired(moved, own)
    found = f"(from the multi-image scoring, round {k}) single-image mask − held-out image's own {fmt_paired(p)}"
    return claim_row(claim, f"{found} over {p.n} (member, held-out image, seed)", parity(p), p)


# The run-length rule (issue 26): a task's fits are long enough when the dense DIP's oracle best falls before
# RUN_EARLY of the iterations it ran in at least RUN_SHARE of its fits (a peak later than that: still improving).
# Noise-free tasks (inpainting, SR) do not overfit: their PSNR creeps up by hundredths of a dB to any length
# (report/transfer-study.md: the 8000-step pilot), so their peak is wherever the creep tops out. For them the rule
# is a plateau: the best PSNR so far gains less than RUN_FLAT_DB over the run's last fifth in RUN_SHARE of the fits.
# A peak before RUN_EARLY is a plateau too (the best so far then gains nothing).
# Some images creep by tenths of a dB per fifth at any affordable length (part 3's first shard: kate, a smooth
# face at 42 dB, gained 0.35-0.47 dB over inpainting's last fifth of 8000 steps and SR x4's of 3000), so the check
# also asks what the study's headline needs of the length: does LIP - dense (best so far, paired per fit) move over
# the last fifth? The comparison is flat when the 95% interval of that shift lies within +-RUN_FLAT_DB: stopping at
# 80% of the run would not have changed it by more than the plateau rule allows the level to move.
RUN_EARLY, RUN_SHARE, RUN_FLAT_DB = 0.8, 0.9, 0.1


def run_length_check(records: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """Per task, over the dense fits of every (image, seed): where the oracle best fell in the run, how long the
    runs were, how many stopped at their own ES-WMV detection (with fit.es_stop; the others ran to their cap), and
    whether the rule holds."""
    fits: dict[str, list[dict[str, Any]]] = {}
    for rec in records.values():
        for s in rec["per_seed"]["dense"]:
            if "oracle_best" in s:
                fits.setdefault(rec["summary"]["task"], []).append(s)
    out = {}
    for task, dense in fits.items():
        best = [s["oracle_best"]["iteration"] for s in dense]
        ran = [s["last"]["iteration"] for s in dense]
        stopped = sum(s.get("es_detected") is not None and s["last"]["iteration"] < max(ran) for s in dense)
        early = sum(b <= RUN_EARLY * n for b, n in zip(best, ran))
        gains = [late_gain(s) for s in dense]
        known = [g for g in gains if g is not None]  # records from before best_by_tenth have none
        flat = sum(g < RUN_FLAT_DB for g in known) if len(known) == len(dense) else None
        shift = lip_late_shift(records, task)
        out[task] = {
            "fits": len(dense),
            "best": sorted(best),
            "ran": sorted(ran),
            "stopped_by_es": stopped,
            "peak_early": early,
            "holds": early >= RUN_SHARE * len(dense),
            "late_gain": sorted(known),
            "flat": flat,
            "plateau": flat is not None and flat >= RUN_SHARE * len(dense),
            "lip_shift": shift,
            "lip_flat": shift is not None and shift.n >= 2 and -RUN_FLAT_DB < shift.low and shift.high < RUN_FLAT_DB,
        }
    return out


def lip_late_shift(records: dict[str, dict], task: str) -> Paired | None:
    """How LIP - dense at the headline round (best PSNR so far, paired per fit) moved over the run's last fifth:
    (LIP - dense at the end) - (LIP - dense at RUN_EARLY of the run). None when a fit lacks best_by_tenth (records
    from before LIP's was recorded) or the headline is the dense net itself."""
    at_end, at_early = [], []
    for rec in records.values():
        per_seed = rec["per_seed"]
        if rec["summary"]["task"] != task or not per_seed.get("lip"):
            continue
        early = round(10 * RUN_EARLY) - 1
        for dense, lip in zip(per_seed["dense"], per_seed["lip"], strict=True):
            rises = dense.get("best_by_tenth"), lip.get("best_by_tenth")
            if lip["round"] == 0 or any(not r or None in (r[-1], r[early]) for r in rises):
                return None
            dense_rise, lip_rise = rises
            at_end.append(lip_rise[-1] - dense_rise[-1])
            at_early.append(lip_rise[early] - dense_rise[early])
    return paired(at_end, at_early) if at_end else None


def late_gain(dense: dict[str, Any]) -> float | None:
    """How much a dense fit's best PSNR so far rose over the run's last fifth (evaluate's best_by_tenth), dB."""
    tenths = dense.get("best_by_tenth")
    if not tenths or tenths[-1] is None:
        return None
    at = tenths[round(10 * RUN_EARLY) - 1]
    return tenths[-1] - at if at is not None else None


def run_lengths(records: dict[str, dict]) -> str:
    """How long each task's dense fits ran (their longest: a fit ES-WMV stopped ran less), as the report's header
    says it: one number when every task ran as long, else one per task (task_defs.<task>.fit.iterations)."""
    ran = {task: c["ran"][-1] for task, c in run_length_check(records).items()}
    if not ran:
        return "no dense fit recorded its length"
    if len(set(ran.values())) == 1:
        return f"{next(iter(ran.values()))} iterations per fit"
    return "iterations per fit: " + ", ".join(f"{task} {n}" for task, n in ran.items())


def run_length_lines(records: dict[str, dict]) -> list[str]:
    """The run-length check as a table, one row per task."""
    lines = [
        "## Run length",
        "",
        f"The dense DIP's oracle-best iteration (picked with the ground truth) within the iterations each fit ran. "
        f"A task's runs are long enough when the peak falls before {RUN_EARLY:.0%} of the run in at least "
        f"{RUN_SHARE:.0%} of its fits; a later peak says the fit was still improving when it ended. Noise-free "
        "tasks (inpainting, SR) do not overfit but creep up to any length, so for them the check is a plateau: the "
        f"best PSNR so far gains less than {RUN_FLAT_DB:g} dB over the last {1 - RUN_EARLY:.0%} of the run in "
        f"{RUN_SHARE:.0%} of the fits (an early peak is a plateau too). *Stopped by ES-WMV*: fits that ended at "
        "their own ES-WMV detection before the longest run of the task (fit.es_stop). *LIP − dense over the last "
        f"fifth*: how the headline comparison (LIP at the headline round − dense, best PSNR so far, paired per fit) "
        f'moved between {RUN_EARLY:.0%} of the run and its end; a task whose level still creeps passes "(LIP − '
        f"dense flat)\" when that shift's 95% interval lies within ±{RUN_FLAT_DB:g} dB: a longer run raises both, "
        "and would not change the headline by more than the plateau rule allows.",
        "",
        "| task | fits | oracle best at: min / median / max | iterations run: min / median / max | "
        f"stopped by ES-WMV | peak before {RUN_EARLY:.0%} of the run | best so far gains < {RUN_FLAT_DB:g} dB in "
        "the last fifth (max gain) | LIP − dense over the last fifth | check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, c in run_length_check(records).items():
        best, ran, n = c["best"], c["ran"], c["fits"]
        flat = "–" if c["flat"] is None else f"{c['flat']} of {n} ({c['late_gain'][-1]:.2f} dB)"
        shift = "–" if c["lip_shift"] is None else fmt_paired(c["lip_shift"])
        verdict = (
            "passes"
            if c["holds"]
            else "passes (plateau)"
            if c["plateau"]
            else "passes (LIP − dense flat)"
            if c["lip_flat"]
            else "fails"
        )
        lines.append(
            f"| {task} | {n} | {best[0]} / {best[n // 2]} / {best[-1]} | {ran[0]} / {ran[n // 2]} / {ran[-1]} | "
            f"{c['stopped_by_es']} of {n} | {c['peak_early']} of {n} | {flat} | {shift} | **{verdict}** |"
        )
    return lines


def collapse_lines(records: dict[str, dict]) -> list[str]:
    """Fits whose mask pruned a whole layer away (its output no longer depends on the input z)."""
    counts: dict[str, list[int]] = {}
    layers: dict[str, set[str]] = {}
    for rec in records.values():
        for method, per_seed in rec["per_seed"].items():
            for s in per_seed:
                if "collapsed_layers" not in s:
                    continue
                c = counts.setdefault(method, [0, 0])
                c[1] += 1
                if s["collapsed_layers"]:
                    c[0] += 1
                    layers.setdefault(method, set()).update(s["collapsed_layers"])
    lines = ["## Layer collapse", "", "Fits at the headline round whose mask keeps no weight of some layer:", ""]
    for method, (bad, total) in counts.items():
        where = f" (layers: {', '.join(sorted(layers[method]))})" if bad else ""
        lines.append(f"- {method}: {bad} of {total}{where}")
    return lines


def multi_section(multi: dict[str, dict], point: str) -> list[str]:
    """A table per pair of cross-scored groups (their held-out pairs pooled), then one per group."""
    lines = []
    for a, b in cross_scored(multi):
        s = multi[a]["summary"]
        intro = (
            f"Groups {a} (masks searched on {s['train']}) and {b} (on {s['heldout']}), {s['task']}: each group's "
            f"masks retrained from theta_0 on the other group's images, the held-out (image, seed) pairs of both "
            f"side by side. PSNR at {point}, mean over the pairs. *single*: the mean of the members' own masks."
        )
        lines += multi_table(
            f"## Multi-image LIP: groups {a} + {b}, pooled", intro, pooled_comparisons(multi, (a, b), point)
        )
    for group, result in multi.items():
        s = result["summary"]
        intro = (
            f"Masks searched on {s['train']} ({s['task']}), retrained from theta_0 on the held-out {s['heldout']}; "
            f"PSNR at {point}, mean over held-out images and seeds. *single*: the mean of the members' own masks."
        )
        lines += multi_table(f"## Multi-image LIP: group {group}", intro, multi_comparisons(result, point))
    return lines


def multi_table(title: str, intro: str, rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        title,
        "",
        intro,
        "",
        "| round | mode | pairs | multi | single | random | own LIP | multi − single [95% CI] | detectable | "
        "multi − random [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['round']} | {r['mode']} | {r['n']} | {r['multi']:.2f} | {r['single']:.2f} | "
            f"{r['random_global']:.2f} | {r['own']:.2f} | {fmt_paired(r['vs_single'])} {r['vs_single'].verdict} | "
            f"{fmt_detectable(r['vs_single'])} | {fmt_paired(r['vs_random_global'])} {r['vs_random_global'].verdict} |"
        )
    return [*lines, ""]
