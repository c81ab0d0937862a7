"""What a stopped stage had finished, kept so that its rerun goes on from there instead of from the start.

DVC reruns a stopped stage whole. evaluate fits its seeds one after another, ~20 min each at the transfer
study's scale on a CPU, so a stop in its last seed cost the hour before it. After each seed it saves what it has
scored so far (its tally) in resume/<its --out>/, under a key of everything the result depends on: the stage's
arguments, the params file, the files of its input folders, the code of lipcore and stages, and what decides
the rounding (torch's version, the CPU's capability and thread count, the device and precision). A rerun whose
key matches skips the saved seeds; any other key starts afresh, so a tally is never joined to fits made from
other inputs, other code or on other arithmetic. Each seed's fits draw from their own named streams
(lipcore.seeding), so a resumed run writes the same bytes as one never stopped (tests/test_resume.py).

Scratch, not an output: git ignores resume/, dvc.yaml does not declare it, and the stage removes its file once its
outputs are written. The file is a pickle (torch.save) that only this code writes, replaced atomically: a stop
while saving leaves the previous seed's file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import lipcore
import stages
from lipcore import io
from lipcore.runtime import cuda_numerics, resolve_device, resolve_precision

from . import layout

log = logging.getLogger(__name__)

CODE = (Path(lipcore.__file__).parent, Path(stages.__file__).parent)  # the code a stage runs, where it is imported from


@dataclass(frozen=True)
class Saved:
    done: list[Any]  # the parts finished, in order (evaluate: seeds)
    state: Any  # what they added up to


class Checkpoint:
    """One stage's saved progress: load it (None when there is none for this key), save after each part, clear
    once the stage's outputs are written."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key

    def load(self) -> Saved | None:
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, weights_only=False)
            key, done, state = saved["key"], saved["done"], saved["state"]
        except Exception as err:  # noqa: BLE001 - an unreadable file only costs the fits it held
            log.warning("%s is unreadable (%s): starting afresh", self.path, err)
            return None
        if key != self.key:
            log.info("%s was saved from other inputs, code or arithmetic: starting afresh", self.path)
            return None
        return Saved(list(done), state)

    def save(self, done: list[Any], state: Any) -> None:
        with io.atomic_path(self.path) as tmp:
            torch.save({"key": self.key, "done": list(done), "state": state}, tmp)

    def clear(self) -> None:
        """Remove the file, and its folders up to resume/ as they empty."""
        self.path.unlink(missing_ok=True)
        io.sweep_stale(self.path)
        for folder in self.path.parents:
            if not folder.is_relative_to(layout.RESUME) or not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()


def checkpoint(out: Path | str, key: str) -> Checkpoint:
    """The checkpoint of the stage writing `out`: resume/<out>/progress.pt."""
    return Checkpoint(layout.scratch_dir(layout.RESUME, out) / layout.RESUME_FILE, key)


def stage_key(args: dict[str, Any], params_file: Path, inputs: Iterable[Path], device: str, precision: str) -> str:
    """A digest of everything a stage's result depends on (see the module's docstring)."""
    h = hashlib.sha256()
    h.update(json.dumps({k: str(v) for k, v in sorted(args.items())}).encode())
    h.update(json.dumps(arithmetic(device, precision), sort_keys=True).encode())
    for root in [params_file, *inputs]:
        _hash_files(h, root, _files(root))
    for root in CODE:
        _hash_files(h, root, sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts))
    return h.hexdigest()


def arithmetic(device: str, precision: str) -> dict[str, Any]:
    """What decides the rounding of a stage's fits besides its inputs."""
    dev = resolve_device(device)
    resolved = resolve_precision(precision, dev)
    return {
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "precision": resolved,
        "cuda": cuda_numerics(dev, resolved),
    }


def _files(root: Path) -> list[Path]:
    if not root.exists():
        raise FileNotFoundError(f"{root} not found: the stage's inputs must exist before it runs")
    return [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())


def _hash_files(h: Any, root: Path, files: list[Path]) -> None:
    for f in files:
        h.update(f.relative_to(root.parent).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
