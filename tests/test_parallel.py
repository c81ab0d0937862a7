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
