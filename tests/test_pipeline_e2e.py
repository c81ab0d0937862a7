"""The real pipeline: copy the project into a temporary git repo, `dvc repro` on tiny params, then
`dvc exp run -S sparsity=...` with a sparsity the existing rounds already reach, and check from DVC's own
output that no imp_round stage reran."""

import json

import pytest

from tests.conftest import run_command as run

pytestmark = pytest.mark.xdist_group("dvc-e2e")  # shares repro_project with tests/test_parallel.py


@pytest.fixture(scope="module")
def repo(repro_project):
    return repro_project[:4]


def test_repro_produces_every_artifact(repo):
    path, _, _, out = repo
    assert "Running stage 'imp_round@f16-denoise-0-link1'" in out
    for k in (0, 1, 2):
        assert (path / f"outs/rounds/f16-denoise/s0/r{k}/metrics.json").exists()
    head = json.loads((path / "metrics/baby-denoise.json").read_text())
    assert head["round"] == 2 and "decoder" in head["methods"]
    assert json.loads((path / "metrics/transfer.json").read_text())["psnr"]["f16-denoise"]["baby-denoise"] > 5
    assert "| lip |" in (path / "report/tiny/report.md").read_text()
    assert (path / "plots/sparsity/f16-denoise.csv").exists()
    assert "Running stage 'multi_imp_round@g-shared-0-link1'" in out
    multi = json.loads((path / "metrics/multi-g.json").read_text())
    assert multi["heldout"] == ["kate"] and multi["rounds"][-1]["psnr"]["multi_shared"] > 5
    report = (path / "report/tiny/report.md").read_text()
    assert "## Claims" in report and "## Multi-image LIP: group g" in report
    gan = json.loads((path / "metrics/gan.json").read_text())
    assert {"dense", "lip@1", "random@1", "rewind@1", "fista", "dip"} <= set(gan["m100"])
    assert "## GAN compressive sensing" in report and "dense/mom" in report


def test_changing_a_cs_setting_reruns_no_gan_round(repo):
    path, env, dvc, _ = repo
    out = run([dvc, "exp", "run", "-S", "gan.cs.lr=0.1"], path, env)
    ran = [line for line in out.splitlines() if line.startswith("Running stage")]
    assert any("gan_cs@" in line for line in ran) and any("gan_robust" in line for line in ran), out
    assert not [line for line in ran if "gan_imp_round" in line or "gan_prepare" in line or "gan_dip" in line], ran


def test_rerun_is_a_no_op(repo):
    path, env, dvc, _ = repo
    out = run([dvc, "repro"], path, env)
    assert "Running stage" not in out


def test_changing_sparsity_reruns_no_round(repo):
    path, env, dvc, _ = repo
    out = run([dvc, "exp", "run", "-S", "sparsity=0.2"], path, env)  # reached by round 1
    ran = [line for line in out.splitlines() if line.startswith("Running stage")]
    assert ran, out
    assert not [line for line in ran if "imp_round" in line or "dense_fit" in line or "degrade" in line], ran
    assert any("multi_evaluate@g" in line for line in ran)  # the headline round it marks moved
    assert any("evaluate@" in line for line in ran) and any("'report'" in line for line in ran)
    shown = run([dvc, "exp", "show", "--json"], path, env)
    assert "0.2" in shown
