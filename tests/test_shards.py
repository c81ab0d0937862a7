"""stages.shards: a setting run image by image merges into the report that one run of the whole setting writes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stages import shards
from stages.plumbing import layout
from stages.plumbing.params import load_params
from tests.conftest import dvc_stages, make_project, run_stage_in_process, tiny_params

SETTING = "params.tiny.yaml"


def sharded_params() -> dict:
    """Two images, two tasks, transfer across the tasks of each image, the GAN study at its smallest."""
    params = tiny_params(images=["f16", "baby"], tasks=["denoise", "inpaint"])
    params["transfer"] = {"pairs": "across_tasks"}
    params["evaluate"].update(baselines=["random_layer"], long_run=0, channels={"rounds": 0, "fraction": None})
    return params


def run_in_process(project: Path, monkeypatch: pytest.MonkeyPatch, wanted: list[str] | None) -> None:
    """Every stage of the project's params.yaml (only those upstream of `wanted`, if given), in process."""
    monkeypatch.chdir(project)
    stages = dvc_stages(project)
    if wanted is not None:
        import networkx as nx
        from dvc.repo import Repo

        with Repo(str(project)) as repo:
            graph = repo.index.graph
            keep = {s for t in wanted for s in repo.stage.collect(t)}
            keep |= {d for s in list(keep) for d in nx.descendants(graph, s)}  # DVC's edges point upstream
            names = {s.addressing for s in keep}
        stages = [s for s in stages if s.addressing in names]
    for stage in stages:
        run_stage_in_process(stage)


@pytest.fixture(scope="module")
def whole_and_sharded(tmp_path_factory):
    """The tiny setting run whole, and run as two shards (f16 with the GAN study, then baby) in clones of their
    own, exported and merged in a third folder that holds nothing but the setting and the shards."""
    params = sharded_params()
    monkeypatch = pytest.MonkeyPatch()
    try:
        whole = make_project(tmp_path_factory.mktemp("whole"), params)
        run_in_process(whole, monkeypatch, None)
        merged = tmp_path_factory.mktemp("merged")
        (merged / SETTING).write_text(yaml.safe_dump(params))
        for images in (["f16"], ["baby"]):
            clone = make_project(tmp_path_factory.mktemp(shards.shard_name(images)), params)
            setting = clone / SETTING
            shutil.copy(clone / "params.yaml", setting)
            monkeypatch.chdir(clone)
            loaded = load_params(setting)
            shards.write_shard_params(Path(SETTING), loaded, images)
            run_in_process(clone, monkeypatch, shards.targets(loaded, images))
            out = shards.export(loaded, Path(SETTING), images, layout.EVALUATE, layout.TRANSFER)
            shutil.copytree(out, merged / out)
        monkeypatch.chdir(merged)
        shards.merge(Path(SETTING))
    finally:
        monkeypatch.undo()
    return whole, merged


def test_a_merged_report_is_the_whole_runs_byte_for_byte(whole_and_sharded):
    whole, merged = whole_and_sharded
    ours, theirs = merged / layout.report_dir("tiny"), whole / layout.report_dir("tiny")
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    assert (ours / layout.REPORT_MD).read_text() == (theirs / layout.REPORT_MD).read_text()
    for png in theirs.glob("*.png"):  # the grids, the PSNR-vs-sparsity grid, the GAN figures
        assert (ours / png.name).read_bytes() == png.read_bytes(), png.name
    headline = merged / shards.shards_dir("tiny") / shards.SHARDS_HEADLINE
    assert headline.read_text() == (whole / layout.HEADLINE).read_text()


def test_only_the_tickets_shard_runs_the_gan_study(whole_and_sharded):
    _, merged = whole_and_sharded
    root = merged / shards.shards_dir("tiny")
    held = {p.name: sorted(q.name for q in (p / shards.SHARD_EVALUATE).iterdir()) for p in root.iterdir() if p.is_dir()}
    assert held == {"f16": ["f16-denoise", "f16-inpaint", "gan"], "baby": ["baby-denoise", "baby-inpaint"]}


def test_status_names_the_images_left_and_merge_refuses_until_all_are_in(whole_and_sharded, monkeypatch, capsys):
    _, merged = whole_and_sharded
    work = Path(shutil.copytree(merged, merged.parent / "partial"))
    shutil.rmtree(work / shards.shards_dir("tiny") / "baby")
    monkeypatch.chdir(work)
    shards.main(["status", SETTING])
    out = capsys.readouterr().out
    assert "left: ['baby']" in out
    # the run-length check over f16 alone: one row per task, each of one fit (one seed; the whole run's have two)
    assert "over the 1 shard(s) in so far" in out and "## Run length" in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith(("| denoise |", "| inpaint |"))]
    assert [(r[0], r[1]) for r in rows] == [("| denoise", "1"), ("| inpaint", "1")]
    with pytest.raises(ValueError, match=r"images \['baby'\] .* are in no shard yet.*--images baby"):
        shards.merge(Path(SETTING))


def test_status_checks_the_run_length_of_the_images_asked_for_alone(whole_and_sharded, monkeypatch, capsys):
    _, merged = whole_and_sharded
    monkeypatch.chdir(merged)
    shards.main(["status", SETTING, "--images", "baby"])
    out = capsys.readouterr().out
    assert "all images are in" in out and "The run-length check over images ['baby']" in out
    # baby's own fits only: one per task, where both shards together have two
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith(("| denoise |", "| inpaint |"))]
    assert [(r[0], r[1]) for r in rows] == [("| denoise", "1"), ("| inpaint", "1")]
    with pytest.raises(ValueError, match=r"images \['lena'\] are in no shard"):
        shards.main(["status", SETTING, "--images", "lena"])


def test_the_report_so_far_is_over_the_images_in_and_names_those_left(whole_and_sharded, monkeypatch):
    whole, merged = whole_and_sharded
    work = Path(shutil.copytree(merged, merged.parent / "so-far"))
    shutil.rmtree(work / shards.shards_dir("tiny") / "baby")
    monkeypatch.chdir(work)
    out = shards.merge(Path(SETTING), so_far=True)
    assert out == layout.report_dir("tiny" + shards.SO_FAR)
    text = (out / layout.REPORT_MD).read_text()
    title, mark, *_ = [line for line in text.splitlines() if line]
    assert title.startswith("# Lottery image priors: report (tiny)")
    assert mark.startswith(f"**So far: 1 of 2 images of {SETTING}; ['baby'] are not in yet.**")
    assert "images ['f16'], tasks ['denoise', 'inpaint']" in text
    # f16's own sections are the whole run's, word for word and figure for figure; baby has none
    whole_text = (whole / layout.report_dir("tiny") / layout.REPORT_MD).read_text()
    for section in ("## f16 / denoise", "## f16 / inpaint"):
        assert _section(text, section) == _section(whole_text, section)
        pair = section.removeprefix("## ").replace(" / ", "-")
        png = layout.grid_png(pair)
        assert (out / png).read_bytes() == (whole / layout.report_dir("tiny") / png).read_bytes()
    assert "## baby /" not in text and not (out / layout.grid_png("baby-denoise")).exists()
    # the setting's own report and headline are left alone
    report_md = layout.report_dir("tiny") / layout.REPORT_MD
    assert (work / report_md).read_text() == (merged / report_md).read_text()
    assert (work / shards.shards_dir("tiny") / shards.SHARDS_HEADLINE).read_text() == (
        merged / shards.shards_dir("tiny") / shards.SHARDS_HEADLINE
    ).read_text()


def _section(text: str, heading: str) -> str:
    """The lines from `heading` up to the next heading of the same level."""
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def test_a_shard_of_other_params_or_an_image_twice_is_refused(whole_and_sharded, monkeypatch):
    _, merged = whole_and_sharded
    work = Path(shutil.copytree(merged, merged.parent / "changed"))
    monkeypatch.chdir(work)
    params = sharded_params()
    params["fit"]["iterations"] = 13
    Path(SETTING).write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="made with other params"):
        shards.merge(Path(SETTING))
    Path(SETTING).write_text(yaml.safe_dump(sharded_params()))
    shutil.copytree(shards.shards_dir("tiny") / "baby", shards.shards_dir("tiny") / "baby-again")
    with pytest.raises(ValueError, match="image baby is in two shards"):
        shards.merge(Path(SETTING))
    shutil.rmtree(shards.shards_dir("tiny") / "baby-again")
    with pytest.raises(ValueError, match=r"images \['baby'\] are already in a shard"):
        shards.run(Path(SETTING), ["baby"], [])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"transfer": {"pairs": "all"}}, "retrains masks across images"),
        ({"multi": {"groups": {"g": {"train": ["f16", "baby"], "heldout": ["kate"]}}}}, "multi-image groups"),
    ],
)
def test_a_setting_whose_problems_meet_across_images_is_refused(tmp_path, monkeypatch, change, message):
    params = sharded_params() | {"images": ["f16", "baby", "kate"]}
    for key, value in change.items():
        params[key] = {**params[key], **value}
    monkeypatch.chdir(tmp_path)
    Path(SETTING).write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match=message):
        shards.run(Path(SETTING), ["f16"], [])


def test_shard_params_replace_only_the_setting_or_a_shard_of_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path(SETTING).write_text(yaml.safe_dump(sharded_params()))
    params = load_params(Path(SETTING))
    Path("params.yaml").write_text("seed: 1\n")  # someone's own params
    with pytest.raises(ValueError, match="neither params.tiny.yaml, a shard of it nor the committed"):
        shards.write_shard_params(Path(SETTING), params, ["f16"])
    assert Path("params.yaml").read_text() == "seed: 1\n"
    shutil.copy(SETTING, "params.yaml")
    shards.write_shard_params(Path(SETTING), params, ["baby"])
    shards.write_shard_params(Path(SETTING), params, ["f16"])  # over a shard of it
    written = load_params(Path("params.yaml"))
    assert list(written.images) == ["f16"] and written.fit == params.fit
    with pytest.raises(ValueError, match=r"--images \['dog'\].*\['dog'\] are not"):
        shards.shard_images(params, ["dog"], Path(SETTING))
    assert shards.shard_images(params, ["baby", "f16"], Path(SETTING)) == ["f16", "baby"]  # the setting's order


def test_shard_params_replace_a_fresh_clones_committed_params_but_not_an_edit_of_it(tmp_path, monkeypatch):
    """The documented first step in a fresh clone: params.yaml there is the committed default, which git restores."""
    monkeypatch.chdir(tmp_path)
    Path(SETTING).write_text(yaml.safe_dump(sharded_params()))
    params = load_params(Path(SETTING))
    Path("params.yaml").write_text("seed: 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([*git, "add", "params.yaml"], check=True)
    subprocess.run([*git, "commit", "-qm", "default params"], check=True)
    Path("params.yaml").write_text("seed: 2\n")  # an edit git does not hold
    with pytest.raises(ValueError, match="refusing to replace it"):
        shards.write_shard_params(Path(SETTING), params, ["f16"])
    assert Path("params.yaml").read_text() == "seed: 2\n"
    subprocess.run(["git", "checkout", "-q", "params.yaml"], check=True)
    shards.write_shard_params(Path(SETTING), params, ["f16"])
    assert list(load_params(Path("params.yaml")).images) == ["f16"]


CHILD = """
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda signum, frame: (out.write_text("stopped"), sys.exit(3)))
out.write_text("running")
time.sleep(60)
"""


def test_a_sigterm_to_the_shard_command_stops_its_executor(tmp_path):
    """`kill <shards run>` stops the executor it runs (before: the executor went on, orphaned, and the shard
    command was gone)."""
    state = tmp_path / "child"
    executor = [sys.executable, "-c", CHILD, str(state)]
    wrapper = f"import sys; from stages.shards import run_child; sys.exit(run_child({executor!r}))"
    shard = subprocess.Popen([sys.executable, "-c", wrapper], cwd=Path(__file__).parents[1])
    deadline = time.monotonic() + 30
    while not (state.exists() and state.read_text() == "running") and time.monotonic() < deadline:
        time.sleep(0.05)
    shard.send_signal(signal.SIGTERM)
    assert shard.wait(timeout=30) == 3  # the executor's own status, after its own stop
    assert state.read_text() == "stopped"
