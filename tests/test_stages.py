"""Each stage's main, called in-process on tiny params in a scratch project directory."""

import json
import shutil

import pytest
import torch
import yaml

from lipcore import io, prune
from stages import common, degrade, dense_fit, evaluate, imp_round, report, transfer
from tests.conftest import DATA, tiny_params


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    for name in ("f16", "baby"):
        shutil.copy(DATA / f"{name}.png", tmp_path / "data" / f"{name}.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_params(path, params):
    path.write_text(yaml.safe_dump(params))


def run_chain(params, image="f16", task="denoise", seeds=(0,)):
    pid = f"{image}-{task}"
    degrade.main(["--image", f"data/{image}.png", "--name", image, "--task", task, "--out", f"outs/degrade/{pid}"])
    for s in seeds:
        base = f"outs/rounds/{pid}/s{s}"
        dense_fit.main(["--obs", f"outs/degrade/{pid}", "--task", task, "--seed", str(s), "--out", f"{base}/r0"])
        for k, parent in params["imp"]["chain"]:
            imp_round.main(
                [
                    "--obs",
                    f"outs/degrade/{pid}",
                    "--task",
                    task,
                    "--seed",
                    str(s),
                    "--round",
                    str(k),
                    "--dense",
                    f"{base}/r0",
                    "--parent",
                    f"{base}/r{parent}",
                    "--out",
                    f"{base}/r{k}",
                ]
            )


def test_degrade_writes_a_rebuildable_observation(project):
    write_params(project / "params.yaml", tiny_params(tasks=["inpaint"]))
    degrade.main(["--image", "data/f16.png", "--name", "f16", "--task", "inpaint", "--out", "outs/degrade/f16-inpaint"])
    problem = common.load_problem(project / "outs/degrade/f16-inpaint")
    assert problem.y.shape == (1, 3, 32, 32) and problem.x_true.shape == (1, 3, 32, 32)
    assert torch.equal(problem.op(problem.x_true), problem.y)  # noise-free inpainting: y = A x exactly
    assert (project / "outs/degrade/f16-inpaint/degraded.png").exists()


def test_rounds_chain_masks_monotone_with_the_published_schedule(project):
    params = tiny_params()
    write_params(project / "params.yaml", params)
    run_chain(params)
    net_cfg = common.net_cfg(params)
    base = project / "outs/rounds/f16-denoise/s0"
    masks = [common.load_round_mask(base / f"r{k}", net_cfg) for k in (1, 2)]
    assert prune.is_monotone(masks[0], masks[1])
    for k, mask in zip((1, 2), masks):
        m = json.loads((base / f"r{k}" / common.METRICS).read_text())
        assert m["round"] == k
        assert m["sparsity"]["nominal"] == pytest.approx(1 - 0.8**k)
        assert m["sparsity"]["effective"] == pytest.approx(prune.sparsity(mask))
        assert abs(m["sparsity"]["effective"] - m["sparsity"]["nominal"]) < 1e-3
        # the mask came from an 8-iteration search fit; the scores from the full 12-iteration evaluation
        assert m["search_iterations"] == 8 and m["last"]["iteration"] == 12
        _, meta = io.load_tensors(base / f"r{k}" / common.MASK)
        assert meta["round"] == k and meta["parent"].endswith(f"r{k - 1}")
    init, _ = io.load_tensors(base / "r0" / common.INIT)
    rewind, _ = io.load_tensors(base / "r0" / common.REWIND)
    assert all(torch.equal(init[f"net.{k}"], v) for k, v in rewind.items())  # rewind_iteration 0: theta_0


def test_round_refuses_a_wrong_parent(project):
    params = tiny_params()
    write_params(project / "params.yaml", params)
    run_chain(params)
    base = "outs/rounds/f16-denoise/s0"
    with pytest.raises(ValueError, match="expected round 2"):
        imp_round.main(
            [
                "--obs",
                "outs/degrade/f16-denoise",
                "--task",
                "denoise",
                "--seed",
                "0",
                "--round",
                "3",
                "--dense",
                f"{base}/r0",
                "--parent",
                f"{base}/r1",
                "--out",
                f"{base}/r3",
            ]
        )


def test_evaluate_transfer_report(project):
    params = tiny_params()
    write_params(project / "params.yaml", params)
    for image in params["images"]:
        run_chain(params, image=image)
    for image in params["images"]:
        evaluate.main(
            [
                "--name",
                image,
                "--task",
                "denoise",
                "--obs",
                f"outs/degrade/{image}-denoise",
                "--rounds",
                f"outs/rounds/{image}-denoise",
                "--out",
                f"outs/evaluate/{image}-denoise",
                "--metrics",
                f"metrics/{image}-denoise.json",
                "--sparsity-plot",
                f"plots/sparsity/{image}-denoise.csv",
                "--iteration-plot",
                f"plots/iteration/{image}-denoise.csv",
            ]
        )
    head = json.loads((project / "metrics/f16-denoise.json").read_text())
    assert head["round"] == 2  # 0.36 >= 0.3 > 0.2
    assert set(head["methods"]) == {"dense", "lip", "random_global", "random_layer", "snip", "decoder"}
    assert head["methods"]["lip"]["es_psnr"]["mean"] > 10
    results = json.loads((project / "outs/evaluate/f16-denoise/results.json").read_text())
    per_seed = results["per_seed"]
    for method in ("random_global", "random_layer", "snip"):  # exactly the LIP sparsity
        assert per_seed[method][0]["sparsity"]["effective"] == pytest.approx(head["effective_sparsity"], abs=1e-9)
    assert (project / "plots/sparsity/f16-denoise.csv").read_text().startswith("sparsity,lip,random_global")

    transfer.main(
        [
            "--degrade",
            "outs/degrade",
            "--rounds",
            "outs/rounds",
            "--out",
            "outs/transfer",
            "--metrics",
            "metrics/transfer.json",
        ]
    )
    t = json.loads((project / "metrics/transfer.json").read_text())
    assert set(t["psnr"]) == {"f16-denoise", "baby-denoise"}
    assert t["psnr"]["f16-denoise"]["f16-denoise"] == pytest.approx(
        json.loads((project / "outs/rounds/f16-denoise/s0/r2/metrics.json").read_text())["es"]["psnr"],
        abs=1e-3,
    )

    report.main(["--evaluate", "outs/evaluate", "--transfer", "metrics/transfer.json", "--out", "report"])
    md = (project / "report/report.md").read_text()
    assert "| lip |" in md and "Transfer" in md
    assert (project / "report/psnr_vs_sparsity.png").exists() and (project / "report/grid_f16-denoise.png").exists()


def test_unreached_sparsity_says_how_many_rounds_to_add(project):
    write_params(project / "params.yaml", tiny_params(sparsity=0.6))
    with pytest.raises(ValueError, match=r"Add 3 round\(s\) to imp.chain.*\[3, 2\], \[4, 3\], \[5, 4\]"):
        evaluate.headline_round(common.load_params())


def test_unknown_param_keys_are_named(project):
    params = tiny_params()
    params["fit"]["iteratons"] = 5
    write_params(project / "params.yaml", params)
    with pytest.raises(ValueError, match="iteratons"):
        common.fit_cfg(common.load_params(), "denoise")


@pytest.mark.parametrize("name", ["params.yaml", "params.paper.yaml"])
def test_shipped_params_files_are_valid(name):
    from tests.conftest import ROOT

    params = common.load_params(ROOT / name)
    common.net_cfg(params)
    common.prune_cfg(params)
    for task in params["tasks"]:
        common.degradation_cfg(params, task)
        common.fit_cfg(params, task)
    assert common.chain(params)
    assert evaluate.headline_round(params) >= 1
    assert params["image_size"] % common.net_cfg(params).downscale == 0
    for image in params["images"]:
        assert (ROOT / "data" / f"{image}.png").exists()


def test_stage_outputs_are_byte_identical_when_rerun(project):
    """DVC compares output hashes: a rerun with the same inputs must not look like a change downstream."""
    write_params(project / "params.yaml", tiny_params())
    degrade.main(["--image", "data/f16.png", "--name", "f16", "--task", "denoise", "--out", "outs/degrade/a"])
    for out in ("outs/r0a", "outs/r0b"):
        dense_fit.main(["--obs", "outs/degrade/a", "--task", "denoise", "--seed", "0", "--out", out])
    files = sorted(p.name for p in (project / "outs/r0a").iterdir())
    assert files and files == sorted(p.name for p in (project / "outs/r0b").iterdir())
    for name in files:
        assert (project / "outs/r0a" / name).read_bytes() == (project / "outs/r0b" / name).read_bytes(), name
