"""Reading and writing the pipeline's artifacts: safetensors with JSON metadata, JSON, CSV and PNG files, each
under the name stages.layout gives it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from lipcore import io, prune
from lipcore.config import DegradationConfig, FitConfig, NetConfig, from_dict, unrecorded
from lipcore.fit import FitResult
from lipcore.nets import skeleton
from lipcore.physics import Problem, operator_from_state
from lipcore.scoring import reported_images
from lipcore.trials import Outcome

from . import layout


def cfg_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------- degrade


def save_problem(out: Path, problem: Problem, metadata: dict[str, Any]) -> None:
    ops = {f"op.{k}": v for k, v in problem.op.state_dict().items()}
    meta = {
        "degradation": cfg_dict(problem.degradation),
        "image_shape": list(problem.op.image_shape),
        **metadata,
    }
    io.save_tensors(out / layout.OBSERVATION, {"y": problem.y, **ops}, meta)
    io.save_tensors(out / layout.CLEAN, {"x_true": problem.x_true}, {"image_shape": meta["image_shape"]})


def load_problem(degrade_dir: Path, degradation: DegradationConfig | None = None, name: str | None = None) -> Problem:
    """The problem a degrade directory holds; with `degradation` / `name`, refuse one made for another task or
    image (a stage handed the wrong --obs, or a stale observation after the task's params changed)."""
    path = Path(degrade_dir) / layout.OBSERVATION
    tensors, meta = io.load_tensors(path)
    clean, _ = io.load_tensors(Path(degrade_dir) / layout.CLEAN)
    require(meta, ("degradation", "image_shape", "name"), path)
    require(tensors, ("y",), path)
    require(clean, ("x_true",), Path(degrade_dir) / layout.CLEAN)
    cfg = from_dict(DegradationConfig, meta["degradation"])
    with unrecorded():  # a consistency check: the observation (a dependency) already carries the degradation
        if degradation is not None and cfg != degradation:
            asked = cfg_dict(degradation)
            raise ValueError(f"{path} holds the degradation {cfg_dict(cfg)}, but the task asks for {asked}")
    if name is not None and meta["name"] != name:
        raise ValueError(f"{path} is an observation of image {meta['name']!r}, not {name!r}")
    shape = tuple(meta["image_shape"])
    try:
        op = operator_from_state(cfg, shape, {k[3:]: v for k, v in tensors.items() if k.startswith("op.")})
    except (RuntimeError, KeyError, ValueError) as err:  # parts missing, unexpected or of other shapes
        raise ValueError(f"{path}: the operator's saved parts do not fit its degradation: {err}") from err
    y, x_true = tensors["y"], clean["x_true"]
    if x_true.shape != (1, *shape) or op(x_true).shape != y.shape:
        raise ValueError(
            f"{degrade_dir}: clean image {tuple(x_true.shape)} and observation {tuple(y.shape)} do not fit the "
            f"recorded image shape {shape}; rerun degrade"
        )
    return Problem(op, y, x_true, cfg)


def require(record: Any, keys: tuple[str, ...], path: Path) -> None:
    """Refuse an artifact (a JSON record, a dict of tensors) without the keys a stage reads from it."""
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a mapping, got {type(record).__name__}; rerun the stage that writes it")
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"{path}: missing {missing} (an incomplete or foreign file?); rerun the stage that writes it")


# ---------------------------------------------------------------- rounds


def save_init(out: Path, state: dict[str, Tensor], z: Tensor, metadata: dict[str, Any]) -> None:
    io.save_tensors(out / layout.INIT, {**{f"net.{k}": v for k, v in state.items()}, "z": z}, metadata)


def load_init(round0: Path) -> tuple[dict[str, Tensor], Tensor]:
    """theta_0 and z of a round-0 directory."""
    tensors, _ = io.load_tensors(Path(round0) / layout.INIT)
    return {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, tensors["z"]


def load_weights(path: Path, cfg: NetConfig) -> dict[str, Tensor]:
    """Weights checked against the net of `cfg` (names and shapes)."""
    tensors, _ = io.load_tensors(path)
    io.check_against(tensors, skeleton(cfg).state_dict(), "weights", path)
    return tensors


def load_rewind(round0: Path, cfg: NetConfig) -> tuple[dict[str, Tensor], Tensor]:
    """What every IMP round of this seed starts from: the rewind weights and z."""
    _, z = load_init(round0)
    return load_weights(Path(round0) / layout.REWIND, cfg), z


def load_round_mask(round_dir: Path, cfg: NetConfig, k: int | None = None) -> prune.Mask | None:
    """The round's mask, or None for round 0 (the dense fit). k: the round it must be (a stale mask is refused)."""
    path = Path(round_dir) / layout.MASK
    if not path.exists():
        if k:
            raise FileNotFoundError(f"{path} not found: round {k} has no mask; rerun that round")
        return None
    mask, meta = prune.load_mask(path, skeleton(cfg))
    if k is not None and meta.get("round") != k:
        raise ValueError(f"{path} is the mask of round {meta.get('round')}, not of round {k}: rerun round {k}")
    if prune.count_kept(mask) == 0:
        raise ValueError(f"{path} keeps no weight at all; rerun the round that wrote it")
    return mask


# what the stages read of a round's metrics.json, and of its history.json
FIT_METRICS_KEYS = ("round", "sparsity", "output", "last", "es", "oracle_best")
HISTORY_KEYS = ("iteration", "psnr_out", "psnr_ema")


def read_record(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """A JSON record a stage wrote, refused (naming the file) without the keys the reader needs."""
    record = io.read_json(path)
    require(record, keys, path)
    return record


def read_fit_metrics(round_dir: Path, k: int | None = None) -> dict[str, Any]:
    """A round's metrics.json, checked; k: the round it must hold."""
    path = Path(round_dir) / layout.FIT_METRICS
    metrics = read_record(path, FIT_METRICS_KEYS)
    if k is not None and metrics["round"] != k:
        raise ValueError(f"{path} holds round {metrics['round']!r}, expected round {k}")
    return metrics


def read_history(round_dir: Path) -> dict[str, list]:
    return read_record(Path(round_dir) / layout.HISTORY, HISTORY_KEYS)


def check_round_out(out: Path, seed: int, k: int, inputs: tuple[Path, ...] = ()) -> None:
    """Before a round runs: refuse an --out that is one of its inputs, or that holds another round or seed (it
    would be replaced, and the rounds that build on it go stale)."""
    out = Path(out)
    for given in inputs:
        if out.resolve() == Path(given).resolve():
            raise ValueError(f"--out {out} is also an input of this round; each round writes its own directory")
    layout.ROUND_OUT.check(out)
    trained = out / layout.TRAINED
    if trained.exists():
        meta = io.read_metadata(trained)
        if (meta.get("seed"), meta.get("round")) != (seed, k):
            raise ValueError(
                f"refusing to replace {out}: it holds round {meta.get('round')} of seed {meta.get('seed')}, "
                f"not round {k} of seed {seed}; check --out"
            )


def check_round_seed(round_dir: Path, seed: int) -> None:
    """Refuse a round directory (an input) of another initialisation than `seed`."""
    path = Path(round_dir) / layout.TRAINED
    recorded = io.read_metadata(path).get("seed")
    if recorded != seed:
        raise ValueError(f"{path} belongs to seed {recorded}, not seed {seed}; check --dense / --parent / --seed")


def history_dict(res: FitResult) -> dict[str, list[float]]:
    return {k: [None if np.isnan(v) else float(v) for v in vals] for k, vals in res.history.items()}


def write_fit_outputs(
    out: Path, res: FitResult, scores: dict[str, Any], images: dict[str, Tensor], extra: dict[str, Any]
) -> None:
    """history.json, metrics.json and one PNG per reported output (last, es, oracle_best)."""
    io.write_json(out / layout.HISTORY, history_dict(res))
    io.write_json(out / layout.FIT_METRICS, {**extra, **scores})
    for point, image in images.items():
        io.save_png(image, out / layout.output_png(point))


def write_round(out: Path, k: int, outcome: Outcome, fit_cfg: FitConfig, sparsity: dict[str, Any]) -> None:
    """The trained weights and the evaluation fit's outputs of IMP round k (0: the dense fit)."""
    extra = {"round": k, "sparsity": sparsity, "search_iterations": outcome.search_iterations}
    write_fit_outputs(out, outcome.result, outcome.scores, reported_images(outcome.result, fit_cfg), extra)


# ---------------------------------------------------------------- summaries


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A small CSV (for DVC plots) written atomically; missing values are left empty."""
    import pandas as pd  # only the summary stages need it; keep the fitting stages' start-up short

    with io.atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False, float_format="%.6g")
