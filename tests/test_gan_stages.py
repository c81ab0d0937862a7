"""The GAN study's stages on tiny params, run in-process in a scratch project: what each round writes, that the
random control keeps LIP's per-layer counts, and the refusals (m outside 1..n, a wrong round, a test face of
another size) that leave nothing written."""

from __future__ import annotations

import json

import pytest
import torch

from lipcore import gan, io, prune
from lipcore.gan import load_generator
from stages import gan_cs, gan_imp_round, gan_prepare
from tests.conftest import dvc_stages, make_project, run_stage_in_process, tiny_params

pytest.importorskip("gan_face_generate", reason=f"the generator's weights come from the wheel: {gan.INSTALL}")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Every stage up to gan_evaluate (the DIP baseline needs f16-denoise's rounds), one image, one task."""
    path = make_project(tmp_path_factory.mktemp("gan"), tiny_params(images=["f16"]))
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.chdir(path)
    try:
        for stage in dvc_stages(path):
            if not stage.addressing.startswith(("evaluate", "transfer", "report")):
                run_stage_in_process(stage)
    finally:
        monkeypatch.undo()
    return path


def test_a_round_prunes_20_percent_and_its_random_control_matches_every_layer(project):
    r1 = project / "outs/gan/rounds/r1"
    lip = load_generator(r1 / "generator.safetensors")
    mask, _ = prune.load_mask(r1 / "mask.safetensors", lip)
    random_mask, _ = prune.load_mask(r1 / "random_mask.safetensors", lip)
    assert prune.count_kept(mask) == gan.CONV_WEIGHTS - round(0.2 * gan.CONV_WEIGHTS)
    assert {n: int(m.sum()) for n, m in mask.items()} == {n: int(m.sum()) for n, m in random_mask.items()}
    assert prune.mask_distance(mask, random_mask) > 0.1
    for name, w in prune.prunable(lip).items():
        assert not w[~mask[name]].any()  # distillation kept the pruned weights at zero
    record = json.loads((r1 / "metrics.json").read_text())
    assert record["round"] == 1 and record["sparsity"] == pytest.approx(0.2, abs=1e-6)
    assert record["error_random"] > record["error_lip"]  # magnitude beats a random mask at imitating G


def test_every_generator_and_baseline_is_scored_on_every_test_image(project):
    results = json.loads((project / "outs/evaluate/gan/results.json").read_text())
    assert results["images"] == ["G0", "baby"] and results["kinds"] == ["in_range", "face"]
    methods = results["m"]["100"]["methods"]
    assert set(methods) == {"dense", "lip@1", "random@1", "rewind@1", "fista", "adjoint", "dip", "dip_lip@2"}
    assert all(set(v["per_image"]) == {"G0", "baby"} for v in methods.values())
    assert set(results["robust"]["methods"]) == {"dense/ls", "dense/mom", "lip@1/ls", "lip@1/mom"}
    recovered, _ = io.load_tensors(project / "outs/gan/cs/m100/recovered.safetensors")
    assert recovered["dense"].shape == (2, 3, 64, 64) and recovered["dense"].abs().max() <= 1
    # issue 26: LIP paired with random at its sparsity image by image, and the search's loss curve with its end
    at_m = results["m"]["100"]
    lip_random = at_m["paired_lip_vs_random"]["lip@1"]["all"]
    expected = [methods["lip@1"]["per_image"][i] - methods["random@1"]["per_image"][i] for i in ("G0", "baby")]
    assert lip_random["n"] == 2 and lip_random["mean"] == pytest.approx(sum(expected) / 2)
    curve = at_m["search_curve"]
    assert curve["every"] == 1 and len(curve["methods"]["dense"]) == 3 + 1  # 3 steps (tiny params) and the end
    assert set(curve["methods"]) == {"dense", "lip@1", "random@1", "rewind@1"}
    dense = curve["methods"]["dense"]
    assert curve["dense_last_fifth_drop"] == pytest.approx((dense[int(0.8 * 3)] - dense[-1]) / dense[-1])


@pytest.mark.parametrize("m", ["0", "12289"])
def test_gan_cs_refuses_measurement_counts_outside_1_to_n(project, monkeypatch, m):
    monkeypatch.chdir(project)
    out = project / "outs/gan/cs/bad"
    args = ["--m", m, "--rounds", "outs/gan/rounds", "--testset", "outs/gan/testset", "--faces", "data/faces"]
    with pytest.raises(ValueError, match=rf"--m: \[{m}\] measurements; each must be in 1\.\.12288"):
        gan_cs.main([*args, "--out", str(out)])
    assert not out.exists()


def test_gan_imp_round_refuses_round_0_and_writing_onto_its_parent(project, monkeypatch):
    monkeypatch.chdir(project)
    given = ["--pretrained", "outs/gan/rounds/r0", "--parent", "outs/gan/rounds/r0"]
    with pytest.raises(ValueError, match="IMP rounds count from 1"):
        gan_imp_round.main(["--round", "0", *given, "--out", "outs/gan/rounds/r9"])
    with pytest.raises(ValueError, match="also an input"):
        gan_imp_round.main(["--round", "1", *given, "--out", "outs/gan/rounds/r0"])
    assert not (project / "outs/gan/rounds/r9").exists()


def test_a_test_face_of_another_size_is_refused_and_nothing_is_written(project, tmp_path, monkeypatch):
    monkeypatch.chdir(project)
    faces = tmp_path / "faces"
    faces.mkdir()
    io.save_png(torch.rand(1, 3, 48, 64), faces / "baby.png")
    before = (project / "outs/gan/testset/testset.safetensors").read_bytes()
    args = ["--faces", str(faces), "--round0", "outs/gan/rounds/r0", "--testset", "outs/gan/testset"]
    with pytest.raises(ValueError, match="baby.png is 64x48; the generator's test faces must be 64x64"):
        gan_prepare.main(args)
    assert (project / "outs/gan/testset/testset.safetensors").read_bytes() == before


def test_fista_runs_on_the_params_device_and_returns_to_the_cpu(monkeypatch):
    """FISTA ran on one CPU thread whatever params.device; on `meta` every tensor it iterates on is there."""
    from types import SimpleNamespace

    from lipcore.fista import FistaConfig

    seen = []

    def pick(a, y, x, lambdas, iterations):
        seen.append({a.device.type, y.device.type, x.device.type})
        return lambdas[0], [0.0]

    def fista(a, y, shape, lam, iterations):
        seen.append({a.device.type, y.device.type})
        return torch.zeros(y.shape[0], *shape, device=y.device)

    monkeypatch.setattr(gan_cs, "pick_lambda", pick)
    monkeypatch.setattr(gan_cs, "fista_dct", fista)
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t: torch.zeros(t.shape))  # meta holds no data to copy
    params = SimpleNamespace(device="meta", gan=SimpleNamespace(fista=FistaConfig(iterations=2, lambdas=(0.1,))))
    a, y = torch.randn(5, 12), torch.randn(2, 5)
    lam, tried, x = gan_cs.fista_baseline(params, a, y, (3, 2, 2), (a, y[:1], torch.rand(1, 3, 2, 2)))
    assert seen == [{"meta"}, {"meta"}] and lam == 0.1 and x.device.type == "cpu" and x.shape == (2, 3, 2, 2)


def test_gan_scored_picks_the_rounds_compressive_sensing_scores(tmp_path):
    """gan.scored names the rounds gan_cs scores (null: all, in chain order); a round outside the chain is refused
    before any stage runs."""
    import yaml

    from stages.plumbing.params import load_params

    params = tiny_params()
    params["gan"] = {**params["gan"], "chain": [[1, 0], [2, 1], [3, 2]]}
    path = tmp_path / "params.yaml"
    for scored, expected in ((None, (1, 2, 3)), ([3, 1], (1, 3))):
        path.write_text(yaml.safe_dump({**params, "gan": {**params["gan"], "scored": scored}}))
        assert load_params(path).gan.scored_rounds == expected
    path.write_text(yaml.safe_dump({**params, "gan": {**params["gan"], "scored": [4]}}))
    with pytest.raises(ValueError, match=r"scored: \[4\] not rounds of gan.chain \[1, 2, 3\]"):
        load_params(path)


def test_a_study_can_leave_out_the_rewind_control_and_the_robust_setting(tmp_path, monkeypatch):
    """gan.rewind / gan.robust off (params.transfer-gan.yaml, for the budget): no rewind@k search, gan_robust writes
    a record that says it did not run, and evaluate, metrics and the report carry on without them; with no real
    faces the report names none."""
    from stages.reporting import gan_report

    params = tiny_params(images=["f16"])
    params["gan"] = {**params["gan"], "rewind": False, "robust": False, "in_range": 2, "faces": []}
    path = make_project(tmp_path / "project", params)
    monkeypatch.chdir(path)
    for stage in dvc_stages(path):
        if not stage.addressing.startswith(("evaluate", "transfer", "report")):
            run_stage_in_process(stage)
    robust = json.loads((path / "outs/gan/cs/robust/results.json").read_text())
    assert robust["off"] is True and robust["methods"] == {}
    results = json.loads((path / "outs/evaluate/gan/results.json").read_text())
    assert results["kinds"] == ["in_range", "in_range"] and results["robust"] is None
    methods = results["m"]["100"]["methods"]
    assert set(methods) == {"dense", "lip@1", "random@1", "fista", "adjoint", "dip", "dip_lip@2"}
    assert set(results["m"]["100"]["paired_vs_dense"]) == {"lip@1", "random@1"}
    assert "rewind" not in results["grid_columns"]
    assert "robust" not in json.loads((path / "metrics/gan.json").read_text())
    text = "\n".join(gan_report.section(path / "outs/evaluate/gan", tmp_path))
    assert "Not run here (`gan.robust: false`)." in text and "rewind@" not in text
    assert "2 in-range images (made by the dense generator) and 0 real faces. " in text
    assert "the rewind control was left out" in text
