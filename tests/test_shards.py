"""stages.shards: a setting run image by image (and seed by seed) merges into the report that one run of the whole
setting writes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lipcore.io import read_json
from stages import shards
from stages.plumbing import layout
from stages.plumbing.params import load_params
from stages.shards import stitch
from tests.conftest import dvc_stages, make_project, run_stage_in_process, tiny_params

SETTING = "params.tiny.yaml"


SHARDS = ((["f16"], [0]), (["f16"], [1]), (["baby"], None))  # f16 seed by seed (the GAN ticket's is seed 0)


def sharded_params() -> dict:
    """Two images, two tasks, two seeds, transfer across the tasks of each image, the long runs and one round of
    channel tickets (each a per-seed list to stitch), the GAN study at its smallest."""
    params = tiny_params(images=["f16", "baby"], tasks=["denoise", "inpaint"], seeds=[0, 1])
    params["transfer"] = {"pairs": "across_tasks"}
    params["evaluate"].update(baselines=["random_layer"], long_run=2, channels={"rounds": 1, "fraction": None})
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
    """The tiny setting run whole, and run as three shards (f16 seed 0 with the GAN study, f16 seed 1, then baby
    with both seeds) in clones of their own, exported and merged in a folder that holds nothing but the setting
    and the shards."""
    params = sharded_params()
    monkeypatch = pytest.MonkeyPatch()
    try:
        whole = make_project(tmp_path_factory.mktemp("whole"), params)
        run_in_process(whole, monkeypatch, None)
        merged = tmp_path_factory.mktemp("merged")
        (merged / SETTING).write_text(yaml.safe_dump(params))
        for images, seeds in SHARDS:
            clone = make_project(tmp_path_factory.mktemp("shard"), params)
            setting = clone / SETTING
            shutil.copy(clone / "params.yaml", setting)
            monkeypatch.chdir(clone)
            loaded = load_params(setting)
            seeds = shards.shard_seeds(loaded, seeds, Path(SETTING))
            shards.write_shard_params(Path(SETTING), loaded, images, seeds)
            run_in_process(clone, monkeypatch, shards.targets(loaded, images, seeds))
            out = shards.export(loaded, Path(SETTING), images, seeds, layout.EVALUATE, layout.TRANSFER)
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


def test_a_problem_run_seed_by_seed_stitches_into_the_whole_runs_records(whole_and_sharded, monkeypatch):
    whole, merged = whole_and_sharded
    monkeypatch.chdir(merged)
    params = load_params(Path(SETTING))
    held = shards.parts(params, shards.existing("tiny"))
    assert [seeds for _, seeds in held["f16-inpaint"]] == [[0], [1]]  # f16@s0, f16@s1: stitched
    theirs = read_json(whole / layout.EVALUATE / "f16-inpaint" / layout.RESULTS)
    ours = shards.problem_results(params, held["f16-inpaint"])
    assert json.dumps(ours, sort_keys=True) == json.dumps(theirs, sort_keys=True)
    assert {"long_run", "channels"} <= set(ours)  # the long runs' and the channel tickets' per-seed lists stitched too
    assert ours["summary"]["headline"]["methods"]["lip"]["n_seeds"] == 2
    # one seed's shard alone: its own record, over its seed
    alone = shards.problem_results(params, held["f16-inpaint"][1:])
    assert alone["per_seed"]["lip"] == theirs["per_seed"]["lip"][1:]


def test_a_method_a_run_never_fits_stitches_as_the_runs_empty_list():
    """At sparsity 0 evaluate writes [] for the baselines and the decoder, and {} for a curve method with no
    round; stitched, they stay (the length check refused them before)."""
    assert stitch.join([({"a": [], "b": [1]}, [0]), ({"a": [], "b": [2]}, [1])], lambda r: r, [0, 1]) == {
        "a": [],
        "b": [1, 2],
    }
    with pytest.raises(ValueError, match=r"\['a', 'b'\] hold no entry for some of seeds \[0, 1\]"):
        stitch.join([({"b": [1]}, [0]), ({"a": [2]}, [1])], lambda r: r, [0, 1])


def test_a_method_with_no_entries_is_kept_when_stitched(whole_and_sharded, monkeypatch):
    _, merged = whole_and_sharded
    monkeypatch.chdir(merged)
    params = load_params(Path(SETTING))
    held = shards.parts(params, shards.existing("tiny"))["f16-denoise"]
    records = []
    for folder, seeds in held:
        record = read_json(folder / layout.RESULTS)
        record["per_seed"]["never"] = []
        record["per_seed_curves"]["flat"] = {}
        records.append((record, seeds))
    ours = stitch.results(params, records)
    assert ours["per_seed"]["never"] == [] and ours["per_seed_curves"]["flat"] == {}
    assert ours["summary"]["curves"]["flat"] == []


def test_a_seed_in_two_shards_or_a_record_of_other_seeds_is_refused(whole_and_sharded, monkeypatch):
    _, merged = whole_and_sharded
    work = Path(shutil.copytree(merged, merged.parent / "seed-twice"))
    monkeypatch.chdir(work)
    root = shards.shards_dir("tiny")
    shutil.copytree(root / "f16@s1", root / "f16@s1-again")
    with pytest.raises(ValueError, match=r"image f16 seed 1 is in two shards \(f16@s1, f16@s1-again\)"):
        shards.merge(Path(SETTING))
    shutil.rmtree(root / "f16@s1-again")
    with pytest.raises(ValueError, match=r"\['f16 seed 0', 'baby seed 0'\] are already in a shard"):
        shards.run(Path(SETTING), ["f16", "baby"], [], [0])
    with pytest.raises(ValueError, match=r"--seeds \[3\]: give distinct seeds of .* \(\[3\] are not\)"):
        shards.run(Path(SETTING), ["f16"], [], [3])
    params = load_params(Path(SETTING))
    s0, s1 = (
        read_json(root / f / shards.SHARD_EVALUATE / "f16-denoise" / layout.RESULTS) for f in ("f16@s0", "f16@s1")
    )
    with pytest.raises(ValueError, match=r"a shard of seeds \[1, 2\] holds 1 entries for '\w+'"):
        stitch.results(params, [(s0, [0]), (s1, [1, 2])])  # a record of one seed said to be of two
    with pytest.raises(ValueError, match=r"seed 0 is in two shards' records for '\w+'"):
        stitch.results(params, [(s0, [0]), (s1, [0])])


def test_only_the_tickets_shard_runs_the_gan_study(whole_and_sharded):
    _, merged = whole_and_sharded
    root = merged / shards.shards_dir("tiny")
    held = {p.name: sorted(q.name for q in (p / shards.SHARD_EVALUATE).iterdir()) for p in root.iterdir() if p.is_dir()}
    assert held == {
        "f16@s0": ["f16-denoise", "f16-inpaint", "gan"],
        "f16@s1": ["f16-denoise", "f16-inpaint"],
        "baby": ["baby-denoise", "baby-inpaint"],
    }


def test_status_names_the_images_left_and_merge_refuses_until_all_are_in(whole_and_sharded, monkeypatch, capsys):
    _, merged = whole_and_sharded
    work = Path(shutil.copytree(merged, merged.parent / "partial"))
    shutil.rmtree(work / shards.shards_dir("tiny") / "baby")
    monkeypatch.chdir(work)
    shards.main(["status", SETTING])
    out = capsys.readouterr().out
    assert "left: ['baby']" in out
    # the run-length check over f16 alone: one row per task, each of its two seeds' fits (the whole run's have four)
    assert "over the 2 shard(s) in so far" in out and "## Run length" in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith(("| denoise |", "| inpaint |"))]
    assert [(r[0], r[1]) for r in rows] == [("| denoise", "2"), ("| inpaint", "2")]
    with pytest.raises(ValueError, match=r"images \['baby'\] .* are in no shard yet.*--images baby"):
        shards.merge(Path(SETTING))
    shutil.rmtree(work / shards.shards_dir("tiny") / "f16@s1")
    shards.main(["status", SETTING])
    out = capsys.readouterr().out
    assert "left: ['f16 (seeds [1])', 'baby']" in out and "f16@s0: ['f16'], seeds [0]" in out


def test_status_checks_the_run_length_of_the_images_asked_for_alone(whole_and_sharded, monkeypatch, capsys):
    _, merged = whole_and_sharded
    monkeypatch.chdir(merged)
    shards.main(["status", SETTING, "--images", "baby"])
    out = capsys.readouterr().out
    assert "all images are in" in out and "The run-length check over images ['baby']" in out
    # baby's own fits only: two per task, where all shards together have four
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith(("| denoise |", "| inpaint |"))]
    assert [(r[0], r[1]) for r in rows] == [("| denoise", "2"), ("| inpaint", "2")]
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


def test_an_image_with_a_seed_left_is_left_out_of_the_report_so_far(whole_and_sharded, monkeypatch):
    _, merged = whole_and_sharded
    work = Path(shutil.copytree(merged, merged.parent / "seed-left"))
    shutil.rmtree(work / shards.shards_dir("tiny") / "f16@s1")
    monkeypatch.chdir(work)
    with pytest.raises(ValueError, match=r"images \['f16'\] .* are in no shard yet \(or not all their seeds\)"):
        shards.merge(Path(SETTING))
    text = (shards.merge(Path(SETTING), so_far=True) / layout.REPORT_MD).read_text()
    assert f"**So far: 1 of 2 images of {SETTING}; ['f16'] are not in yet.**" in text
    assert "images ['baby'], tasks ['denoise', 'inpaint']" in text and "## f16 /" not in text


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
    with pytest.raises(ValueError, match="image baby seed 0 is in two shards"):
        shards.merge(Path(SETTING))
    shutil.rmtree(shards.shards_dir("tiny") / "baby-again")
    with pytest.raises(ValueError, match=r"\['baby seed 0', 'baby seed 1'\] are already in a shard"):
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
        shards.write_shard_params(Path(SETTING), params, ["f16"], [0])
    assert Path("params.yaml").read_text() == "seed: 1\n"
    shutil.copy(SETTING, "params.yaml")
    shards.write_shard_params(Path(SETTING), params, ["baby"], [0])
    shards.write_shard_params(Path(SETTING), params, ["f16"], [0])  # over a shard of it
    written = load_params(Path("params.yaml"))
    assert list(written.images) == ["f16"] and list(written.seeds) == [0] and written.fit == params.fit
    with pytest.raises(ValueError, match=r"--images \['dog'\].*\['dog'\] are not"):
        shards.shard_images(params, ["dog"], Path(SETTING))
    assert shards.shard_images(params, ["baby", "f16"], Path(SETTING)) == ["f16", "baby"]  # the setting's order


def test_only_the_shard_of_the_tickets_image_and_seed_keeps_the_ticket_and_runs_the_gan_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setting = sharded_params()
    setting["gan"]["dip"].update(ticket="baby-inpaint", seed=1)
    Path(SETTING).write_text(yaml.safe_dump(setting))
    params = load_params(Path(SETTING))
    for images, seeds, holds in ((["baby"], [1], True), (["baby"], [0], False), (["f16"], [1], False)):
        dip = shards.shard_params(Path(SETTING), params, images, seeds)["gan"]["dip"]
        assert (dip["ticket"], dip["seed"]) == (("baby-inpaint", 1) if holds else (None, None))
        assert ("gan_evaluate" in shards.targets(params, images, seeds)) == holds
        shards.write_shard_params(Path(SETTING), params, images, seeds)
        assert list(load_params(Path("params.yaml")).seeds) == seeds  # the params check takes it


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
        shards.write_shard_params(Path(SETTING), params, ["f16"], [0])
    assert Path("params.yaml").read_text() == "seed: 2\n"
    subprocess.run(["git", "checkout", "-q", "params.yaml"], check=True)
    shards.write_shard_params(Path(SETTING), params, ["f16"], [0])
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
