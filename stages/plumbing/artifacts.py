"""Reading and writing the pipeline's artifacts: safetensors with JSON metadata, JSON, CSV and PNG files, each
under the name stages.layout gives it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from lipcore import io, prune
from lipcore.config import DegradationConfig, FitConfig, NetConfig
from lipcore.fit import FitResult
from lipcore.nets import skeleton
from lipcore.physics import Problem, operator_from_state
from lipcore.runtime import cuda_numerics, resolve_device, resolve_precision
from lipcore.schema import from_dict, unrecorded
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


def load_round_mask(
    round_dir: Path, cfg: NetConfig, k: int | None = None, parent_optional: bool = False
) -> prune.Mask | None:
    """The round's mask, or None for round 0 (the dense fit). k: the round it must be (a stale mask is refused).

    Refused unless it is the mask its round recorded: its real sparsity (zeros over the prunable weights) is the
    one its metadata and the round's metrics.json say, and it is nested in the mask of round k-1 beside it
    (`<seed dir>/r<k-1>`: every weight pruned there stays pruned). parent_optional: skip the nesting check when
    that mask is absent (imp_round, whose declared inputs are round 0 and round k-1, not round k-2)."""
    path = Path(round_dir) / layout.MASK
    if not path.exists():
        if k:
            raise FileNotFoundError(f"{path} not found: round {k} has no mask; rerun that round")
        return None
    net = skeleton(cfg)
    mask, meta = prune.load_mask(path, net)
    if k is not None and meta.get("round") != k:
        raise ValueError(f"{path} is the mask of round {meta.get('round')}, not of round {k}: rerun round {k}")
    if prune.count_kept(mask) == 0:
        raise ValueError(f"{path} keeps no weight at all; rerun the round that wrote it")
    k = meta.get("round") if k is None else k
    if not isinstance(k, int) or isinstance(k, bool):
        raise ValueError(f"{path}: its metadata names no round (round: {k!r}); rerun the round that wrote it")
    metrics = read_fit_metrics(round_dir, k)
    check_mask_sparsity(path, mask, meta, metrics["sparsity"], Path(round_dir) / layout.FIT_METRICS, k)
    check_parent_nesting(path, mask, k, lambda parent: prune.load_mask(parent, net)[0], parent_optional)
    return mask


def check_mask_sparsity(
    path: Path, mask: prune.Mask, meta: dict[str, Any], sparsity: Any, metrics_path: Path, k: int
) -> None:
    """Refuse a mask whose real sparsity is not what its metadata and its round's metrics.json record (to less
    than one weight: the records are the same count written as a fraction). sparsity: the metrics' record, a
    mapping {effective, and kept, total if present} or (the GAN rounds) the effective sparsity itself."""
    kept, total = prune.count_kept(mask), prune.count_total(mask)
    real = 1.0 - kept / total
    prunes = f"{path} prunes {real:.2%} of the prunable weights ({total - kept} of {total})"
    recorded = meta.get("effective_sparsity")
    if not (_is_number(recorded) and abs(recorded - real) * total < 0.5):  # (NaN fails too)
        says = f"{recorded:.2%}" if _is_number(recorded) else f"{recorded!r}"
        raise ValueError(f"{prunes}, but its metadata says {says}: the mask was edited or replaced; rerun round {k}")
    counts = sparsity if isinstance(sparsity, dict) else {"effective": sparsity}
    if not abs(counts["effective"] - real) * total < 0.5 or any(
        counts.get(key, value) != value for key, value in (("kept", kept), ("total", total))
    ):
        raise ValueError(
            f"{prunes}, but {metrics_path} says {counts['effective']:.2%}: the round's files disagree; rerun round {k}"
        )


def check_parent_nesting(
    path: Path, mask: prune.Mask, k: int, load: Callable[[Path], prune.Mask], parent_optional: bool = False
) -> None:
    """Refuse round k's mask (k >= 2) unless it is nested in the mask of round k-1 beside it (`../r<k-1>`, as
    layout names the rounds of one chain). parent_optional: pass when that mask is absent."""
    if k < 2:  # round 1's parent is the dense net
        return
    parent = path.parent.parent / f"r{k - 1}" / path.name
    if parent.exists():
        check_nested(path, mask, parent, load(parent), k)
    elif not parent_optional:
        raise ValueError(
            f"{path}: cannot check that round {k}'s mask is nested in round {k - 1}'s: {parent} not found; "
            f"rerun round {k - 1}"
        )


def check_nested(path: Path, mask: prune.Mask, parent_path: Path, parent: prune.Mask, k: int) -> None:
    """Refuse a round-k mask that keeps a weight its parent (round k-1) pruned."""
    revived = sum(int((mask[n] & ~parent[n]).sum()) for n in mask)
    if revived:
        raise ValueError(
            f"{path} is not nested in round {k - 1}'s mask {parent_path}: it keeps {revived} weight(s) that round "
            f"{k - 1} pruned (an IMP round only prunes more); rerun round {k}"
        )


# what the stages read of a round's metrics.json, and of its history.json
FIT_METRICS_KEYS = ("round", "sparsity", "output", "last", "es", "oracle_best")
HISTORY_KEYS = ("iteration", "psnr_out", "psnr_ema")


def read_record(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """A JSON record a stage wrote, refused (naming the file) without the keys the reader needs."""
    record = io.read_json(path)
    require(record, keys, path)
    return record


def read_fit_metrics(round_dir: Path, k: int | None = None) -> dict[str, Any]:
    """A round's metrics.json, checked (keys and types of what the stages read); k: the round it must hold."""
    path = Path(round_dir) / layout.FIT_METRICS
    metrics = read_record(path, FIT_METRICS_KEYS)
    check_fit_metrics(metrics, path)
    if k is not None and metrics["round"] != k:
        raise ValueError(f"{path} holds round {metrics['round']!r}, expected round {k}")
    return metrics


def read_history(round_dir: Path) -> dict[str, list]:
    """A round's history.json, checked: equal-length lists of numbers (null: not measured at that row)."""
    path = Path(round_dir) / layout.HISTORY
    history = read_record(path, HISTORY_KEYS)
    check_history(history, path)
    return history


def read_gan_record(round_dir: Path) -> dict[str, Any]:
    """A GAN round's metrics.json, checked: round an integer, sparsity a number."""
    path = Path(round_dir) / layout.FIT_METRICS
    record = read_record(path, ("round", "sparsity"))
    if not _is_int(record["round"]):
        raise _refuse(path, "round", record["round"], "an integer")
    if not _is_number(record["sparsity"]):
        raise _refuse(path, "sparsity", record["sparsity"], "a number")
    return record


RERUN = "rerun the stage that writes it"
SCORED_POINTS = ("last", "es", "oracle_best")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _refuse(path: Path, key: str, value: Any, expected: str) -> ValueError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ValueError(f"{path}: {key} is {shown}, not {expected}; {RERUN}")


def check_fit_metrics(metrics: dict[str, Any], path: Path) -> None:
    """The types of what the stages read of a round's metrics.json: round an integer, output 'ema' or 'raw',
    sparsity {nominal, effective: numbers; kept, total: integers, if present}, and each scored point
    {psnr, ssim: numbers; iteration: an integer}."""
    if not _is_int(metrics["round"]):
        raise _refuse(path, "round", metrics["round"], "an integer")
    if metrics["output"] not in ("ema", "raw"):
        raise _refuse(path, "output", metrics["output"], "one of ['ema', 'raw']")
    fields = {"sparsity": (("nominal", "effective"), ("kept", "total"))}
    fields |= {point: (("psnr", "ssim"), ("iteration",)) for point in SCORED_POINTS}
    for key, (numbers, integers) in fields.items():
        value = metrics[key]
        needed = [*numbers, *integers] if key != "sparsity" else list(numbers)
        if not isinstance(value, dict):
            raise _refuse(path, key, value, f"a mapping of {', '.join(needed[:-1])} and {needed[-1]}")
        missing = [n for n in needed if n not in value]
        if missing:
            raise ValueError(f"{path}: {key}: missing {missing}; {RERUN}")
        for name in numbers:
            if not _is_number(value[name]):
                raise _refuse(path, f"{key}.{name}", value[name], "a number")
        for name in integers:
            if name in value and not _is_int(value[name]):
                raise _refuse(path, f"{key}.{name}", value[name], "an integer")


def check_history(history: dict[str, Any], path: Path) -> None:
    """history.json: every column a list of numbers or null (iteration: numbers only), all as long as iteration."""
    for key, column in history.items():
        if not isinstance(column, list):
            raise _refuse(path, key, column, "a list of numbers")
        for i, value in enumerate(column):
            if key == "iteration" and not _is_number(value):
                raise _refuse(path, f"{key}[{i}]", value, "a number")
            if not (_is_number(value) or value is None):
                raise _refuse(path, f"{key}[{i}]", value, "a number or null")
    n = len(history["iteration"])
    for key, column in history.items():
        if len(column) != n:
            raise ValueError(
                f"{path}: {key} has {len(column)} entries but iteration has {n}; the columns must be equal-length "
                f"lists; {RERUN}"
            )


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


def write_numerics(out: Path, device: str, fit_cfg: FitConfig | None = None) -> None:
    """numerics.json in an output directory, for a stage that ran on CUDA: the GPU, versions, precision, TF32 and
    cuDNN settings its numbers were computed with (fit_cfg: its DIP fits' config; None: the GAN stages' fp32
    searches). Nothing on CPU, whose outputs stay byte for byte as before."""
    dev = resolve_device(device)
    precision, benchmark = (fit_cfg.precision, fit_cfg.cudnn_benchmark) if fit_cfg is not None else ("fp32", False)
    record = cuda_numerics(dev, resolve_precision(precision, dev), benchmark)
    if record is not None:
        io.write_json(out / layout.NUMERICS, record)


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
