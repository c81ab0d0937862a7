"""Shared fixtures: tiny nets and real images from data/ so the suite runs in minutes on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lipcore import NetConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


@pytest.fixture(autouse=True)
def _threads_and_seed():
    torch.set_num_threads(2)
    # Tests that draw from the global generator must not depend on which tests ran before them.
    torch.manual_seed(0)


@pytest.fixture
def tiny_cfg() -> NetConfig:
    return NetConfig(channels_down=8, channels_up=8, channels_skip=2, scales=3, in_channels=4)


@pytest.fixture
def f16_small() -> torch.Tensor:
    from lipcore.io import center_crop_to, load_image

    return center_crop_to(load_image(DATA / "f16.png"), 32, 32)[None]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A scratch project directory holding data/f16.png, baby.png and kate.png, made the working directory."""
    import shutil

    (tmp_path / "data").mkdir()
    for name in ("f16", "baby", "kate"):
        shutil.copy(DATA / f"{name}.png", tmp_path / "data" / f"{name}.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_params(**overrides) -> dict:
    """A pipeline small enough for seconds per stage: 32x32 images, 8 channels, a few iterations, 2 rounds."""
    params = {
        "setting": "tiny",
        "sparsity": 0.3,
        "protocol": "blind",
        "device": "cpu",
        "seed": 0,
        "seeds": [0],
        "image_size": 32,
        "images": ["f16", "baby"],
        "tasks": ["denoise"],
        "task_defs": {
            "denoise": {"degradation": {"task": "denoise", "sigma": 0.1}, "fit": {"ema_weight": 0.9}},
            "inpaint": {"degradation": {"task": "inpaint", "keep": 0.5}, "fit": {"ema_weight": 0.0}},
        },
        "net": {"scales": 3, "in_channels": 4, "channels_down": 8, "channels_up": 8, "channels_skip": 2},
        "fit": {"iterations": 12, "log_every": 4, "es_window": 4, "es_patience": 4},
        "imp": {
            "fraction": 0.2,
            "scope": "global",
            "keep_input_dense": False,
            "rewind_iteration": 0,
            # short search fits: the pipeline's search-then-evaluate path runs in every stage test
            "search": {"iterations": 8, "early_bird": None, "early_bird_every": 4, "early_bird_patience": 2},
            "chain": [[1, 0], [2, 1]],
        },
        "evaluate": {
            "decoder_layers": 3,
            "curve_methods": ["random_global"],
            "baselines": ["random_global", "random_layer", "snip", "snip_layer", "snip_iterative"],
        },
        "transfer": {"pairs": "all"},
        # dvc.yaml interpolates multi.*: every key present (no group: no multi-image stage)
        "multi": {"task": "denoise", "modes": ["shared"], "rounds": None, "groups": {}},
    }
    params.update(overrides)
    return params


PROJECT_FILES = ["dvc.yaml", ".dvcignore", "data/f16.png", "data/baby.png", "data/kate.png", "data/masks"]


def make_project(path: Path, params: dict, code: bool = False) -> Path:
    """A scratch pipeline project at `path`: dvc.yaml, the shipped images, `params` as params.yaml
    (and, with code=True, copies of stages/ and lipcore/ for subprocess runs)."""
    import shutil

    import yaml

    for item in PROJECT_FILES + (["stages", "lipcore"] if code else []):
        src, dst = ROOT / item, path / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    return path


def dvc_stages(path: Path) -> list:
    """DVC's own resolved stages of the project at `path` (matrix expanded), dependencies first."""
    import networkx as nx
    from dvc.repo import Repo

    if not (path / ".dvc").exists():
        Repo.init(str(path), no_scm=True)
    with Repo(str(path)) as repo:
        return list(reversed(list(nx.topological_sort(repo.index.graph))))


def run_stage_in_process(stage) -> None:
    """Run a DVC stage's own command (`python -m stages.<name> ...`) by calling that module's main."""
    import importlib
    import shlex

    argv = shlex.split(stage.cmd)
    assert argv[:2] == ["python", "-m"], stage.cmd
    importlib.import_module(argv[2]).main(argv[3:])
