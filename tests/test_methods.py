"""lipcore.methods: one entry per method; every registered method reaches the report's tables, claims, figure,
image grid and headline; params naming an unregistered one are refused; a method added by one entry (and its
module: tests/toy_method.py) runs through evaluate into the report; the retraining helper pairs with the rounds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from lipcore import methods
from stages import report
from stages.plumbing import layout
from stages.plumbing.params import EvaluateConfig
from stages.reporting import claims, figures, headline
from tests import toy_method
from tests.conftest import dvc_stages, make_project, run_stage_in_process, tiny_params


def test_the_registry_holds_one_entry_per_method_in_the_reports_order():
    assert methods.names() == [
        *("dense", "lip", "random_global", "random_layer", "snip", "snip_layer", "oes", "snip_iterative"),
        *("reinit", "lip_theta0", "decoder"),
    ]
    assert all(name == m.name and m.what for name, m in methods.REGISTRY.items())
    assert methods.names("reference") == ["dense", "lip"]
    assert methods.names("control") == ["reinit", "lip_theta0"]
    assert methods.selectable() == ["random_global", "random_layer", "snip", "snip_layer", "oes", "snip_iterative"]
    assert methods.controls(0) == ["reinit"] and methods.controls(3) == ["reinit", "lip_theta0"]
    # every baseline and control has a claim, and a control trains LIP's own mask from another start
    assert all(methods.get(n).claim for n in methods.opponents())
    assert all(methods.get(n).mask is methods.lip_mask for n in methods.names("control"))
    assert {methods.get(n).start for n in methods.names("control")}.isdisjoint({methods.rewind_start})
    with pytest.raises(ValueError, match="unknown method 'magnitude'; choose from"):
        methods.get("magnitude")


def _points(value: float) -> dict:
    return {f"{p}_{q}": {"mean": value, "std": 0.1} for p in ("oracle_best", "last", "es") for q in ("psnr", "ssim")}


def _records(names: list[str]) -> dict[str, dict]:
    """Hand-made evaluate records of two problems x two seeds in which every method of `names` was fitted."""
    records = {}
    for image in ("a", "b"):
        per_seed = {
            m: [{"es": {"psnr": 30.0 + i + 0.1 * s}, "oracle_best": {"psnr": 31.0 + i + 0.2 * s}} for s in (0, 1)]
            for i, m in enumerate(names)
        }
        curve = [
            {"round": k, "nominal_sparsity": s, "effective_sparsity": s, **_points(30.0)}
            for k, s in ((0, 0), (3, 0.488))
        ]
        summary = {
            "image": image,
            "task": "denoise",
            "shown_point": "es",
            "headline": {
                "target_sparsity": 0.45,
                "round": 3,
                "nominal_sparsity": 0.488,
                "effective_sparsity": 0.488,
                "methods": {m: _points(30.0) for m in names},
            },
            "curves": {"lip": curve},
        }
        per_seed_curves = {"lip": {"0": per_seed["dense"], "3": per_seed["lip"]}}
        records[f"{image}-denoise"] = {"summary": summary, "per_seed": per_seed, "per_seed_curves": per_seed_curves}
    return records


def _reaches_everything(monkeypatch, tmp_path: Path) -> None:
    """Every registered method is in every table, claim, figure, grid and headline column that lists methods."""
    names = methods.names()
    records = _records(names)
    summary = records["a-denoise"]["summary"]
    table = "\n".join(claims.comparison_table(claims.comparisons(records, "es")))
    rows = "\n".join(report.headline_table(summary))
    claimed = "\n".join(claims.claims_section(records, {"per_seed": {}}, {}, "es"))
    for name in methods.opponents():
        assert f"| {name} | {methods.get(name).what} |" in table, name
        assert f"LIP − {name} " in claimed, name
        assert f"| {methods.get(name).claim} |" in claimed, name
    assert all(f"| {name} |" in rows for name in names)
    assert f"| {methods.get('dense').claim} |" in claimed

    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.append(fig))
    report.curves_figure([summary], tmp_path / "curves.png")
    labels = drawn[0].axes[0].get_legend_handles_labels()[1]
    assert labels == ["dense", "lip", *methods.markers()]  # the dense line, LIP's curve, then every marker
    assert set(methods.markers()) == set(methods.opponents()) - {"dense"}

    shown = [name for name in names if methods.get(name).grid]
    assert figures.grid_names() == ["clean", "degraded", *shown]
    fed = {m for ms in methods.headline_columns().values() for m in ms}
    assert set(headline.problem_psnr(summary)) == set(methods.headline_columns())
    assert fed == {name for name in names if methods.get(name).headline}


def test_every_registered_method_reaches_every_table_plot_and_grid(monkeypatch, tmp_path):
    _reaches_everything(monkeypatch, tmp_path)
    with methods.registered(toy_method.TOY):  # and a method added later too
        _reaches_everything(monkeypatch, tmp_path)
        assert "toy" in figures.grid_names() and "toy" in methods.markers()
    assert "toy" not in methods.REGISTRY


def test_the_default_report_keeps_its_order_and_its_columns():
    """The committed report's order (tables, figure colours, grid, headline.json) is the registry's."""
    assert methods.markers()[:6] == ["random_layer", "random_global", "snip_layer", "snip", "reinit", "decoder"]
    assert figures.grid_names() == ["clean", "degraded", "dense", "lip", "random_global", "snip", "decoder"]
    assert methods.headline_columns() == {
        "dense": ["dense"],
        "lip": ["lip"],
        "random": ["random_global", "random_layer"],
        "snip": ["snip"],
        "decoder": ["decoder"],
    }
    assert methods.claimed() == [
        *("random_global", "random_layer", "snip", "snip_layer", "oes", "snip_iterative", "decoder"),
        *("reinit", "lip_theta0"),
    ]


@pytest.mark.parametrize("key", ["baselines", "curve_methods"])
def test_an_unknown_method_in_params_is_refused_with_the_registered_names(key):
    with pytest.raises(ValueError) as err:
        EvaluateConfig(**{key: ("random_global", "magnitude")})
    assert f"{key}: unknown method(s) ['magnitude']; choose from {methods.selectable()}" in str(err.value)
    with pytest.raises(ValueError, match="unknown method"):  # a method that makes no mask is not chosen so
        EvaluateConfig(**{key: ("decoder",)})
    with pytest.raises(ValueError, match="toy"):
        EvaluateConfig(**{key: ("toy",)})
    with methods.registered(toy_method.TOY):
        assert EvaluateConfig(**{key: ("toy",)})


def test_a_baseline_kept_off_the_curves_is_refused_there_only():
    headline_only = dataclasses.replace(toy_method.TOY, name="toy_headline_only", curve=False)
    with methods.registered(headline_only):
        assert EvaluateConfig(baselines=("toy_headline_only",))
        with pytest.raises(ValueError, match=r"curve_methods: unknown method\(s\) \['toy_headline_only'\]"):
            EvaluateConfig(curve_methods=("toy_headline_only",))


@pytest.fixture(scope="module")
def pipeline_with_toys(tmp_path_factory):
    """A tiny pipeline (one image, one task) whose evaluate also fits the two test methods of tests/toy_method.py."""
    params = tiny_params(images=["f16"])
    params["evaluate"]["baselines"] = ["random_global", "toy", "lip_again"]
    project = make_project(tmp_path_factory.mktemp("toys"), params)
    monkeypatch = pytest.MonkeyPatch()
    try:
        monkeypatch.chdir(project)
        with methods.registered(toy_method.TOY), methods.registered(toy_method.LIP_AGAIN):
            for stage in dvc_stages(project):
                if not stage.addressing.startswith("gan_"):
                    run_stage_in_process(stage)
    finally:
        monkeypatch.undo()
    return project


def test_a_method_added_by_one_entry_runs_through_evaluate_into_the_report(pipeline_with_toys):
    project = pipeline_with_toys
    record = json.loads((project / layout.evaluate_dir("f16", "denoise") / layout.RESULTS).read_text())
    head = record["summary"]["headline"]
    assert set(head["methods"]) == {"dense", "lip", "random_global", "toy", "lip_again", "reinit", "decoder"}
    (toy,), (lip,) = record["per_seed"]["toy"], record["per_seed"]["lip"]
    assert toy["sparsity"]["effective"] == pytest.approx(lip["sparsity"]["effective"])  # LIP's sparsity
    assert (project / layout.evaluate_dir("f16", "denoise") / layout.method_png("toy")).exists()  # its grid image

    text = (project / "report" / "tiny" / layout.REPORT_MD).read_text()
    assert f"| toy | {toy_method.TOY.what} |" in text  # LIP against each method
    assert "| LIP > its mask read backwards | LIP − toy " in text  # the claims
    assert "\n| toy | " in text.split("## f16 / denoise")[1]  # the problem's headline table


def test_the_retraining_helper_pairs_with_the_imp_rounds(pipeline_with_toys):
    """LIP's headline mask from LIP's start, retrained by evaluate (retrain, the fit stream), scores as LIP's own
    round: the same fit, so paired differences against the rounds compare masks (or starts) alone."""
    record = json.loads((pipeline_with_toys / layout.evaluate_dir("f16", "denoise") / layout.RESULTS).read_text())
    (again,), (lip,) = record["per_seed"]["lip_again"], record["per_seed"]["lip"]
    for point in ("oracle_best", "last", "es"):
        assert again[point]["psnr"] == pytest.approx(lip[point]["psnr"], abs=1e-3), point
        assert again[point]["iteration"] == lip[point]["iteration"], point
