"""One problem's records from shards that each ran some of its seeds, stitched into the records one run of all
those seeds writes.

Every per-seed list of a record (evaluate's results.json, the transfer matrix) holds one entry per seed of the run
that wrote it, in its seeds' order, and every number of a seed is derived from names (lipcore.seeding) and
fitted apart from the other seeds: a seed's entries are the same whichever seeds ran beside it. So the lists are
joined seed by seed in the setting's order, and every summary over seeds is recomputed by the function the
stages use, on the same lists in the same order: the same bytes as one run of all the seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..evaluate import Tally, summarise_tally
from ..plumbing.params import Params
from ..transfer import tabulate

Part = tuple[dict[str, Any], Sequence[int]]  # a shard's record and the seeds it ran, in the setting's order


def join(parts: Sequence[Part], lists: Callable[[dict[str, Any]], dict[Any, list]], order: Sequence[int]) -> dict:
    """key -> one entry per seed (in `order`, the seeds the parts hold) of `lists(record)` of every part."""
    found: dict[Any, dict[int, Any]] = {}
    for record, seeds in parts:
        for key, values in lists(record).items():
            found.setdefault(key, {})
            if not values:  # a method the run never fits (a baseline at sparsity 0): [] in every run, kept
                continue
            if len(values) != len(seeds):
                raise ValueError(
                    f"a shard of seeds {list(seeds)} holds {len(values)} entries for {key!r}; its record is not "
                    "one run of those seeds (run the shard again)"
                )
            for seed, value in zip(seeds, values):
                if seed in found.setdefault(key, {}):
                    raise ValueError(f"seed {seed} is in two shards' records for {key!r}; remove one shard")
                found[key][seed] = value
    joined = {key: [by_seed[s] for s in order if s in by_seed] for key, by_seed in found.items()}
    if short := sorted(str(key) for key, values in joined.items() if 0 < len(values) < len(order)):
        raise ValueError(f"{short} hold no entry for some of seeds {list(order)} in a shard; run that shard again")
    return joined


def seeds_held(params: Params, parts: Sequence[Part]) -> list[int]:
    """The seeds the parts hold, in the setting's order."""
    held = {s for _, seeds in parts for s in seeds}
    return [s for s in params.seeds if s in held]


def results(params: Params, parts: Sequence[Part]) -> dict[str, Any]:
    """evaluate's results.json of one problem over the seeds its parts hold (stages/evaluate.py: write)."""
    order = seeds_held(params, parts)
    per_seed = join(parts, lambda r: r["per_seed"], order)
    flat = join(parts, lambda r: {(m, k): v for m, by in r["per_seed_curves"].items() for k, v in by.items()}, order)
    curves: dict[str, dict[str, list]] = {m: {} for m in parts[0][0]["per_seed_curves"]}  # a curve with no round too
    for (method, k), values in flat.items():
        curves.setdefault(method, {})[k] = values
    tally = Tally(
        curves={m: {int(k): v for k, v in by.items()} for m, by in curves.items()},
        headline=per_seed,
        effective=[s["sparsity"]["effective"] for s in per_seed["lip"]],
    )
    first = parts[0][0]
    summary = summarise_tally(params, first["summary"]["image"], first["summary"]["task"], tally)
    out = {"summary": summary, "per_seed": per_seed, "per_seed_curves": curves}
    if "long_run" in first:
        long = {k: first["long_run"][k] for k in ("factor", "iterations")}
        out["long_run"] = {**long, "per_seed": join(parts, lambda r: r["long_run"]["per_seed"], order)}
    if "channels" in first:
        fixed = {k: first["channels"][k] for k in ("fraction", "dense")}
        lip = join(parts, lambda r: r["channels"]["lip_parameters"], order)
        (rounds,) = join(parts, lambda r: {"per_seed": r["channels"]["per_seed"]}, order).values()
        out["channels"] = {**fixed, "lip_parameters": lip, "per_seed": rounds}
    return out


def matrix(params: Params, parts: Sequence[Part], ids: Sequence[str], nothing: str | None) -> dict[str, Any]:
    """The transfer matrix (matrix.json) over problems `ids` and the seeds the parts hold (stages/transfer.py)."""
    first = parts[0][0]
    if nothing:
        return tabulate({}, first["round"], first["point"], nothing)
    order = seeds_held(params, parts)
    wanted = set(ids)

    def cells_of(record: dict[str, Any]) -> dict[tuple[str, str], list]:
        return {(s, t): v for s, row in record["per_seed"].items() for t, v in row.items() if {s, t} <= wanted}

    cells: dict[str, dict[str, list]] = {}
    for (source, target), values in join(parts, cells_of, order).items():
        cells.setdefault(source, {})[target] = values
    return tabulate({s: cells[s] for s in ids if s in cells}, first["round"], first["point"], None)
