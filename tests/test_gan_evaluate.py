"""stages.gan_evaluate's statistics on hand-made per-image records (no generator runs)."""

import pytest

from stages import gan_evaluate


def _rows(values):
    return [{"image": f"i{n}", "mse": v} for n, v in enumerate(values)]


def test_paired_mse_reads_lower_as_better_per_kind_with_the_detectable_difference():
    kinds = ["in_range", "in_range", "in_range", "face", "face"]
    lip = _rows([0.010, 0.020, 0.015, 0.050, 0.060])
    dense = _rows([0.012, 0.023, 0.017, 0.049, 0.062])
    out = gan_evaluate.paired_mse(lip, dense, kinds)
    assert out["in_range"]["n"] == 3 and out["in_range"]["mean"] == pytest.approx(-0.007 / 3)
    assert out["in_range"]["verdict"] == "better" and out["in_range"]["lower"] == 3  # lower MSE on every image
    assert out["face"]["verdict"] == "no difference" and out["face"]["lower"] == 1
    assert out["all"]["n"] == 5
    assert out["in_range"]["detectable"] > 0 and out["face"]["detectable"] > out["in_range"]["detectable"]
    assert gan_evaluate.paired_mse(dense, lip, kinds)["in_range"]["verdict"] == "worse"


def test_the_search_curve_says_how_much_its_last_fifth_took_off():
    cs = {"search_curve": {"every": 10, "methods": {"dense": [4.0, 2.0, 1.5, 1.2, 1.1, 1.0], "lip@1": [1.0, 1.0]}}}
    out = gan_evaluate.search_curve(cs, noise_std=0.1)
    assert out["every"] == 10 and out["methods"]["lip@1"] == [1.0, 1.0]
    assert out["dense_last_fifth_drop"] == pytest.approx((1.1 - 1.0) / 1.0)  # the point at 80%: index 4 of 0..5
    # of all it shed (4.0 -> 1.0) the last fifth took 0.1: 3.3%, not flat; the floor is noise_std squared
    assert out["dense_last_fifth_progress"] == pytest.approx(0.1 / 3.0) and not out["dense_flat"]
    assert out["noise_floor"] == pytest.approx(0.01)
    # near the floor a jittering end is a large share of the final loss but a small share of the decrease: flat
    jitter = {"search_curve": {"every": 10, "methods": {"dense": [0.5, 0.01, 0.002, 0.0011, 0.0015, 0.001]}}}
    out = gan_evaluate.search_curve(jitter, noise_std=0.01)
    assert out["dense_last_fifth_drop"] == pytest.approx(0.5) and out["dense_flat"]
    assert gan_evaluate.search_curve({}, noise_std=0.01) is None  # a gan_cs record from before the curves
