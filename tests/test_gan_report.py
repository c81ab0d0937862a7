"""stages.reporting.gan_report: the GAN section's verdicts read a hand-made gan_evaluate record (no generator runs)."""

import pytest

from stages.plumbing import layout
from stages.reporting import gan_report


def _paired(mean, low, high, verdict, n=4):
    return {"n": n, "mean": mean, "low": low, "high": high, "verdict": verdict, "lower": 3, "detectable": 0.002}


def _methods(dense, lip2, lip4):
    def m(in_range, face):
        return {
            "all": {"mse": {"mean": (in_range + face) / 2}},
            "in_range": {"mse": {"mean": in_range}},
            "face": {"mse": {"mean": face}},
        }

    return {"dense": m(*dense), "lip@2": m(*lip2), "lip@4": m(*lip4)}


def _record():
    """m = 1000: on in-range images lip@4 is the best LIP round and beats dense; on faces lip@2 is best and ties."""
    entry = {
        "methods": _methods(dense=(0.010, 0.050), lip2=(0.009, 0.048), lip4=(0.006, 0.052)),
        "paired_vs_dense": {
            "lip@2": {
                "in_range": _paired(-0.001, -0.003, 0.001, "no difference"),
                "face": _paired(-0.002, -0.006, 0.002, "no difference"),
            },
            "lip@4": {
                "in_range": _paired(-0.004, -0.006, -0.002, "better"),
                "face": _paired(0.002, -0.001, 0.005, "no difference"),
            },
        },
        "paired_lip_vs_random": {"lip@4": {"in_range": _paired(-0.02, -0.03, -0.01, "better")}},
        "search_curve": {
            "every": 10,
            "methods": {"dense": [1.0, 0.5, 0.3, 0.25, 0.2]},
            **{"dense_last_fifth_drop": 0.25, "dense_last_fifth_progress": 0.0625, "dense_flat": False},
            "noise_floor": 0.0001,
        },
    }
    return {"m": {"1000": entry}}


def test_the_verdict_picks_the_best_lip_round_per_kind_and_reads_its_paired_test():
    lines = gan_report.verdict_lines(_record())
    in_range = next(line for line in lines if "in-range images" in line and line.startswith("- "))
    faces = next(line for line in lines if "real faces" in line and line.startswith("- "))
    assert in_range.startswith("- m = 1000, in-range images: yes. Best LIP round lip@4: MSE 0.0060 vs dense 0.0100")
    assert "against random at its sparsity -0.0200 [-0.0300, -0.0100] better" in in_range
    assert faces.startswith("- m = 1000, real faces: not shown. Best LIP round lip@2: MSE 0.0480 vs dense 0.0500")
    assert "detects ±0.0020" in faces


def test_the_convergence_lines_give_the_last_fifths_drop_and_draw_the_curve(tmp_path):
    lines = gan_report.convergence_lines(_record(), tmp_path / layout.GAN_CURVE_PNG)
    assert "m = 1000: 25.0%" in lines[0]
    assert "| 1000 | 0.2 | 0.0001 | 2e+03× | 6.25% | **no** |" in lines
    assert (tmp_path / layout.GAN_CURVE_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = _record()
    del record["m"]["1000"]["search_curve"]
    assert gan_report.convergence_lines(record, tmp_path / "none.png") == []  # a record from before the curves


def test_the_values_of_m_are_reported_in_increasing_order(tmp_path):
    """gan_evaluate's JSON keeps m as sorted strings ("1000" < "200"); the report reads them as numbers."""
    entry = _record()["m"]["1000"]
    record = {"m": {"1000": entry, "200": entry, "3000": entry}}
    said = [line.split(",")[0] for line in gan_report.verdict_lines(record) if "in-range images:" in line]
    assert said == ["- m = 200", "- m = 1000", "- m = 3000"]
    drops = gan_report.convergence_lines(record, tmp_path / layout.GAN_CURVE_PNG)[0]
    assert drops.index("m = 200:") < drops.index("m = 1000:") < drops.index("m = 3000:")


@pytest.mark.parametrize("verdict, word", [("worse", "no, worse"), ("too few pairs", "too few images")])
def test_other_verdicts_are_said_in_words(verdict, word):
    record = _record()
    record["m"]["1000"]["paired_vs_dense"]["lip@4"]["in_range"]["verdict"] = verdict
    assert f"in-range images: {word}." in gan_report.verdict_lines(record)[2]
