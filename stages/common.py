"""What the stages share: params.yaml parsing into lipcore configs, and the pipeline's artifact files.

This is the ONE module that names the files inside a stage's output directory; dvc.yaml names the
directories. Every tensor artifact is safetensors with JSON metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from torch import Tensor

from lipcore import io, prune
from lipcore.config import DegradationConfig, FitConfig, NetConfig, PruneConfig, SearchConfig, from_dict
from lipcore.fit import FitResult
from lipcore.lottery import Problem
from lipcore.physics import operator_from_state
from lipcore.seeding import generator

# File names inside stage output directories.
OBSERVATION = "observation.safetensors"  # y and the operator's state (its random parts)
CLEAN = "clean.safetensors"  # x_true: for scoring only, never read by a fit
INIT = "init.safetensors"  # theta_0 (all parameters and BN buffers) and z
REWIND = "rewind.safetensors"  # the weights IMP rewinds to (theta_0, or the state at rewind_iteration)
TRAINED = "trained.safetensors"  # weights after the search fit (what the next round prunes)
MASK = "mask.safetensors"
HISTORY = "history.json"
METRICS = "metrics.json"
OUTPUT_PNG = "output_{}.png"  # one per reported point: last, es, oracle_best


# ---------------------------------------------------------------- params


def pair_id(image: str, task: str) -> str:
    """The directory name of one image x task problem (dvc.yaml writes it as ${item.image}-${item.task})."""
    return f"{image}-{task}"


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the stage from the project root")
    return yaml.safe_load(path.read_text())


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return ap


def task_def(params: dict[str, Any], task: str) -> dict[str, Any]:
    defs = params.get("task_defs", {})
    if task not in defs:
        raise ValueError(f"task {task!r} is not defined under task_defs in params.yaml (have {sorted(defs)})")
    unknown = sorted(set(defs[task]) - {"degradation", "fit"})
    if unknown:
        raise ValueError(f"task_defs.{task}: unknown key(s) {unknown}; allowed: degradation, fit")
    return defs[task]


def degradation_cfg(params: dict[str, Any], task: str) -> DegradationConfig:
    return from_dict(DegradationConfig, task_def(params, task).get("degradation"))


def fit_cfg(params: dict[str, Any], task: str, **overrides: Any) -> FitConfig:
    """The base `fit` section with the task's own `fit` overrides (e.g. reg-noise, EMA) on top."""
    merged = {**params.get("fit", {}), **(task_def(params, task).get("fit") or {}), **overrides}
    return from_dict(FitConfig, merged)


def net_cfg(params: dict[str, Any]) -> NetConfig:
    return from_dict(NetConfig, params.get("net"))


def prune_cfg(params: dict[str, Any]) -> PruneConfig:
    imp = params.get("imp", {})
    return from_dict(PruneConfig, {k: imp[k] for k in ("fraction", "scope", "keep_input_dense") if k in imp})


def initial_net(params: dict[str, Any], seed: int, height: int, width: int) -> tuple[dict[str, Tensor], Tensor]:
    """theta_0 and z of initialisation `seed`.

    They depend on the seed index only (and z on the image size), never on the image: masks found on one
    image can then be retrained from the same theta_0 on another (transfer).
    """
    from lipcore.nets import build_net, make_input

    net = build_net(net_cfg(params), generator(params["seed"], "init", seed))
    z = make_input(net, height, width, generator(params["seed"], "z", seed))
    return {k: v.clone() for k, v in net.state_dict().items()}, z


def search_cfg(params: dict[str, Any]) -> SearchConfig:
    """imp.search: how the IMP search fits run (null entries: the evaluation fit's own settings)."""
    return from_dict(SearchConfig, params.get("imp", {}).get("search"))


def rewind_iteration(params: dict[str, Any]) -> int:
    return int(params.get("imp", {}).get("rewind_iteration", 0))


def chain(params: dict[str, Any]) -> list[tuple[int, int]]:
    """The IMP rounds as (round, parent) pairs, checked to form one chain 1 <- 2 <- 3 ... from the dense fit."""
    pairs = [tuple(int(v) for v in pair) for pair in params.get("imp", {}).get("chain", [])]
    for i, pair in enumerate(pairs, start=1):
        if pair != (i, i - 1):
            raise ValueError(f"imp.chain entry {i} is {list(pair)}; expected [{i}, {i - 1}] (rounds chain in order)")
    return pairs


def protocol(params: dict[str, Any]) -> str:
    value = params.get("protocol", "blind")
    if value not in ("paper", "blind"):
        raise ValueError(f"protocol must be 'paper' or 'blind', got {value!r}")
    return value


def cfg_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------- artifacts


def save_problem(out: Path, problem: Problem, metadata: dict[str, Any]) -> None:
    ops = {f"op.{k}": v for k, v in problem.op.state_dict().items()}
    meta = {
        "degradation": cfg_dict(problem.degradation),
        "image_shape": list(problem.op.image_shape),
        **metadata,
    }
    io.save_tensors(out / OBSERVATION, {"y": problem.y, **ops}, meta)
    io.save_tensors(out / CLEAN, {"x_true": problem.x_true}, {"image_shape": meta["image_shape"]})


def load_problem(obs_dir: Path) -> Problem:
    tensors, meta = io.load_tensors(Path(obs_dir) / OBSERVATION)
    clean, _ = io.load_tensors(Path(obs_dir) / CLEAN)
    cfg = from_dict(DegradationConfig, meta["degradation"])
    shape = tuple(meta["image_shape"])
    op = operator_from_state(cfg, shape, {k[3:]: v for k, v in tensors.items() if k.startswith("op.")})
    return Problem(op, tensors["y"], clean["x_true"], cfg)


def save_init(out: Path, state: dict[str, Tensor], z: Tensor, metadata: dict[str, Any]) -> None:
    io.save_tensors(out / INIT, {**{f"net.{k}": v for k, v in state.items()}, "z": z}, metadata)


def load_init(round0: Path) -> tuple[dict[str, Tensor], Tensor]:
    tensors, _ = io.load_tensors(Path(round0) / INIT)
    return {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, tensors["z"]


def load_weights(path: Path, cfg: NetConfig) -> dict[str, Tensor]:
    """Weights checked against a net built from `cfg` (names and shapes)."""
    from lipcore.nets import build_net

    tensors, _ = io.load_tensors(path)
    io.check_against(tensors, build_net(cfg).state_dict(), "weights", path)
    return tensors


def load_round_mask(round_dir: Path, cfg: NetConfig) -> prune.Mask | None:
    """The round's mask, or None for round 0 (the dense fit)."""
    path = Path(round_dir) / MASK
    if not path.exists():
        return None
    from lipcore.nets import build_net

    mask, _ = prune.load_mask(path, build_net(cfg))
    return mask


def history_dict(res: FitResult) -> dict[str, list[float]]:
    return {k: [None if np.isnan(v) else float(v) for v in vals] for k, vals in res.history.items()}


def write_fit_outputs(
    out: Path, res: FitResult, scores: dict[str, Any], images: dict[str, Tensor], extra: dict[str, Any]
) -> None:
    """history.json, metrics.json and one PNG per reported output (last, es, oracle_best)."""
    io.write_json(out / HISTORY, history_dict(res))
    io.write_json(out / METRICS, {**extra, **scores})
    for key, image in images.items():
        io.save_png(image, out / OUTPUT_PNG.format(key))


def shown_point(protocol_name: str) -> str:
    """Which output a report shows: the oracle best for the paper protocol, the ES-WMV stop for blind."""
    return "oracle_best" if protocol_name == "paper" else "es"


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A small CSV (for DVC plots) written atomically; missing values are left empty."""
    import pandas as pd  # only the summary stages need it; keep the fitting stages' start-up short

    with io.atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False, float_format="%.6g")


def device(params: dict[str, Any]) -> str:
    return str(params.get("device", "auto"))
