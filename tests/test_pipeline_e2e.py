"""The real pipeline in a temporary git repo: the Ray executor builds it from scratch (stages in warm processes,
the cheap way to run every stage), stopping at a broken input and picking up after it is mended; then real DVC
must agree with what it left: `dvc status` clean, `dvc repro` a no-op, DVC's own rerun of two training
stages (each in a fresh `python -m` process) leaving every output byte for byte, a new target sparsity
leaving only the scoring stages out of date, and `dvc exp run -S gan.cs.lr=...` rerunning no GAN round.

The tests run in file order on one worker (--dist loadfile): each builds on the state the one before left."""

import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import dvc_project, e2e_params, locked_outs, ran_by_executor, run_command, run_executor

N_STAGES = 28  # e2e_params(): check_params, 3 images x denoise, 2 rounds, one multi-image group, the GAN study's 6


def data_marks(node, counts: Counter) -> Counter:
    """How many items each kind of data mark (role "mark": not axes, grid or legends) draws in a Vega scenegraph."""
    if isinstance(node, dict):
        if node.get("role") == "mark" and "marktype" in node:
            counts[node["marktype"]] += len(node.get("items", []))
        children = node.values()
    else:
        children = node if isinstance(node, list) else []
    for child in children:
        data_marks(child, counts)
    return counts


def ran_by_dvc(out: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", out)


@dataclass
class Built:
    path: Path
    env: dict
    dvc: str
    failed: str  # the executor's output from the run that met the broken image
    recorded: set  # the stages dvc.lock held after it
    out: str  # its output from the run that finished the pipeline
    outs: dict  # dvc.lock's outputs right after that


BROKEN = "f16.png"  # its degrade stage is the last of the three to run, so two have finished when it fails


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    """The executor's run of e2e_params() from scratch with one image broken (it stops there), then again with the
    image mended; the result committed to git."""
    path, env, dvc = dvc_project(tmp_path_factory.mktemp("lip"), e2e_params())
    image = path / "data" / BROKEN
    good = image.read_bytes()
    image.write_bytes(b"not a png")
    failed = run_executor(path, env, ok=False, cpus=1)  # one stage at a time: the order below is then fixed
    recorded = set(locked_outs(path))
    image.write_bytes(good)
    out = run_executor(path, env)
    run_command(["git", "add", "-A"], path, env)
    run_command(["git", "commit", "-qm", "built"], path, env)
    return Built(path, env, dvc, failed, recorded, out, locked_outs(path))


def test_a_failing_stage_stops_the_run_keeping_what_finished(built):
    failed = built.failed
    assert "ERROR: stage degrade@f16-denoise failed" in failed and f"data/{BROKEN}" in failed, failed
    assert "FAILED; starting no further stage" in failed
    finished = ran_by_executor(failed)
    assert finished and "degrade@f16-denoise" not in finished, failed
    assert built.recorded == set(finished)  # what finished is recorded, nothing else
    rerun = set(ran_by_executor(built.out)) & set(finished)
    assert not rerun, f"the second run redid {rerun}"
    assert f"{len(finished)} already up to date" in built.out, built.out


def test_the_executor_builds_every_artifact_and_dvc_agrees(built):
    path, env, dvc, out = built.path, built.env, built.dvc, built.out
    assert "in-process" in out and f"[{N_STAGES}/{N_STAGES} done, 0 running, 0 waiting]" in out, out
    assert "imp_round@f16-denoise-0-link1" in ran_by_executor(out)
    for k in (0, 1, 2):
        assert (path / f"outs/rounds/f16-denoise/s0/r{k}/metrics.json").exists()
    head = json.loads((path / "metrics/baby-denoise.json").read_text())
    assert head["round"] == 2 and "decoder" in head["methods"]
    assert json.loads((path / "metrics/transfer.json").read_text())["psnr"]["f16-denoise"]["baby-denoise"] > 5
    assert (path / "plots/sparsity/f16-denoise.csv").exists()
    multi = json.loads((path / "metrics/multi-g.json").read_text())
    assert multi["heldout"] == ["kate"] and multi["rounds"][-1]["psnr"]["multi_shared"] > 5
    gan = json.loads((path / "metrics/gan.json").read_text())
    assert {"dense", "lip@1", "random@1", "rewind@1", "fista", "dip"} <= set(gan["m100"])
    report = (path / "report/tiny/report.md").read_text()
    assert "| lip |" in report and "## Claims" in report and "## Multi-image LIP: group g" in report
    assert "## GAN compressive sensing" in report and "dense/mom" in report
    # OES, the long runs and the channel tickets, through the real pipeline
    assert "| oes | Optimal Eye Surgeon" in report and "## Long runs: does a sparse prior overfit less?" in report
    assert "## Channel tickets: structured sparsity that runs faster" in report
    assert "oes" in head["methods"]
    assert "Data and pipelines are up to date" in run_command([dvc, "status"], path, env)


PAIRS = ("f16-denoise", "baby-denoise", "kate-denoise")


def test_dvc_metrics_are_the_few_headline_numbers(built):
    path, env, dvc = built.path, built.env, built.dvc
    shown = json.loads(run_command([dvc, "metrics", "show", "--json"], path, env, stdout_only=True))
    (record,) = shown.values()
    metrics = record["data"]
    assert list(metrics) == ["metrics/headline.json"]  # the full records are outputs, not DVC metrics
    numbers = metrics["metrics/headline.json"]["data"]
    leaves = [v for group in numbers.values() for v in (group.values() if isinstance(group, dict) else [group])]
    assert 10 <= len(leaves) <= 20 and all(isinstance(v, float) for v in leaves), numbers
    assert set(numbers["lip-dense"]) == set(PAIRS)


def test_every_plot_is_drawn_with_its_data(built):
    """What `dvc plots show` draws: each plot there, each chart's Vega-Lite spec with data rows and rendering
    marks (vl-convert runs Vega as a browser would), each image grid a real image; and the offline page holds
    them all with the Vega libraries inline."""
    import vl_convert

    path, env, dvc = built.path, built.env, built.dvc
    plots = json.loads(run_command([dvc, "plots", "show", "--json"], path, env, stdout_only=True))["data"]
    charts = {f"plots/{kind}/{p}.csv" for kind in ("sparsity", "iteration") for p in PAIRS}
    charts |= {"plots/gan/mse_vs_sparsity.csv", "plots/gan/mse_vs_m.csv"}
    grids = {f"plots/grids/{p}.png" for p in PAIRS}
    assert set(plots) == charts | grids
    for name in charts:
        (chart,) = plots[name]
        spec = chart["content"]
        rows = spec["data"]["values"]
        y = "mse" if name.startswith("plots/gan") else "psnr"
        assert rows and all(float(r[y]) == float(r[y]) for r in rows), name  # rows, and no NaN
        drawn = data_marks(vl_convert.vegalite_to_scenegraph(spec), Counter())
        assert drawn["line"] > 0, (name, drawn)
        assert drawn["rule"] == (2 if "/iteration/" in name else 0), (name, drawn)  # the dense and LIP ES stops
    for name in grids:
        (image,) = plots[name]
        assert Path(image["url"]).read_bytes().startswith(b"\x89PNG"), name
    run_command([sys.executable, "-m", "stages.reporting.plots_page", "--out", "page"], path, env)
    page = (path / "page" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "window.vegaEmbed" in page
    embedded = set(re.findall(r"vegaEmbed\('#([^']+)'", page))
    assert embedded == {name.replace("/", "_").replace(".", "_") for name in charts}


def test_dvc_repro_after_the_executor_runs_nothing(built):
    path, env, dvc = built.path, built.env, built.dvc
    assert ran_by_dvc(run_command([dvc, "repro"], path, env)) == []


# a stage that fits DIPs and one that distils the generator: DVC runs each as `python -m ...` with one thread, the
# executor ran it in a warm worker; a difference in seeding, threads or leftover state would change an output's md5.
# (The multi-image round, whose batched fits reduce in a thread-dependent order; the single-image rounds fit
# through the same lipcore.trials path and stage entry.)
RERUN = ["multi_imp_round@g-shared-0-link1", "gan_imp_round@link0"]


def test_dvc_rerunning_training_stages_reproduces_the_executors_outputs(built):
    path, env, dvc = built.path, built.env, built.dvc
    out = run_command([dvc, "repro", "--force", "--single-item", *RERUN], path, env)
    assert sorted(ran_by_dvc(out)) == sorted(RERUN), out
    assert locked_outs(path) == built.outs  # every stage, every output md5
    assert "Data and pipelines are up to date" in run_command([dvc, "status"], path, env)


def out_of_date(built: Built) -> set[str]:
    """The stages `dvc status` finds out of date: those whose own inputs changed (what runs after them reruns too,
    once their outputs change)."""
    return set(json.loads(run_command([built.dvc, "status", "--json"], built.path, built.env, stdout_only=True)))


def test_a_new_target_sparsity_leaves_only_the_scoring_stages_out_of_date(built):
    """DVC's own status, which the executor and `dvc repro` both consult (executor/ledger.py): no round, dense fit
    or degradation is out of date."""
    params_file = built.path / "params.yaml"
    params = params_file.read_text()
    assert "sparsity: 0.3\n" in params
    params_file.write_text(params.replace("sparsity: 0.3\n", "sparsity: 0.2\n"))  # reached by round 1
    try:
        stale = out_of_date(built)
    finally:
        params_file.write_text(params)
    # the scoring stages, and the GAN study's DIP baseline, whose LIP ticket is the round at the headline sparsity;
    # report and gan_evaluate, downstream of them, rerun once their outputs change
    kinds = {name.split("@")[0] for name in stale}
    assert kinds == {"evaluate", "multi_evaluate", "transfer", "gan_dip"}, stale


def test_changing_a_cs_setting_reruns_no_gan_round(built):
    path, env, dvc = built.path, built.env, built.dvc
    out = run_command([dvc, "exp", "run", "-S", "gan.cs.lr=0.1", "gan_cs@100"], path, env)
    assert ran_by_dvc(out) == ["gan_cs@100"], out  # with every GAN round upstream of it up to date
    assert out_of_date(built) == {"gan_robust", "gan_evaluate"}  # the other readers of gan.cs
    assert "Ran experiment(s): " in out, out
    assert yaml.safe_load((path / "params.yaml").read_text())["gan"]["cs"]["lr"] == 0.1  # applied to the workspace
