"""The Ray executor's parts (stages/executor). tests/test_pipeline_e2e.py runs it on a real DVC
repo and a local Ray cluster: it stops at a failing stage keeping what finished, picks up from there, builds the
whole pipeline, and DVC agrees with what it left."""

from __future__ import annotations

import sys

import pytest

from stages.executor.worker import StageRunner, module_call
from stages.plumbing.params import ExecutorConfig
from tests.conftest import THREADS

pytest.importorskip("ray", reason="the parallel executor needs ray: pip install -e '.[parallel]'")


def test_module_commands_run_in_process_and_others_in_a_shell():
    assert module_call("python -m stages.degrade --image data/f16.png --name 'f 16'") == (
        "stages.degrade",
        ["--image", "data/f16.png", "--name", "f 16"],
    )
    assert module_call("python3 -m stages.report --out report/x") == ("stages.report", ["--out", "report/x"])
    for cmd in ("python -m stages.report > log.txt", "python -m json.tool x", "bash run.sh", "python -m 'stages.x"):
        assert module_call(cmd) is None


def test_the_executor_runs_as_many_stages_as_the_cluster_holds_at_the_params_resources():
    """executor.num_cpus / num_gpus decide how many stages run at once (issue 27: the old test compared 2 with 2.0)."""
    from stages.executor.parallel import worker_count

    two_cores, gpu_box = {"CPU": 2.0}, {"CPU": 16.0, "GPU": 1.0}
    assert worker_count(two_cores, ExecutorConfig(num_cpus=1), None) == 2
    assert worker_count(two_cores, ExecutorConfig(num_cpus=2), None) == 1
    assert worker_count(two_cores, ExecutorConfig(num_cpus=1), 1) == 1  # --workers 1
    assert worker_count(gpu_box, ExecutorConfig(num_cpus=1, num_gpus=0.25), None) == 4  # four stages share the GPU
    assert worker_count(gpu_box, ExecutorConfig(num_cpus=8, num_gpus=0.25), None) == 2  # the CPUs hold two
    with pytest.raises(SystemExit, match=r"cannot hold one stage of 1 CPU and 1 GPU: lower executor.num_cpus"):
        worker_count(two_cores, ExecutorConfig(num_cpus=1, num_gpus=1), None)


def test_a_worker_leaves_no_state_for_the_next_stage(project, monkeypatch):
    """Process-wide torch settings and the environment a stage changes are put back before the next one."""
    import os

    import torch

    import stages

    (project / "extra").mkdir()
    (project / "extra" / "meddle.py").write_text(
        "import os, torch\n"
        "def main(argv):\n"
        "    assert torch.initial_seed() == 67280421310721, torch.initial_seed()\n"
        "    assert 'MEDDLED' not in os.environ and not torch.backends.cudnn.benchmark\n"
        "    assert torch.get_num_threads() == 1\n"
        "    torch.manual_seed(1); torch.backends.cudnn.benchmark = True; os.environ['MEDDLED'] = '1'\n"
        "    torch.set_num_threads(2); os.chdir('/')\n"
    )
    monkeypatch.setattr(stages, "__path__", [*stages.__path__, str(project / "extra")])
    monkeypatch.delitem(sys.modules, "stages.meddle", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    runner = StageRunner(str(project), threads=1)
    try:
        first = runner.run("python -m stages.meddle")
        second = runner.run("python -m stages.meddle")
        assert first.ok and second.ok, (first, second)
        missing = runner.run("python -m stages.missing_stage")
        assert not missing.ok and missing.error.startswith("python -m stages.missing_stage:"), missing
    finally:
        torch.backends.cudnn.benchmark = False
        os.environ.pop("MEDDLED", None)
        torch.set_num_threads(THREADS)
        sys.modules.pop("stages.meddle", None)


def test_a_gpu_the_workers_would_not_see_is_refused(tmp_path, monkeypatch, capsys):
    """Ray hides the GPU from actors that ask for none: with executor.num_gpus 0 on a GPU machine, `device: auto`
    would run the stages on the CPU in the workers while `dvc repro` runs them on the GPU."""
    import torch
    import yaml

    from stages.executor import parallel
    from tests.conftest import tiny_params

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.chdir(tmp_path)
    for device in ("auto", "cuda"):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({**tiny_params(), "device": device}))
        assert parallel.main([]) == 1
        assert "executor.num_gpus 0 on a machine with a GPU" in capsys.readouterr().err
    parallel.refuse_hidden_gpus("auto", ExecutorConfig(num_gpus=0.5), None)  # a share: the workers see it
    parallel.refuse_hidden_gpus("cpu", ExecutorConfig(), None)  # asked for the CPU: nothing hidden
    parallel.refuse_hidden_gpus("auto", ExecutorConfig(), "auto")  # another cluster: its nodes, not this one
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    parallel.refuse_hidden_gpus("auto", ExecutorConfig(), None)


def test_ready_stages_start_critical_path_first_then_longest_first(tmp_path, monkeypatch):
    """Among stages with equal chains, the one whose params declare the most iterations starts first: a shard's
    four last stages started in DVC's order, its longest (8000 iterations a fit) 36 min after the others."""
    import yaml
    from dvc.repo import Repo

    from stages.executor import ledger

    params = {
        "fit": {"iterations": 300, "lr": 0.01},
        "task_defs": {"short": {"fit": {"iterations": 100}}, "long": {"fit": {"iterations": 8000, "on": True}}},
        "flag": True,  # a bool is not a count of iterations
    }
    stage = {"cmd": "true", "outs": []}
    stages = {
        "a_short": {**stage, "params": ["fit", "task_defs.short.fit"], "outs": ["a"]},
        "b_none": {**stage, "params": ["flag"], "outs": ["b"]},
        "c_long": {**stage, "params": ["fit", "task_defs.long.fit"], "outs": ["c"]},
        "d_after_a": {**stage, "deps": ["a"], "outs": ["d"]},  # a chain of 2 beats any count of iterations
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    monkeypatch.chdir(tmp_path)
    Repo.init(no_scm=True)
    with Repo(".") as repo:
        plan = ledger.plan(repo)
        got = {s.addressing: plan.iterations[s] for s in plan.stages}
        order = [s.addressing for s in sorted(plan.stages, key=plan.priority)]
    assert got == {"a_short": 300, "b_none": 0, "c_long": 8000, "d_after_a": 0}
    assert order[:2] == ["a_short", "c_long"]  # a_short's chain of 2 first, though c_long declares more iterations
    assert set(order[2:]) == {"b_none", "d_after_a"}  # their ties go in DVC's order
