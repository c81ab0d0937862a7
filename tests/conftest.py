"""Shared fixtures: tiny nets and real images from data/ so the suite runs in minutes on 2 CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lipcore import NetConfig, runtime

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


# pytest-xdist runs the suite on one worker per core (pyproject.toml): one torch thread each, so that two workers
# do not fight over the two cores (2 processes x 2 threads ran 3-10x slower); alone, a test gets both cores
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


@pytest.fixture(autouse=True)
def _threads_and_seed():
    torch.set_num_threads(THREADS)
    # Tests that draw from the global generator must not depend on which tests ran before them.
    torch.manual_seed(0)


# Precision 'auto' is bf16 on a CPU with native bf16 (Zen 4, Sapphire Rapids) and fp32 on one without (Zen 3):
# machines of this type come with either, so a test that resolves 'auto' on the host passes on one and fails on
# the other. Every test is run with the detection replaced: by a failure, unless the test asks for `bf16_native`
# (it then runs under both answers, on any host) or is marked `host_precision` (it patches the probes itself).
AUTO_ON_THE_HOST = (
    "this test resolves precision 'auto' on the host CPU (bf16 on one with native bf16, fp32 on one without), so "
    "it passes on one CPU of this machine type and fails on the other: name the precision (FitConfig(precision="
    "'fp32')), or take the bf16_native fixture to run it under both resolutions"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "host_precision: the test patches the CPU's bf16 probes itself")


@pytest.fixture(autouse=True)
def _no_precision_from_the_host(request, monkeypatch):
    if "bf16_native" in request.fixturenames or request.node.get_closest_marker("host_precision"):
        return

    def refuse(device: torch.device) -> bool:
        pytest.fail(AUTO_ON_THE_HOST, pytrace=False)  # BaseException: no `except Exception` in a fit swallows it

    monkeypatch.setattr(runtime, "_native_bf16", refuse)


@pytest.fixture(params=[False, True], ids=["cpu-without-bf16", "cpu-with-bf16"])
def bf16_native(request, monkeypatch) -> bool:
    """The test runs twice: as on a CPU without native bf16 ('auto' -> fp32) and as on one with it (-> bf16)."""
    monkeypatch.setattr(runtime, "_native_bf16", lambda device: request.param)
    return request.param


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
            "baselines": ["random_global", "random_layer", "snip", "snip_layer", "snip_iterative", "oes"],
            "long_run": 2,  # the long runs through every stage test that evaluates
            "channels": {"rounds": 2, "fraction": None},  # and the channel tickets
        },
        "transfer": {"pairs": "all"},
        # dvc.yaml interpolates multi.*: every key present (no group: no multi-image stage)
        "multi": {"task": "denoise", "modes": ["shared"], "rounds": None, "groups": {}, "images": []},
        # the GAN study at its smallest: one round, one image of each kind, a few steps (the generator is real)
        "gan": {
            "fraction": 0.2,
            "chain": [[1, 0]],
            "distill": {"steps": 2, "batch": 2, "lr": 1e-4},
            "in_range": 1,
            "faces": ["baby"],
            "tune_face": "man",
            # every key dvc.yaml lists must be in the file: DVC refuses a params dependency it cannot find
            "cs": {
                **{"m": [100], "noise_std": 0.01, "iterations": 3, "lr": 0.05, "restarts": 1},
                **{"robust_m": 60, "outliers": 2, "outlier_value": 10000.0, "mom_block": 10},
            },
            "fista": {"iterations": 3, "lambdas": [0.01, 0.1]},
            "dip": {"ticket": None, "seed": None, "fit": {"iterations": 6}},
            "scored": None,
            "rewind": True,
            "robust": True,
        },
    }
    params.update(overrides)
    return params


PROJECT_FILES = [
    *(
        "dvc.yaml",
        ".dvcignore",
        "data/f16.png",
        "data/baby.png",
        "data/kate.png",
        "data/zebra.png",
        "data/masks",
        "data/faces",
    ),
]


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


# --- the real pipeline in a temporary git repo (tests/test_pipeline_e2e.py) -----------------------------------------


def e2e_params() -> dict:
    """Tiny params with three images and a multi-image group, so every kind of stage runs."""
    params = tiny_params(images=["f16", "baby", "kate"])
    params["multi"]["groups"] = {"g": {"train": ["f16", "baby"], "heldout": ["kate"]}}
    return params


def run_command(cmd: list[str], cwd: Path, env: dict, ok: bool = True, stdout_only: bool = False) -> str:
    """Run a command; its stdout and stderr together (stdout alone with stdout_only, e.g. DVC's --json output
    without its log lines); with ok=True it must exit with status 0."""
    import subprocess

    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == ok, f"{' '.join(cmd)} exited with {proc.returncode}:\n{out}"
    return proc.stdout if stdout_only else out


def dvc_project(path: Path, params: dict) -> tuple[Path, dict, str]:
    """A git + DVC repo at `path` holding the pipeline and `params`; returns (path, env, dvc executable).

    The env runs every stage with one torch thread: fits of a batch (multi-image `shared`) reduce in a
    thread-count-dependent order, so runs compared byte for byte must use the same count (README: parallel)."""
    import os
    import shutil
    import sys

    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
    if dvc is None:
        pytest.fail("dvc is not installed: run setup.sh (pip install -e '.[pipeline,dev]')")
    make_project(path, params, code=True)
    env = {
        **os.environ,
        # The stages run `python -m stages...`: put this interpreter first on PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(path),
        "OMP_NUM_THREADS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "DVC_NO_ANALYTICS": "1",
    }
    run_command(["git", "init", "-q"], path, env)
    run_command([dvc, "init", "-q"], path, env)
    shutil.copytree(ROOT / ".dvc" / "plots", path / ".dvc" / "plots")  # the plot templates dvc.yaml names
    return path, env, dvc


def locked_outs(path: Path) -> dict[str, dict[str, str]]:
    """dvc.lock's record of every stage's outputs in the project at `path`: {stage: {out path: md5}}."""
    from stages.executor.ledger import locked_outs as read

    return read(path / "dvc.lock")


def run_executor(path: Path, env: dict, *args: str, ok: bool = True, cpus: int = 2) -> str:
    """`python -m stages.executor` (the Ray executor) in the project at `path` on a local cluster of `cpus` cores."""
    import sys

    return run_command([sys.executable, "-m", "stages.executor", "--num-cpus", str(cpus), *args], path, env, ok=ok)


def ran_by_executor(out: str) -> list[str]:
    """The stages the executor ran, from its progress lines."""
    import re

    return re.findall(r"\] (\S+) done in ", out)


# The slowest files first: with one file per worker (--dist loadfile), the real-DVC pipeline must start at once,
# not after the quick files, or the suite waits for it at the end; the quick files last fill in whichever worker
# is free first.
SLOW_FIRST = (
    *("test_pipeline_e2e.py", "test_executor_faults.py", "test_params_deps.py", "test_stages.py"),
    *("test_bad_inputs.py", "test_shards.py", "test_fit.py"),
)


# Files that build DVC projects, run stages or the executor: `pytest -m "not pipeline"` leaves them out, the library's
# quick loop (README: "Tests").
PIPELINE = (
    *("test_pipeline_e2e.py", "test_executor_faults.py", "test_params_deps.py", "test_stages.py"),
    *("test_bad_inputs.py", "test_gan_stages.py", "test_parallel.py", "test_layout.py", "test_shards.py"),
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in PIPELINE:
            item.add_marker(pytest.mark.pipeline)

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: each file keeps its own order
