"""A stopped evaluate goes on from its last finished seed, and writes what an unstopped one writes, byte for byte."""

import shutil

import pytest

from stages import evaluate
from stages.plumbing import layout, resume
from tests.conftest import tiny_params
from tests.test_stages import run_chain, run_evaluate, write_params


def outputs(image="f16", task="denoise") -> dict[str, bytes]:
    """Every file evaluate writes, by path."""
    out = layout.evaluate_dir(image, task)
    files = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    for p in (
        layout.headline_metrics(image, task),
        layout.sparsity_plot(image, task),
        layout.iteration_plot(image, task),
        layout.grid_plot(image, task),
    ):
        files[p] = p.read_bytes()
    return files


def remove_outputs(files: dict) -> None:
    """What DVC does before it runs a stage: its outputs go."""
    shutil.rmtree(layout.evaluate_dir("f16", "denoise"))
    for p in files:
        p.unlink(missing_ok=True)


RETRAIN_SEED = evaluate.retrain_seed


class Stopped(Exception):
    """The stage's process stopped (what SIGKILL leaves is the same: only the files written before it)."""


class Stopper:
    """evaluate.retrain_seed, recording the seeds it fits; with stop_at, stopped when that seed starts."""

    def __init__(self, monkeypatch, stop_at=None):
        self.fitted, self.stop_at = [], stop_at
        monkeypatch.setattr(evaluate, "retrain_seed", self)

    def __call__(self, run, seed, tally):
        if seed == self.stop_at:
            raise Stopped
        self.fitted.append(seed)
        return RETRAIN_SEED(run, seed, tally)


def checkpoint_file():
    return layout.RESUME / layout.evaluate_dir("f16", "denoise") / layout.RESUME_FILE


@pytest.fixture
def three_seeds(project):
    """Every part of evaluate's tally made (the baselines, the long runs, the channel tickets), over 3 seeds."""
    params = tiny_params(images=["f16"], seeds=[0, 1, 2])
    write_params(project / "params.yaml", params)
    run_chain(params, seeds=(0, 1, 2))


@pytest.fixture
def two_seeds(project):
    """A quicker evaluate: one baseline, no long runs or channel tickets."""
    params = tiny_params(images=["f16"], seeds=[0, 1])
    params["evaluate"].update(baselines=["random_global"], long_run=0, channels={"rounds": 0, "fraction": None})
    write_params(project / "params.yaml", params)
    run_chain(params, seeds=(0, 1))


def test_a_stopped_evaluate_refits_only_the_seeds_it_had_not_finished(three_seeds, monkeypatch):
    whole = Stopper(monkeypatch)
    run_evaluate("f16", "denoise")
    assert whole.fitted == [0, 1, 2]
    assert not checkpoint_file().exists()  # removed once the outputs are written
    unstopped = outputs()
    remove_outputs(unstopped)

    with pytest.raises(Stopped):
        Stopper(monkeypatch, stop_at=2)
        run_evaluate("f16", "denoise")
    assert checkpoint_file().is_file()
    rerun = Stopper(monkeypatch)
    run_evaluate("f16", "denoise")
    assert rerun.fitted == [2]  # seeds 0 and 1 came from the checkpoint (before: every seed refitted)
    resumed = outputs()
    assert list(resumed) == list(unstopped)
    assert [p for p in unstopped if resumed[p] != unstopped[p]] == []
    assert not layout.RESUME.exists()  # nor any folder of it


def test_a_checkpoint_from_other_params_is_not_taken_up(two_seeds, project, monkeypatch):
    with pytest.raises(Stopped):
        Stopper(monkeypatch, stop_at=1)
        run_evaluate("f16", "denoise")
    assert checkpoint_file().is_file()
    # the same values, other bytes: any edit of the params file makes the saved seed someone else's
    (project / "params.yaml").write_text((project / "params.yaml").read_text() + "# edited\n")
    rerun = Stopper(monkeypatch)
    run_evaluate("f16", "denoise")
    assert rerun.fitted == [0, 1]


def test_a_checkpoint_on_other_arithmetic_is_not_taken_up(two_seeds, monkeypatch):
    with pytest.raises(Stopped):
        Stopper(monkeypatch, stop_at=1)
        run_evaluate("f16", "denoise")
    # a stop on one CPU, the rerun on another (machines of this type are AVX2 or AVX-512): their fits round
    # differently, so seed 0 is refitted rather than joined to the rerun's
    monkeypatch.setattr("torch.backends.cpu.get_cpu_capability", lambda: "OTHER")
    rerun = Stopper(monkeypatch)
    run_evaluate("f16", "denoise")
    assert rerun.fitted == [0, 1]


def test_an_unreadable_checkpoint_starts_afresh(tmp_path, caplog):
    saved = resume.Checkpoint(tmp_path / "progress.pt", key="k")
    saved.path.write_bytes(b"half a file")
    assert saved.load() is None
    assert "unreadable" in caplog.text
    saved.save([0], {"x": 1.5})
    assert resume.Checkpoint(saved.path, key="k").load() == resume.Saved([0], {"x": 1.5})
    assert resume.Checkpoint(saved.path, key="other").load() is None
    saved.clear()
    assert list(tmp_path.iterdir()) == [] and tmp_path.is_dir()  # only folders inside resume/ go with it


def test_the_checkpoint_lives_under_resume_whatever_the_out_path(tmp_path):
    for out in ("outs/evaluate/f16-denoise", "./outs/evaluate/f16-denoise", "/abs/outs/evaluate/f16-denoise"):
        path = resume.checkpoint(out, "k").path
        assert path.parts[0] == "resume" and path.name == layout.RESUME_FILE
    assert resume.checkpoint("../x", "k").path == layout.RESUME / "x" / layout.RESUME_FILE
