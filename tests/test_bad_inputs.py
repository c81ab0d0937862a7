"""What lip refuses, and what it must survive: one parametrised case per row of the hostile-user matrix.

Every refusal must come before the stage writes anything, name the file or params key and say what is
allowed; every valid setup must run; no failure may delete or corrupt earlier results. The README's
"What lip refuses and why" table lists the same rows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lipcore import io
from lipcore.config import FitConfig
from lipcore.fit import FitDiverged, fit
from lipcore.nets import build_net, make_input
from lipcore.physics import Denoise
from stages import degrade, dense_fit, evaluate, imp_round, report, transfer
from stages.plumbing import layout
from stages.plumbing.params import load_params
from tests.conftest import DATA, ROOT, make_project, tiny_params
from tests.test_stages import run_chain, run_evaluate, run_transfer, write_params


def _set(path: str, value):
    """A change of tiny_params: `value` at the dotted `path` (None-valued paths are deleted keys)."""

    def change(params: dict) -> dict:
        *parents, last = path.split(".")
        node = params
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
        return params

    return change


def _sets(*changes):
    def change(params: dict) -> dict:
        for c in changes:
            params = c(params)
        return params

    return change


def _task_def(name, listed: bool = True):
    """A change of tiny_params: a denoising task named `name` (any YAML key) in task_defs, and in tasks if listed."""

    def change(params: dict) -> dict:
        params["task_defs"][name] = {"degradation": {"task": "denoise"}}
        if listed:
            params["tasks"] = [name]
        return params

    return change


# ---------------------------------------------------------------- params: refused up front, naming the key

PARAMS_ROWS = {
    "unknown top-level key": (_set("sparsty", 0.3), r"unknown key\(s\) \['sparsty'\]"),
    "unknown imp key": (_set("imp.fractoin", 0.3), r"imp\.fractoin"),
    "unknown evaluate key (curve dropped)": (_set("evaluate.curve_method", ["snip"]), r"evaluate\.curve_method"),
    "unknown curve method": (_set("evaluate.curve_methods", ["magnitude"]), r"unknown method.*magnitude"),
    "iterations as a string": (_set("fit.iterations", "20"), r"fit\.iterations: expected an integer, got '20'"),
    "iterations as a float": (_set("fit.iterations", 20.5), r"fit\.iterations: expected an integer, got 20\.5"),
    "lr as a string": (_set("fit.lr", "0.01"), r"fit\.lr: expected a number, got '0\.01'"),
    "lr zero": (_set("fit.lr", 0), r"fit: lr must be > 0, got 0"),
    "lr negative in a task": (_set("task_defs.denoise.fit.lr", -1.0), r"task_defs\.denoise\.fit: lr must be > 0"),
    "no seeds": (_set("seeds", []), r"seeds: the list is empty"),
    "a seed twice": (_set("seeds", [0, 0]), r"seeds: \[0\] listed more than once"),
    "no images": (_set("images", []), r"images: the list is empty"),
    "an image path instead of a name": (_set("images", ["../f16"]), r"images: '\.\./f16' is not a name"),
    "a task name with a slash": (
        _sets(_set("tasks", ["de/noise"]), _set("task_defs.de/noise", {"degradation": {"task": "denoise"}})),
        r"tasks: 'de/noise' is not a name",
    ),
    "two pairs naming one output": (
        _sets(
            _set("images", ["f16", "f16-b"]),
            _set("tasks", ["b-c", "c"]),
            _set("task_defs.b-c", {"degradation": {"task": "denoise"}}),
            _set("task_defs.c", {"degradation": {"task": "denoise"}}),
        ),
        r"\('f16', 'b-c'\) and \('f16-b', 'c'\) both name the outputs 'f16-b-c'",
    ),
    "no tasks": (_set("tasks", []), r"tasks: the list is empty"),
    "undefined task": (_set("tasks", ["deblur"]), r"tasks \['deblur'\] are not defined under task_defs"),
    "unknown degradation": (_set("task_defs.denoise.degradation.task", "deblur"), r"task must be one of"),
    "image_size zero": (_set("image_size", 0), r"image_size: 0 is not a multiple of 8 of at least 16"),
    "image_size not a multiple": (_set("image_size", 30), r"image_size: 30 is not a multiple of 8 of at least 16"),
    "image_size one pixel at the bottleneck": (_set("image_size", 8), r"image_size: 8 .* batch norm needs more"),
    "sr factor not dividing image_size": (
        _sets(
            _set("net.scales", 2),
            _set("image_size", 12),
            _set("tasks", ["sr"]),
            _set("task_defs.sr", {"degradation": {"task": "sr", "factor": 8}}),
        ),
        r"task_defs\.sr\.degradation\.factor: the SR factor 8 does not divide the image size 12x12",
    ),
    "cs matrix too large": (
        _sets(
            _set("image_size", 128),
            _set("tasks", ["cs"]),
            _set("task_defs.cs", {"degradation": {"task": "cs", "ratio": 1.0}}),
        ),
        r"task_defs\.cs\.degradation\.ratio: a dense 49152x49152 Gaussian CS matrix is too large",
    ),
    "net without channels": (_set("net.channels_down", 0), r"NetConfig\.channels_down must be >= 1 at every scale"),
    "net with negative channels": (_set("net.channels_up", [8, -4, 8]), r"channels_up must be >= 1 at every scale"),
    "net with one output channel": (_set("net.out_channels", 1), r"net\.out_channels: 1; the pipeline fits RGB"),
    "deep decoder of no layers": (_set("net.decoder_layers", 0), r"NetConfig\.decoder_layers must be >= 1"),
    "input_scale zero": (_set("net.input_scale", 0), r"input_scale must be > 0"),
    "sigma NaN": (_set("task_defs.denoise.degradation.sigma", float("nan")), r"sigma: expected a finite number"),
    "lr infinite": (_set("fit.lr", float("inf")), r"fit\.lr: expected a finite number, got inf"),
    "reg noise negative": (_set("fit.reg_noise_std", -0.1), r"reg_noise_std must be >= 0"),
    "backtrack_db negative": (
        _set("fit.backtrack_db", -5.0),
        r"backtrack_db must be > 0 \(null turns backtracking off\)",
    ),
    "fit.rewind_iteration (set by imp)": (
        _set("fit.rewind_iteration", 5),
        r"fit\.rewind_iteration: the pipeline sets it",
    ),
    "a task's fit.rewind_iteration": (
        _set("task_defs.denoise.fit.rewind_iteration", 5),
        r"task_defs\.denoise\.fit\.rewind_iteration: the pipeline sets it from imp\.rewind_iteration; remove it",
    ),
    "gan.dip.fit.rewind_iteration": (
        _set("gan.dip.fit.rewind_iteration", 2),
        r"gan\.dip\.fit\.rewind_iteration: the pipeline sets it from imp\.rewind_iteration; remove it",
    ),
    "a section given as null": (_set("fit", None), r"fit: expected a mapping of keys to values, got null"),
    "device gpu": (_set("device", "gpu"), r"device: device 'gpu' is not a device name: use 'auto', 'cpu'"),
    "sparsity 1": (_set("sparsity", 1.0), r"sparsity must be in \[0, 1\)"),
    "sparsity beyond the chain": (
        _set("sparsity", 0.9),
        r"sparsity=0\.9 is not reached.*Add 9 round\(s\) to imp\.chain",
    ),
    "broken chain": (_set("imp.chain", [[2, 1]]), r"imp: chain entry 1 is \[2, 1\]; expected \[1, 0\]"),
    "prune fraction 1": (_set("imp.fraction", 1.0), r"imp: prune fraction must be in \(0, 1\)"),
    "unknown protocol": (_set("protocol", "oracle"), r"protocol: expected one of \['paper', 'blind'\], got 'oracle'"),
    "inpaint keeps nothing": (_set("task_defs.inpaint.degradation.keep", 0.0), r"keep must be in \[0\.01, 1\)"),
    "inpaint keeps everything": (_set("task_defs.inpaint.degradation.keep", 1.0), r"keep must be in \[0\.01, 1\)"),
    "net scales zero": (_set("net.scales", 0), r"net: NetConfig\.scales must be >= 1"),
    "unknown transfer pairs": (
        _set("transfer.pairs", "some"),
        r"transfer\.pairs: expected one of \['all', 'across_tasks', 'across_images'\], got 'some'",
    ),
    "setting with a slash": (_set("setting", "study/one"), r"setting: 'study/one' is not a name"),
    # names go into dvc.yaml's shell commands (--name ${item.image}): shell code, spaces, options refused at load
    "an image name with shell substitution": (
        _set("images", ["x$(touch PWNED)"]),
        r"images: 'x\$\(touch PWNED\)' is not a name: a name is 1-64 letters, digits, '_', '\+' or '-'",
    ),
    "an image name with a space": (_set("images", ["f16 copy"]), r"images: 'f16 copy' is not a name"),
    "an image name that is an option": (_set("images", ["-x"]), r"images: '-x' is not a name.*not starting with '-'"),
    "an image name with a quote": (_set("images", ["f16'; touch PWNED; '"]), r"images: .*touch PWNED.* is not a name"),
    "an image name of 65 characters": (_set("images", ["f" * 65]), r"images: 'f{65}' is not a name: a name is 1-64"),
    "a task name with a backtick": (
        _task_def("de`id`noise"),
        r"tasks: 'de`id`noise' is not a name",
    ),
    "a task name with a dot (a params key)": (
        _task_def("de.noise"),
        r"tasks: 'de\.noise' is not a name",
    ),
    "an unlisted task_defs key with a semicolon": (
        _task_def("a;b", listed=False),
        r"task_defs: 'a;b' is not a name",
    ),
    "a task_defs key that is a number": (_task_def(7, listed=False), r"task_defs: 7 is not a name"),
    "setting with shell substitution": (_set("setting", "$(id)"), r"setting: '\$\(id\)' is not a name"),
    "a group name that is a number": (
        _set("multi.groups", {123: {"train": ["f16", "baby"], "heldout": ["kate"]}}),
        r"multi: groups: 123 is not a name",
    ),
    "a group name that is a bool": (
        _set("multi.groups", {True: {"train": ["f16", "baby"], "heldout": ["kate"]}}),
        r"multi: groups: True is not a name",
    ),
    "a group name with shell substitution": (
        _set("multi.groups", {"g$(touch PWNED)": {"train": ["f16", "baby"], "heldout": ["kate"]}}),
        r"multi: groups: 'g\$\(touch PWNED\)' is not a name",
    ),
    "a gan face with a space": (_set("gan", {"faces": ["baby girl"]}), r"gan: faces: 'baby girl' is not a name"),
    "a gan tune face with a pipe": (_set("gan", {"tune_face": "man|id"}), r"gan: tune_face: 'man\|id' is not a name"),
    "multi-image group of one image": (
        _set("multi.groups", {"g": {"train": ["f16"], "heldout": ["baby"]}}),
        r"multi\.groups\.g: train: \['f16'\]; a multi-image group needs at least 2",
    ),
    "multi-image group scored on a training image": (
        _set("multi.groups", {"g": {"train": ["f16", "baby"], "heldout": ["baby"]}}),
        r"\['baby'\] are both training and held-out images",
    ),
    "multi-image group of unlisted images": (
        _set("multi.groups", {"g": {"train": ["f16", "baby"], "heldout": ["kate"]}}),
        r"multi\.groups\.g: \['kate'\] not in images \['f16', 'baby'\]",
    ),
    "multi-image task not listed": (
        _sets(
            _set("images", ["f16", "baby", "kate"]),
            _set("multi.task", "inpaint"),
            _set("multi.groups", {"g": {"train": ["f16", "baby"], "heldout": ["kate"]}}),
        ),
        r"multi\.task: 'inpaint' is not one of tasks \['denoise'\]",
    ),
    "multi-image mode unknown": (
        _set("multi.modes", ["mean"]),
        r"multi\.modes\[0\]: expected one of \['shared', 'average'\], got 'mean'",
    ),
    "multi-image rounds off the chain": (
        _sets(
            _set("images", ["f16", "baby", "kate"]),
            _set("multi.rounds", [5]),
            _set("multi.groups", {"g": {"train": ["f16", "baby"], "heldout": ["kate"]}}),
        ),
        r"multi\.rounds: \[5\] not rounds of imp\.chain \[1, 2\]",
    ),
    "executor half a core": (_set("executor", {"num_cpus": 0.5}), r"executor: num_cpus: 0\.5; give a whole number"),
    "executor 1.5 GPUs": (_set("executor", {"num_gpus": 1.5}), r"executor: num_gpus: 1\.5; give 0 \(CPU\), a fraction"),
    "executor negative GPUs": (_set("executor", {"num_gpus": -1}), r"executor: num_gpus: -1"),
    "executor unknown key": (_set("executor", {"threads": 2}), r"executor.*threads"),
    "gan chain out of order": (_set("gan", {"chain": [[1, 0], [3, 2]]}), r"gan: chain entry 2 is \[3, 2\]"),
    "gan more measurements than pixels": (_set("gan", {"cs": {"m": [20000]}}), r"m: \[20000\] measurements"),
    "gan no measurements": (_set("gan", {"cs": {"m": [0]}}), r"m: \[0\] measurements"),
    "gan face twice": (_set("gan", {"faces": ["baby", "baby"]}), r"faces.*baby"),
    "long run negative": (_set("evaluate.long_run", -1), r"long_run must be >= 0"),
    "oes search of no steps": (_set("evaluate.oes.steps_per_iteration", 0), r"steps_per_iteration must be > 0"),
    "oes temperature zero": (_set("evaluate.oes.temperature", 0.0), r"lr and temperature must be > 0"),
    "channel rounds negative": (_set("evaluate.channels.rounds", -2), r"rounds must be >= 0"),
    "channel fraction too large": (_set("evaluate.channels.fraction", 0.6), r"fraction must be in \(0, 0.5\)"),
    "channel tickets of a deep decoder": (
        _sets(_set("net.kind", "decoder"), _set("evaluate.channels.rounds", 2)),
        r"evaluate\.channels\.rounds: channel tickets are cut from the skip net",
    ),
}


@pytest.mark.parametrize("change, message", PARAMS_ROWS.values(), ids=PARAMS_ROWS.keys())
def test_params_are_refused_naming_key_value_and_what_is_allowed(tmp_path, change, message):
    path = tmp_path / "params.yaml"
    write_params(path, change(tiny_params()))
    with pytest.raises(ValueError, match=message) as err:
        load_params(path)
    assert str(path) in str(err.value)  # and the file


def test_device_cuda_without_cuda_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    write_params(tmp_path / "params.yaml", tiny_params(device="cuda"))
    with pytest.raises(ValueError, match="device: device 'cuda' was asked for but CUDA is not available"):
        load_params(tmp_path / "params.yaml")


# a "billion laughs": half a KB of anchors and aliases standing for 9**9 strings, under a key whose type error showed
# the value whole (every stage spent 52 s on the one and died of a MemoryError)
ALIAS_BOMB = "sparsity: 0.3\nfit:\n  lr:\n    - &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"    - &l{k} [{', '.join([f'*l{k - 1}'] * 9)}]\n" for k in range(1, 9)
)
PARAMS_FILE_ROWS = {
    "python tag": ("!!python/object/apply:os.system ['echo pwned']\n", "not valid plain YAML"),  # never executed
    "broken yaml": ("sparsity: [0.3\n", "not valid plain YAML"),
    "not a mapping": ("- 1\n- 2\n", "expected a mapping"),
    "a duplicate key": (
        "sparsity: 0.3\nfit: {iterations: 12, iterations: 16}\n",
        r"fit\.iterations is given twice \(line 2\); YAML would silently keep the last and DVC refuses the file",
    ),
    "a duplicate top-level key": (
        "sparsity: 0.3\nseed: 0\nsparsity: 0.5\n",
        r"sparsity is given twice \(lines 1 and 3\)",
    ),
    "a duplicate key in a list": ("gan:\n  cs: {m: [100]}\nimages: [{a: 1, a: 2}]\n", r"images\[0\]\.a is given twice"),
    "an alias bomb": (ALIAS_BOMB, r"line 4, column 7: the YAML anchor &l0; anchors and aliases are not allowed"),
    "an alias": ("fit: {iterations: 12}\nnet: *x\n", r"line 2, column 6: the YAML alias \*x; anchors and aliases"),
    "a merge key": ("fit: {<<: {iterations: 12}}\n", r"line 1: the YAML merge key '<<' is not allowed"),
    "a long list value": ("fit:\n  lr: [" + "0, " * 10_000 + "]\n", r"fit\.lr: expected a number, got \[0, 0, 0"),
    "a long string value": ("sparsity: " + "x" * 100_000 + "\n", r"sparsity: expected a number, got 'xxx"),
}


@pytest.mark.parametrize("text, message", PARAMS_FILE_ROWS.values(), ids=PARAMS_FILE_ROWS.keys())
def test_params_files_that_are_not_plain_yaml_mappings_are_refused(tmp_path, text, message):
    """Refused at once, in a short message naming the file (a huge value is not shown whole)."""
    (tmp_path / "params.yaml").write_text(text)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message) as err:
        load_params(tmp_path / "params.yaml")
    assert time.perf_counter() - start < 2.0
    assert str(tmp_path / "params.yaml") in str(err.value) and len(str(err.value)) < 500, str(err.value)[:2000]


def test_a_missing_params_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml not found"):
        load_params(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- images and masks: degrade refuses, names the file


def run_degrade(image: str = "data/f16.png", task: str = "denoise", out: str = "outs/degrade/f16-denoise"):
    degrade.main(["--image", image, "--name", "f16", "--task", task, "--out", out])


def _mask_task(mask: str) -> dict:
    return {"degradation": {"task": "inpaint", "mask": mask}, "fit": {"ema_weight": 0.0}}


def _write_mask(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def test_a_missing_image_is_named(project):
    write_params(project / "params.yaml", tiny_params())
    with pytest.raises(FileNotFoundError, match="image not found: data/nope.png"):
        run_degrade("data/nope.png")
    assert not Path("outs").exists()


@pytest.mark.parametrize("content", [b"not a png at all", "truncated"], ids=["text file", "truncated png"])
def test_unreadable_images_are_named(project, content):
    write_params(project / "params.yaml", tiny_params())
    bad = project / "data" / "bad.png"
    bad.write_bytes(content if isinstance(content, bytes) else (DATA / "f16.png").read_bytes()[:2000])
    with pytest.raises(ValueError, match="cannot read data/bad.png as an image"):
        run_degrade("data/bad.png")
    assert not Path("outs").exists()


def test_an_image_smaller_than_image_size_names_file_and_key(project):
    write_params(project / "params.yaml", tiny_params())
    Image.new("RGB", (20, 40)).save(project / "data" / "small.png")
    with pytest.raises(ValueError, match=r"data/small.png is 40x20, smaller than image_size 32 \(params.yaml\)"):
        run_degrade("data/small.png")


def test_a_decompression_bomb_is_refused_naming_the_file(project, monkeypatch):
    write_params(project / "params.yaml", tiny_params())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses images over twice this: f16 is now a bomb
    with pytest.raises(ValueError, match="data/f16.png is too large to read safely"):
        run_degrade()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "I;16", "1"])
def test_images_of_every_mode_are_accepted(project, mode):
    write_params(project / "params.yaml", tiny_params())
    rgb = Image.open(DATA / "f16.png").convert("RGB")
    img = rgb.convert("L").convert("I;16") if mode == "I;16" else rgb.convert(mode)
    img.save(project / "data" / "odd.png")
    run_degrade("data/odd.png")
    problem = io.load_tensors(project / "outs/degrade/f16-denoise" / layout.OBSERVATION)[0]
    assert problem["y"].shape == (1, 3, 32, 32)


MASK_ROWS = {
    "mask of another size": (np.full((200, 300), 255), r"is \(200, 300\) \(H, W\) but data/f16.png is \(512, 512\)"),
    "all-zero mask": (np.zeros((512, 512)), r"keeps 0\.00% of the pixels; it must keep at least 1%"),
    "all-white mask": (np.full((512, 512), 255), r"keeps every pixel: there is nothing to inpaint"),
}


@pytest.mark.parametrize("array, message", MASK_ROWS.values(), ids=MASK_ROWS.keys())
def test_inpainting_masks_are_checked_before_any_fit(project, array, message):
    assert Image.open(DATA / "f16.png").size == (512, 512)
    _write_mask(project / "data" / "masks" / "m.png", array)
    params = tiny_params(tasks=["holes"])
    params["task_defs"]["holes"] = _mask_task("data/masks/m.png")
    write_params(project / "params.yaml", params)
    with pytest.raises(ValueError, match=message) as err:
        run_degrade(task="holes", out="outs/degrade/f16-holes")
    assert "data/masks/m.png" in str(err.value) or "pixel" in str(err.value)
    assert not Path("outs").exists()


def test_a_mask_outside_the_mask_folder_is_refused(project):
    _write_mask(project / "data" / "m.png", np.full((512, 512), 255))
    params = tiny_params(tasks=["holes"])
    params["task_defs"]["holes"] = _mask_task("data/m.png")
    write_params(project / "params.yaml", params)
    with pytest.raises(ValueError, match=r"task_defs\.holes\.degradation\.mask: data/m.png must live in data/masks"):
        run_degrade(task="holes", out="outs/degrade/f16-holes")


def test_a_mask_of_the_images_size_is_aligned_with_it(project):
    """The accepted case: mask and image have one size and one centre crop, so the mask's holes stay in place."""
    array = np.full((512, 512), 255)
    array[250:262, 240:270] = 0  # a hole at the centre: inside the 32x32 centre crop
    _write_mask(project / "data" / "masks" / "m.png", array)
    params = tiny_params(tasks=["holes"])
    params["task_defs"]["holes"] = _mask_task("data/masks/m.png")
    write_params(project / "params.yaml", params)
    run_degrade(task="holes", out="outs/degrade/f16-holes")
    mask = io.load_tensors(project / "outs/degrade/f16-holes" / layout.OBSERVATION)[0]["op.mask"][0, 0]
    expected = torch.ones(32, 32)
    expected[250 - 240 : 262 - 240, 240 - 240 : 270 - 240] = 0
    assert torch.equal(mask, expected)


# ---------------------------------------------------------------- outputs: a stage replaces only what it wrote


def test_out_data_is_refused_and_data_survives(project):
    write_params(project / "params.yaml", tiny_params())
    before = sorted(p.name for p in (project / "data").iterdir())
    with pytest.raises(ValueError, match="refusing to replace data with the output of stage degrade"):
        run_degrade(out="data")
    assert sorted(p.name for p in (project / "data").iterdir()) == before
    assert (project / "data" / "f16.png").read_bytes() == (DATA / "f16.png").read_bytes()


def test_out_onto_another_stages_output_or_a_file_is_refused(project):
    write_params(project / "params.yaml", tiny_params())
    run_degrade()
    shutil.copytree("outs/degrade/f16-denoise", "outs/another")
    with pytest.raises(ValueError, match="not an output of stage dense_fit / imp_round"):
        dense_fit.main(
            ["--obs", "outs/degrade/f16-denoise", "--task", "denoise", "--seed", "0", "--out", "outs/another"]
        )
    with pytest.raises(ValueError, match="it is not a directory"):
        run_degrade(out="params.yaml")
    assert load_params().images == ("f16", "baby")


def test_a_stage_replaces_its_own_output_and_an_empty_folder(project):
    write_params(project / "params.yaml", tiny_params())
    Path("outs/degrade/f16-denoise").mkdir(parents=True)
    run_degrade()
    first = (project / "outs/degrade/f16-denoise" / layout.OBSERVATION).read_bytes()
    run_degrade()
    assert (project / "outs/degrade/f16-denoise" / layout.OBSERVATION).read_bytes() == first
    assert not [p for p in Path("outs/degrade").iterdir() if p.name.startswith(".")]  # no temporary left


def test_an_interrupted_stage_leaves_the_previous_output_whole(project, monkeypatch):
    write_params(project / "params.yaml", tiny_params())
    run_degrade()
    before = {p.name: p.read_bytes() for p in Path("outs/degrade/f16-denoise").iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "save_png", interrupted)  # dies half-way through writing its files
    with pytest.raises(KeyboardInterrupt):
        run_degrade()
    assert {p.name: p.read_bytes() for p in Path("outs/degrade/f16-denoise").iterdir()} == before
    assert not [p for p in Path("outs/degrade").iterdir() if p.name.startswith(".")]


def test_a_full_disk_during_a_write_keeps_the_previous_file(tmp_path):
    """RLIMIT_FSIZE makes writes past 64 KiB fail as a full disk would (EFBIG, like ENOSPC): cheap, no tmpfs."""
    weights, metrics = tmp_path / "weights.safetensors", tmp_path / "metrics.json"
    io.save_tensors(weights, {"w": torch.zeros(4)}, {"round": 1})
    io.write_json(metrics, {"psnr": 30.0})
    before = {p: p.read_bytes() for p in (weights, metrics)}
    script = f"""
import resource, signal, torch
from lipcore import io
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
for write in (lambda: io.save_tensors({str(weights)!r}, {{"w": torch.zeros(1 << 20)}}, {{"round": 2}}),
              lambda: io.write_json({str(metrics)!r}, {{"psnr": [0.5] * 100000}})):
    try:
        write()
    except OSError as err:
        print("refused:", err)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("refused:") and "File too large" in line for line in lines), out
    assert {p: p.read_bytes() for p in (weights, metrics)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "weights.safetensors"]  # no temporaries


# ---------------------------------------------------------------- artifacts: safetensors only, shapes checked


@pytest.mark.parametrize("kind", ["pickle", "garbage"])
def test_weights_that_are_not_safetensors_are_refused_unread(project, kind):
    write_params(project / "params.yaml", tiny_params())
    run_chain(tiny_params(imp={**tiny_params()["imp"], "chain": []}, sparsity=0.0))
    trained = layout.round_dir(layout.pair_rounds("f16", "denoise"), 0, 0) / layout.TRAINED
    if kind == "pickle":
        torch.save({"x": torch.zeros(2)}, trained)
    else:
        trained.write_bytes(b"\x00" * 100)
    write_params(project / "params.yaml", tiny_params())
    with pytest.raises(ValueError, match="is not a valid safetensors file"):
        run_round(1, 0)


def run_round(k: int, parent: int, seed: int = 0, out: Path | None = None, inputs_seed: int | None = None):
    """imp_round k of f16-denoise from `parent`; out (default: round k of `seed`) and the seed whose round
    directories are the inputs (default: `seed`) can be set apart, to hand the stage wrong ones."""
    base = layout.pair_rounds("f16", "denoise")
    given = seed if inputs_seed is None else inputs_seed
    out = layout.round_dir(base, seed, k) if out is None else out
    imp_round.main(
        ["--obs", "outs/degrade/f16-denoise", "--task", "denoise", "--seed", str(seed), "--round", str(k)]
        + ["--dense", str(layout.round_dir(base, given, 0)), "--parent", str(layout.round_dir(base, given, parent))]
        + ["--out", str(out)]
    )


def test_weights_of_another_net_are_refused(project):
    params = tiny_params(sparsity=0.0)
    params["imp"]["chain"] = []
    write_params(project / "params.yaml", params)
    run_chain(params)
    bigger = tiny_params()
    bigger["net"]["channels_down"] = 16
    write_params(project / "params.yaml", bigger)
    with pytest.raises(ValueError, match="has shape"):
        run_round(1, 0)


# ---------------------------------------------------------------- fits that diverge; masks that cannot be drawn


def test_a_diverging_fit_fails_naming_the_iteration_and_writes_nothing(project):
    write_params(project / "params.yaml", tiny_params(fit={**tiny_params()["fit"], "lr": 1e10}))
    run_degrade()
    with pytest.raises(FitDiverged, match=r"loss became NaN/inf at iteration 4; 2 backtracks") as err:
        dense_fit.main(
            ["--obs", "outs/degrade/f16-denoise", "--task", "denoise", "--seed", "0"]
            + ["--out", "outs/rounds/f16-denoise/s0/r0"]
        )
    assert "lower fit.lr (now 1e+10)" in str(err.value)
    assert not Path("outs/rounds").exists() or not any(Path("outs/rounds").rglob("*.json"))


def test_a_diverging_stage_exits_non_zero_naming_stage_and_image(project):
    """The stage as DVC runs it: exit status 1, one line naming stage, image, seed and iteration; no output."""
    write_params(project / "params.yaml", tiny_params(fit={**tiny_params()["fit"], "lr": 1e10}))
    run_degrade()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "stages.dense_fit", "--obs", "outs/degrade/f16-denoise", "--task", "denoise"]
    cmd += ["--seed", "0", "--out", "outs/rounds/f16-denoise/s0/r0"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: stage dense_fit (--obs outs/degrade/f16-denoise --task denoise --seed 0")
    assert "fit diverged" in last and "iteration 4" in last and "Traceback" not in out.stderr
    assert not Path("outs/rounds").exists()


def test_a_transient_nan_is_backtracked_and_the_fit_goes_on(f16_small, tiny_cfg):
    """The net's output turns NaN at one step (iteration 8, a check): backtracking restores the weights with fresh
    Adam moments, the EMA, ES-WMV and oracle skip the NaN output, and the fit ends finite with no error."""
    gen = torch.Generator().manual_seed(0)
    net = build_net(tiny_cfg, gen)
    z = make_input(net, 32, 32, gen)
    calls = []

    def blow_up_once(module, inputs, output):
        calls.append(1)
        return output * float("nan") if len(calls) == 8 else output

    net.register_forward_hook(blow_up_once)
    op = Denoise(tuple(f16_small.shape[1:]), 0.1)
    y = op.observe(f16_small, gen)
    cfg = FitConfig(iterations=20, log_every=4, es_window=4, es_patience=4, ema_weight=0.9)
    res = fit(net, z, op, y, cfg, x_true=f16_small, device="cpu")
    assert res.backtracks == 1 and res.iterations == 20
    outputs = (res.x_last, res.x_ema, res.x_es, res.x_es_ema, res.oracle["out"].x, res.oracle["ema"].x)
    assert all(torch.isfinite(t).all() for t in outputs)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert np.isnan(res.history["loss"][1]) and np.isfinite(res.history["loss"][2:]).all()  # row 1: iteration 8
    assert res.oracle["out"].psnr > 10


def test_a_parent_round_with_nan_weights_cannot_draw_a_short_mask(project):
    params = tiny_params()
    write_params(project / "params.yaml", params)
    run_chain({**params, "imp": {**params["imp"], "chain": []}})
    trained = layout.round_dir(layout.pair_rounds("f16", "denoise"), 0, 0) / layout.TRAINED
    tensors, meta = io.load_tensors(trained)
    name = next(k for k in tensors if k.endswith(".weight") and tensors[k].dim() == 4)
    tensors[name].view(-1)[: tensors[name].numel() // 2] = float("nan")
    io.save_tensors(trained, tensors, meta)
    with pytest.raises(ValueError, match=r"scores are NaN/inf .*could not remove its share"):
        run_round(1, 0)
    assert not layout.round_dir(layout.pair_rounds("f16", "denoise"), 0, 1).exists()


# ---------------------------------------------------------------- valid setups that must run


def test_one_image_one_task_runs_through_transfer_and_report(project):
    params = tiny_params(images=["f16"], tasks=["denoise"])
    write_params(project / "params.yaml", params)
    run_chain(params)
    run_evaluate("f16", "denoise")
    run_transfer()
    t = json.loads(layout.TRANSFER_METRICS.read_text())
    assert t["psnr"] == {} and "no other problem" in t["note"]
    report.main(
        ["--evaluate", "outs/evaluate", "--transfer", str(layout.TRANSFER), "--out", "report"]
        + ["--headline", str(layout.HEADLINE)]
    )
    md = (project / "report" / layout.REPORT_MD).read_text()
    assert "No transfer measured: one image x task problem only (f16-denoise)" in md
    assert "run `dvc repro gan_evaluate`" in md  # the GAN study was not run here, and the report says so


def test_sparsity_zero_runs_evaluate_and_transfer(project):
    params = tiny_params(sparsity=0.0)
    params["imp"]["chain"] = [[1, 0]]
    write_params(project / "params.yaml", params)
    run_chain(params)
    run_evaluate("f16", "denoise")
    head = json.loads(layout.headline_metrics("f16", "denoise").read_text())
    assert head["round"] == 0
    run_transfer()
    assert "no mask to transfer" in json.loads(layout.TRANSFER_METRICS.read_text())["note"]


def test_two_dvc_repro_at_once_are_refused(tmp_path):
    """DVC's repo lock: a second `dvc repro` while one holds it fails at once instead of racing the first."""
    from dvc.lock import make_lock

    make_project(tmp_path, tiny_params())
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    lock = make_lock(str(tmp_path / ".dvc" / "tmp" / "lock"), tmp_dir=str(tmp_path / ".dvc" / "tmp"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    with lock:
        out = subprocess.run(
            [sys.executable, "-m", "dvc", "repro"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
        )
    assert out.returncode != 0 and "lock" in (out.stdout + out.stderr).lower()
    assert not (tmp_path / "outs").exists()


SHELL_NAME = "x$(touch PWNED)"  # dvc.yaml would run it: `--name ${item.image}`


def _bad_dvc_project(path: Path, params: dict) -> dict:
    """A git + DVC repo of the pipeline with `params`, data/<image>.png present for every image; the env to run in."""
    make_project(path, params, code=True)
    for image in params["images"]:
        if not (path / "data" / f"{image}.png").exists():
            shutil.copy(DATA / "f16.png", path / "data" / f"{image}.png")
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update(PYTHONPATH=str(path), DVC_NO_ANALYTICS="1", OMP_NUM_THREADS="1")
    return env


@pytest.mark.parametrize(
    "params, message",
    [
        (tiny_params(fit={**tiny_params()["fit"], "lr": "0.01"}), "fit.lr: expected a number, got '0.01'"),
        (tiny_params(images=["f16", SHELL_NAME]), f"images: '{SHELL_NAME}' is not a name: a name is 1-64 letters"),
    ],
    ids=["lr a string", "an image name with shell substitution"],
)
def test_dvc_repro_with_bad_params_stops_at_the_first_stage_naming_the_key(tmp_path, params, message):
    """Real DVC: bad params fail check_params, the first stage, as it loads them; no other command runs (a name
    that is shell code never reaches a shell: no PWNED file)."""
    env = _bad_dvc_project(tmp_path, params)
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
    )
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "ERROR: stage check_params (" in text and message in text, text
    assert text.count("Running stage") == 1  # the first stage refused; DVC ran nothing after it
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "outs").exists() and not (tmp_path / "metrics").exists()


def test_the_executor_refuses_bad_params_up_front_in_one_line(tmp_path):
    """python -m stages.executor loads params.yaml before it starts Ray or any stage: one line, no traceback."""
    env = _bad_dvc_project(tmp_path, tiny_params(images=["f16", SHELL_NAME]))
    cmd = [sys.executable, "-m", "stages.executor", "--num-cpus", "1"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.strip() == f"ERROR: params.yaml: images: '{SHELL_NAME}' is not a name: " + (
        "a name is 1-64 letters, digits, '_', '+' or '-', not starting with '-' or '+' (names go into file names, "
        "params keys and the shell commands of dvc.yaml)"
    ), out.stderr
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "outs").exists()


@pytest.mark.parametrize(
    "flag, value",
    [("--metrics", "params.yaml"), ("--metrics", "outs"), ("--metrics", "data/f16.png"), ("--metrics", "m.json")],
)
def test_an_output_file_of_another_kind_is_refused(project, capsys, flag, value):
    write_params(project / "params.yaml", tiny_params())
    Path("outs").mkdir()
    io.write_json(project / "m.json", {"round": 2, "methods": {}})  # evaluate's headline, not transfer's
    before = {p: p.read_bytes() for p in (project / "params.yaml", project / "data" / "f16.png", project / "m.json")}
    args = ["--degrade", "outs/degrade", "--rounds", "outs/rounds", "--out", "outs/transfer", flag, value]
    with pytest.raises(SystemExit) as err:
        transfer.main(args)
    assert err.value.code == 2 and "refusing" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before


# ---------------------------------------------------------------- stages handed the wrong inputs or outputs


def run_dense(obs: str, task: str, seed: int, out: str):
    dense_fit.main(["--obs", obs, "--task", task, "--seed", str(seed), "--out", out])


@pytest.fixture(scope="module")
def fitted_chain(tmp_path_factory) -> Path:
    """A project with f16-denoise degraded and rounds 0-2 of seed 0 fitted (tiny params), made once."""
    params = tiny_params()
    path = make_project(tmp_path_factory.mktemp("chain"), params)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)
        run_chain(params)
    return path


@pytest.fixture
def chained(project, fitted_chain):
    """The project holding a copy of `fitted_chain`'s params and outputs (each test may break its own copy)."""
    shutil.copy(fitted_chain / "params.yaml", project / "params.yaml")
    shutil.copytree(fitted_chain / "outs", project / "outs")
    return layout.pair_rounds("f16", "denoise")


def test_a_round_refuses_an_out_that_is_one_of_its_inputs(chained):
    r0 = layout.round_dir(chained, 0, 0)
    before = (r0 / layout.INIT).read_bytes()
    with pytest.raises(ValueError, match=r"--out .*r0 is also an input of this round"):
        run_round(1, 0, out=r0)
    assert (r0 / layout.INIT).read_bytes() == before


def test_a_round_refuses_to_replace_another_seeds_or_rounds_output(chained):
    with pytest.raises(ValueError, match=r"holds round 0 of seed 0, not round 0 of seed 1"):
        run_dense("outs/degrade/f16-denoise", "denoise", 1, str(layout.round_dir(chained, 0, 0)))
    with pytest.raises(ValueError, match=r"holds round 2 of seed 0, not round 1 of seed 0"):
        run_round(1, 0, out=layout.round_dir(chained, 0, 2))


def test_a_round_refuses_inputs_of_another_seed(chained):
    with pytest.raises(ValueError, match=r"belongs to seed 0, not seed 1"):
        run_round(1, 0, seed=1, inputs_seed=0)


def test_an_observation_of_another_task_or_image_is_refused(chained):
    with pytest.raises(
        ValueError, match=r"observation\.safetensors holds the degradation .*'denoise'.* asks for .*'inpaint'"
    ):
        run_dense("outs/degrade/f16-denoise", "inpaint", 0, "outs/rounds/x/s0/r0")
    with pytest.raises(ValueError, match=r"is an observation of image 'f16', not 'baby'"):
        run_evaluate_on("baby", "denoise", obs="outs/degrade/f16-denoise", rounds=str(chained))
    assert not Path("outs/rounds/x").exists() and not Path("outs/evaluate").exists()


def run_evaluate_on(image: str, task: str, obs: str, rounds: str):
    evaluate.main(
        ["--name", image, "--task", task, "--obs", obs, "--rounds", rounds, "--out", "outs/evaluate/e"]
        + ["--metrics", "metrics/e.json", "--sparsity-plot", "plots/s.csv", "--iteration-plot", "plots/i.csv"]
        + ["--grid-plot", "plots/g.png"]
    )


def test_a_stale_mask_is_refused(chained):
    r1, r2 = layout.round_dir(chained, 0, 1), layout.round_dir(chained, 0, 2)
    shutil.copy(r1 / layout.MASK, r2 / layout.MASK)  # round 2's mask replaced by round 1's
    with pytest.raises(ValueError, match=r"r2/mask\.safetensors is the mask of round 1, not of round 2"):
        run_evaluate_on("f16", "denoise", "outs/degrade/f16-denoise", str(chained))
    assert not Path("outs/evaluate").exists() and not Path("metrics").exists()


CORRUPTIONS = {
    "metrics without round": (layout.FIT_METRICS, lambda p: io.write_json(p, {"psnr": 1}), r"missing \['round'"),
    "metrics not json": (layout.FIT_METRICS, lambda p: p.write_text("{oops"), r"metrics\.json is not valid JSON"),
    "metrics a list": (layout.FIT_METRICS, lambda p: io.write_json(p, [1, 2]), r"metrics\.json: expected a mapping"),
    "history without psnr_ema": (
        layout.HISTORY,
        lambda p: io.write_json(p, {"iteration": [1], "psnr_out": [1.0]}),
        r"history\.json: missing \['psnr_ema'\]",
    ),
    "history with a string in a psnr column": (
        layout.HISTORY,
        lambda p: _edit_json(p, "psnr_ema", lambda v: ["x", *v[1:]]),
        r"history\.json: psnr_ema\[0\] is 'x', not a number or null; rerun the stage that writes it",
    ),
    "history with a short column": (
        layout.HISTORY,
        lambda p: _edit_json(p, "psnr_ema", lambda v: v[:-1]),
        r"history\.json: psnr_ema has 2 entries but iteration has 3; the columns must be equal-length lists",
    ),
    "history with a column not a list": (
        layout.HISTORY,
        lambda p: _edit_json(p, "psnr_out", lambda v: 17.0),
        r"history\.json: psnr_out is 17\.0, not a list of numbers",
    ),
    "history with a null iteration": (
        layout.HISTORY,
        lambda p: _edit_json(p, "iteration", lambda v: [None, *v[1:]]),
        r"history\.json: iteration\[0\] is None, not a number",
    ),
    "metrics es a string": (
        layout.FIT_METRICS,
        lambda p: _edit_json(p, "es", lambda v: "high"),
        r"metrics\.json: es is 'high', not a mapping of psnr, ssim and iteration; rerun the stage that writes it",
    ),
    "metrics es psnr a string": (
        layout.FIT_METRICS,
        lambda p: _edit_json(p, "es", lambda v: {**v, "psnr": "30"}),
        r"metrics\.json: es\.psnr is '30', not a number",
    ),
    "metrics es without iteration": (
        layout.FIT_METRICS,
        lambda p: _edit_json(p, "es", lambda v: {"psnr": v["psnr"], "ssim": v["ssim"]}),
        r"metrics\.json: es: missing \['iteration'\]",
    ),
    "metrics sparsity without effective": (
        layout.FIT_METRICS,
        lambda p: _edit_json(p, "sparsity", lambda v: {"nominal": v["nominal"]}),
        r"metrics\.json: sparsity: missing \['effective'\]",
    ),
    "metrics sparsity a number": (
        layout.FIT_METRICS,
        lambda p: _edit_json(p, "sparsity", lambda v: 0.0),
        r"metrics\.json: sparsity is 0\.0, not a mapping",
    ),
    "metrics round a string": (
        layout.FIT_METRICS,
        lambda p: _edit_json(p, "round", lambda v: "0"),
        r"metrics\.json: round is '0', not an integer",
    ),
    "metrics output unknown": (
        layout.FIT_METRICS,
        lambda p: _edit_json(p, "output", lambda v: "mean"),
        r"metrics\.json: output is 'mean', not one of \['ema', 'raw'\]",
    ),
}


def _edit_json(path: Path, key: str, change) -> None:
    """A JSON record with record[key] replaced by change(record[key])."""
    record = io.read_json(path)
    record[key] = change(record[key])
    io.write_json(path, record)


@pytest.mark.parametrize("name, change, message", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupted_round_records_are_refused_before_evaluate_writes_anything(chained, name, change, message):
    change(layout.round_dir(chained, 0, 0) / name)
    with pytest.raises(ValueError, match=message):
        run_evaluate_on("f16", "denoise", "outs/degrade/f16-denoise", str(chained))
    assert not Path("outs/evaluate").exists() and not Path("metrics").exists() and not Path("plots").exists()


def _invert_mask(rounds: Path, k: int) -> None:
    """Round k's mask inverted in place (every kept weight pruned and back), its metadata left as it was."""
    path = layout.round_dir(rounds, 0, k) / layout.MASK
    tensors, meta = io.load_tensors(path)
    io.save_tensors(path, {n: ~m for n, m in tensors.items()}, meta)


def _unnest_mask(rounds: Path, k: int) -> None:
    """Round k's mask with one weight its parent pruned brought back, and one it kept pruned: the same sparsity
    (metadata and metrics still agree), but no longer nested in round k-1's mask."""
    path = layout.round_dir(rounds, 0, k) / layout.MASK
    parent = io.load_tensors(layout.round_dir(rounds, 0, k - 1) / layout.MASK)[0]
    tensors, meta = io.load_tensors(path)
    name = next(n for n in tensors if bool((~parent[n]).any()) and bool(tensors[n].any()))
    flat = tensors[name].view(-1)
    flat[int(torch.nonzero(~parent[name].view(-1))[0])] = True
    flat[int(torch.nonzero(flat & parent[name].view(-1))[0])] = False
    io.save_tensors(path, tensors, meta)


def _edit_mask_sparsity(rounds: Path, k: int) -> None:
    """Round k's metrics.json claiming another sparsity than its mask's."""
    path = layout.round_dir(rounds, 0, k) / layout.FIT_METRICS
    _edit_json(path, "sparsity", lambda v: {**v, "effective": 0.5, "kept": v["total"] // 2})


MASK_EDITS = {
    "inverted r2 mask": (
        _invert_mask,
        2,
        r"r2/mask\.safetensors prunes 64\.00% of the prunable weights \(3574 of 5584\), but its metadata says "
        r"36\.00%: the mask was edited or replaced; rerun round 2",
    ),
    "r2 mask not nested in r1's": (
        _unnest_mask,
        2,
        r"r2/mask\.safetensors is not nested in round 1's mask .*r1/mask\.safetensors: it keeps 1 weight\(s\) "
        r"that round 1 pruned \(an IMP round only prunes more\); rerun round 2",
    ),
    "r1 metrics claim another sparsity": (
        _edit_mask_sparsity,
        1,
        r"r1/mask\.safetensors prunes 20\.00% of the prunable weights \(1117 of 5584\), but \S*/s0/r1/metrics\.json "
        r"says 50\.00%: the round's files disagree; rerun round 1",
    ),
}


@pytest.mark.parametrize("edit, k, message", MASK_EDITS.values(), ids=MASK_EDITS.keys())
def test_masks_that_disagree_with_their_round_are_refused_before_evaluate_writes_anything(chained, edit, k, message):
    edit(chained, k)
    with pytest.raises(ValueError, match=message):
        run_evaluate_on("f16", "denoise", "outs/degrade/f16-denoise", str(chained))
    assert not Path("outs/evaluate").exists() and not Path("metrics").exists() and not Path("plots").exists()


def test_a_round_refuses_an_edited_parent_mask_and_keeps_its_output(chained):
    _invert_mask(chained, 1)
    r2 = layout.round_dir(chained, 0, 2)
    before = {p.name: p.read_bytes() for p in r2.iterdir()}
    with pytest.raises(ValueError, match=r"r1/mask\.safetensors prunes 80\.00% .* rerun round 1"):
        run_round(2, 1)
    assert {p.name: p.read_bytes() for p in r2.iterdir()} == before


def test_an_observation_that_does_not_fit_its_image_shape_is_refused(project):
    write_params(project / "params.yaml", tiny_params())
    run_degrade()
    obs = project / "outs/degrade/f16-denoise" / layout.OBSERVATION
    tensors, meta = io.load_tensors(obs)
    io.save_tensors(obs, {**tensors, "y": torch.zeros(1, 3, 64, 64)}, meta)
    with pytest.raises(ValueError, match=r"observation \(1, 3, 64, 64\) do not fit the recorded image shape"):
        run_dense("outs/degrade/f16-denoise", "denoise", 0, "outs/rounds/f16-denoise/s0/r0")


# ---------------------------------------------------------------- image files: orientation and scale


def test_the_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)  # 10 high, 20 wide
    arr[0, :, 0] = 255  # a red top row
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    Image.fromarray(arr).save(tmp_path / "rotated.png", exif=exif)
    x = io.load_image(tmp_path / "rotated.png")
    assert x.shape == (3, 20, 10)  # shown upright: 20 high, 10 wide
    assert torch.equal(x[0, :, -1], torch.ones(20))  # the top row is now the right column


@pytest.mark.parametrize(
    "array, mode, message",
    [
        (np.full((40, 40), 200.0, np.float32), "F", r"values on the \[0, 1\] scale, got \[200, 200\]"),
        (np.full((40, 40), np.nan, np.float32), "F", r"values on the \[0, 1\] scale"),
        (
            np.full((40, 40), 100000, np.int32),
            "I",
            r"integer pixel values span \[100000, 100000\]; expected 8 or 16 bits",
        ),
    ],
    ids=["float 0..255", "float NaN", "int32 beyond 16 bits"],
)
def test_images_on_another_scale_are_refused_not_clipped_white(tmp_path, array, mode, message):
    Image.fromarray(array, mode).save(tmp_path / "odd.tiff")
    with pytest.raises(ValueError, match=message):
        io.load_image(tmp_path / "odd.tiff")


def test_transfer_pairs_that_select_nothing_say_so():
    from stages.plumbing.params import TransferConfig
    from stages.transfer import nothing_to_transfer

    pairs = [("f16", "denoise"), ("baby", "denoise")]
    assert "no two problems" in nothing_to_transfer(2, pairs, TransferConfig("across_tasks"))
    assert nothing_to_transfer(2, pairs, TransferConfig("across_images")) is None


def test_what_a_killed_write_leaves_beside_its_output_is_ignored_by_dvc_and_swept(tmp_path):
    """A stage killed during its output's rename (SIGKILL, the OOM killer) leaves `.r0.<random>.tmp/` or `.r0.old/`
    beside it: DVC must not hash it into the dependents' deps (they reran for it), and the next write sweeps it."""
    from dvc.repo import Repo

    shutil.copy(ROOT / ".dvcignore", tmp_path / ".dvcignore")
    Repo.init(str(tmp_path), no_scm=True)
    seed = tmp_path / "outs" / "rounds" / "f16-denoise" / "s0"
    seed.mkdir(parents=True)
    junk = [seed / ".r0.k3j9x_a1.tmp", seed / ".r0.old", seed / ".metrics.json.0a1b2c3d.tmp"]
    for path in junk:
        path.mkdir()
        (path / "weights.safetensors").write_bytes(b"half written")
    other = seed / ".r0.x.tmp"  # not a name a write of r0 makes: left alone
    other.write_text("keep")
    with Repo(str(tmp_path)) as repo:
        assert all(repo.dvcignore.is_ignored(repo.fs, str(path)) for path in junk)
    with io.atomic_dir(seed / "r0") as tmp:
        (tmp / "mask.safetensors").write_text("new")
    io.write_json(seed / "metrics.json", {"new": 1})
    assert not any(path.exists() for path in junk) and other.exists()
    assert (seed / "r0" / "mask.safetensors").read_text() == "new"
