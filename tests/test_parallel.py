"""The Ray executor (stages/parallel.py) on a real DVC repo and a local Ray cluster: it must leave exactly what
`dvc repro` leaves (dvc.lock's every output md5, a clean `dvc status`), rerun only what DVC says changed, and stop
on the first failure keeping what finished."""

from __future__ import annotations

import re
import shutil
import sys

import pytest

from stages.params import ExecutorConfig
from stages.worker import StageRunner, module_call
from tests.conftest import DATA, THREADS, dvc_project, e2e_params, locked_outs, run_command, tiny_params

pytestmark = pytest.mark.xdist_group("dvc-e2e")  # shares repro_project with tests/test_pipeline_e2e.py

pytest.importorskip("ray", reason="the parallel executor needs ray: pip install -e '.[parallel]'")


def executor(path, env, *args, ok=True):
    return run_command([sys.executable, "-m", "stages.parallel", "--num-cpus", "2", *args], path, env, ok=ok)


def ran(out: str) -> list[str]:
    """The stages the executor ran, from its progress lines."""
    return re.findall(r"\] (\S+) done in ", out)


def test_module_commands_run_in_process_and_others_in_a_shell():
    assert module_call("python -m stages.degrade --image data/f16.png --name 'f 16'") == (
        "stages.degrade",
        ["--image", "data/f16.png", "--name", "f 16"],
    )
    assert module_call("python3 -m stages.report --out report/x") == ("stages.report", ["--out", "report/x"])
    for cmd in ("python -m stages.report > log.txt", "python -m json.tool x", "bash run.sh", "python -m 'stages.x"):
        assert module_call(cmd) is None


def test_executor_resources_are_read_as_given():
    assert ExecutorConfig(num_cpus=2, num_gpus=0.25) == ExecutorConfig(2.0, 0.25)


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


@pytest.fixture(scope="module")
def ray_project(tmp_path_factory):
    """The executor's run of e2e_params() from scratch: (path, env, dvc, its output)."""
    path, env, dvc = dvc_project(tmp_path_factory.mktemp("lip-ray"), e2e_params())
    out = executor(path, env)
    return path, env, dvc, out


def test_the_executor_leaves_the_dvc_lock_of_dvc_repro(ray_project, repro_project):
    path, env, dvc, out = ray_project
    assert "in-process" in out and "[27/27 done, 0 running, 0 waiting]" in out
    assert locked_outs(path) == repro_project[4]  # every stage, every output md5
    status = run_command([dvc, "status"], path, env)
    assert "Data and pipelines are up to date" in status, status


def test_a_second_run_runs_nothing(ray_project):
    path, env, _, _ = ray_project
    out = executor(path, env)
    assert ran(out) == [] and "0 ran" in out and "27 already up to date" in out


def test_changing_sparsity_reruns_only_the_scoring_stages(ray_project):
    path, env, dvc, _ = ray_project
    params = (path / "params.yaml").read_text()
    assert "sparsity: 0.3\n" in params
    (path / "params.yaml").write_text(params.replace("sparsity: 0.3\n", "sparsity: 0.2\n"))
    stages = {name.split("@")[0] for name in ran(executor(path, env))}
    # and the GAN study's DIP baseline, whose LIP ticket is the round at the headline sparsity
    assert stages == {"evaluate", "multi_evaluate", "transfer", "report", "gan_dip", "gan_evaluate"}, stages
    assert "Data and pipelines are up to date" in run_command([dvc, "status"], path, env)


@pytest.mark.xdist_group("dvc-failure")  # a project of its own: free to run beside the shared end-to-end run
def test_a_failing_stage_stops_the_run_and_dvc_repro_finishes_the_rest(tmp_path):
    """Run up to the dense fits only (targets, as for dvc repro): four stages show the whole behaviour."""
    path, env, dvc = dvc_project(tmp_path, tiny_params(images=["f16", "baby"]))
    (path / "data" / "baby.png").write_bytes(b"not a png")
    out = executor(path, env, "dense_fit", ok=False)
    assert "ERROR: stage degrade@baby-denoise failed" in out and "data/baby.png" in out, out
    assert "FAILED; starting no further stage" in out
    done = locked_outs(path)
    assert "degrade@baby-denoise" not in done and "dense_fit@baby-denoise-0" not in done
    assert set(ran(out)) == set(done)  # what finished is recorded, nothing else
    shutil.copy(DATA / "baby.png", path / "data" / "baby.png")
    rest = run_command([dvc, "repro", "dense_fit"], path, env)
    assert "Running stage 'degrade@baby-denoise'" in rest
    assert not any(f"Running stage '{name}'" in rest for name in done), rest
    assert "Data and pipelines are up to date" in run_command([dvc, "status", "dense_fit"], path, env)
