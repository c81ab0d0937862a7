"""Reading and writing the pipeline's artifacts: safetensors with JSON metadata, JSON, CSV and PNG files, each
under the name stages.layout gives it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from lipcore import io, prune
from lipcore.config import DegradationConfig, FitConfig, NetConfig, from_dict
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


def load_problem(degrade_dir: Path) -> Problem:
    tensors, meta = io.load_tensors(Path(degrade_dir) / layout.OBSERVATION)
    clean, _ = io.load_tensors(Path(degrade_dir) / layout.CLEAN)
    cfg = from_dict(DegradationConfig, meta["degradation"])
    shape = tuple(meta["image_shape"])
    op = operator_from_state(cfg, shape, {k[3:]: v for k, v in tensors.items() if k.startswith("op.")})
    return Problem(op, tensors["y"], clean["x_true"], cfg)


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


def load_round_mask(round_dir: Path, cfg: NetConfig) -> prune.Mask | None:
    """The round's mask, or None for round 0 (the dense fit)."""
    path = Path(round_dir) / layout.MASK
    if not path.exists():
        return None
    mask, _ = prune.load_mask(path, skeleton(cfg))
    return mask


def read_fit_metrics(round_dir: Path) -> dict[str, Any]:
    return io.read_json(Path(round_dir) / layout.FIT_METRICS)


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
