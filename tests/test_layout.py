"""dvc.yaml and stages/plumbing/layout.py spell the same paths: every output DVC declares is the path layout gives."""

from pathlib import Path

from stages.plumbing import layout
from tests.conftest import dvc_stages, make_project, tiny_params


def test_dvc_yaml_outputs_are_the_layout_paths(tmp_path):
    params = tiny_params(images=["f16", "baby", "kate"], tasks=["denoise", "inpaint"], seeds=[0, 3])
    params["multi"].update(modes=["shared", "average"], groups={"g": {"train": ["f16", "baby"], "heldout": ["kate"]}})
    declared = {str(out.def_path) for stage in dvc_stages(make_project(tmp_path, params)) for out in stage.outs}
    pairs = [(i, t) for i in params["images"] for t in params["tasks"]]
    rounds = [0] + [k for k, _ in params["imp"]["chain"]]
    expected = {layout.TRANSFER, layout.TRANSFER_METRICS, layout.report_dir(params["setting"]), layout.HEADLINE}
    expected.add(layout.PARAMS_CHECKED)
    for image, task in pairs:
        expected |= {
            layout.degrade_dir(image, task),
            layout.evaluate_dir(image, task),
            layout.headline_metrics(image, task),
            layout.sparsity_plot(image, task),
            layout.iteration_plot(image, task),
            layout.grid_plot(image, task),
        }
        expected |= {layout.round_dir(layout.pair_rounds(image, task), s, k) for s in params["seeds"] for k in rounds}
    for mode in params["multi"]["modes"]:
        expected |= {layout.round_dir(layout.multi_rounds("g", mode), s, k) for s in params["seeds"] for k in rounds}
    expected |= {layout.multi_evaluate_dir("g"), layout.multi_metrics("g")}
    gan = params["gan"]
    expected |= {layout.gan_round_dir(k) for k in [0] + [k for k, _ in gan["chain"]]}
    expected |= {layout.gan_cs_dir(m) for m in gan["cs"]["m"]} | {layout.gan_dip_dir(m) for m in gan["cs"]["m"]}
    expected |= {layout.GAN_TESTSET, layout.GAN_ROBUST, layout.GAN_EVALUATE, layout.GAN_METRICS}
    expected |= {layout.GAN_SPARSITY_PLOT, layout.GAN_M_PLOT}
    assert declared == {str(p) for p in expected}


def test_stage_commands_read_the_layout_paths(tmp_path):
    """The directories a command passes (--obs, --dense, --parent, --rounds, ...) are layout's too."""
    params = tiny_params(images=["f16", "baby", "kate"])
    params["multi"]["groups"] = {"g": {"train": ["f16", "baby"], "heldout": ["kate"]}}
    stages = dvc_stages(make_project(tmp_path, params))
    known = {str(out.def_path) for stage in stages for out in stage.outs}
    known |= {str(layout.DEGRADE), str(layout.ROUNDS), str(layout.EVALUATE)}
    known |= {str(layout.pair_rounds(i, t)) for i in params["images"] for t in params["tasks"]}
    known |= {str(layout.MULTI / "g"), str(layout.TRANSFER)}
    known |= {str(layout.image_file(i)) for i in params["images"]}
    known |= {str(layout.FACES), str(layout.GAN_ROUNDS), str(layout.GAN_CS), str(layout.GAN_DIP)}
    for stage in stages:
        words = stage.cmd.split()
        paths = [
            w
            for f, w in zip(words, words[1:])
            if f.startswith("--") and f not in ("--name", "--task", "--group", "--mode", "--m", "--round")
        ]
        paths = [p for p in paths if not p.lstrip("-").isdigit()]
        assert paths and set(paths) <= known, (stage.addressing, set(paths) - known)


def _stage_modules(module: str, seen: set[str] | None = None) -> set[str]:
    """The stages module `module` (dotted below stages/, e.g. "evaluate" or "plumbing.params") and every stages
    module it imports, directly or through another ('lipcore' among them when one imports the library)."""
    import ast

    from tests.conftest import ROOT

    seen = set() if seen is None else seen
    if module in seen:
        return seen
    seen.add(module)
    package = module.split(".")[:-1]
    path = ROOT / "stages" / Path(*module.split("."))
    source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:  # from . import x / from ..pkg.x import y
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                base = [*base, *node.module.split(".")]
            names = [a.name for a in node.names]
            is_dir = (ROOT / "stages" / Path(*base)).is_dir() if base else True
            targets = [".".join([*base, n]) for n in names] if is_dir else [".".join(base)]
            for target in targets:
                _stage_modules(target, seen)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if any(n and n.split(".")[0] == "lipcore" for n in names):
                seen.add("lipcore")
    return seen


def _code_dep(module: str) -> str:
    """The dvc.yaml dependency that covers a stages module: a top-level stage's own file, a subpackage's folder."""
    if module == "lipcore":
        return "lipcore"
    parts = module.split(".")
    return f"stages/{parts[0]}.py" if len(parts) == 1 else f"stages/{parts[0]}"


def test_every_stage_depends_on_the_stage_code_it_runs(tmp_path):
    """A change in any stages/ module a stage's command imports must rerun that stage."""
    params = tiny_params(images=["f16", "baby", "kate"])
    params["multi"]["groups"] = {"g": {"train": ["f16", "baby"], "heldout": ["kate"]}}
    for stage in dvc_stages(make_project(tmp_path, params)):
        module = stage.cmd.split()[2].removeprefix("stages.")
        deps = {str(d.def_path) for d in stage.deps}
        needed = {_code_dep(m) for m in _stage_modules(module)}
        assert needed <= deps, (stage.addressing, sorted(needed - deps))


def test_every_top_level_stages_module_is_a_stage_of_dvc_yaml():
    """stages/*.py are the stages, nothing else (their plumbing, the report's parts and the executor live in
    subpackages): the files' names equal the modules dvc.yaml's commands run."""
    import yaml

    from tests.conftest import ROOT

    commands = [s["cmd"] for s in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values()]
    modules = {c.split()[2].removeprefix("stages.") for c in commands}
    files = {f.stem for f in (ROOT / "stages").glob("*.py") if f.name != "__init__.py"}
    assert files == modules, (sorted(files - modules), sorted(modules - files))
