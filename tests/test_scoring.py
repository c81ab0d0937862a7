"""lipcore.scoring: what a fit reports at each point, read from a hand-made FitResult, and the seed summary."""

import numpy as np
import pytest
import torch

from lipcore import DegradationConfig, FitConfig
from lipcore.fit import FitResult, OracleBest
from lipcore.physics import make_problem
from lipcore.scoring import fit_scores, reported_images, shown_point, summarise


def _result(x_true: torch.Tensor) -> FitResult:
    """A fit whose outputs are the truth plus known offsets: last +0.1, EMA +0.05, ES +0.2, oracle +0.01 / 0.02."""

    def near(offset):
        return (x_true + offset).clamp(0, 1)

    return FitResult(
        x_last=near(0.1),
        x_ema=near(0.05),
        x_es=near(0.2),
        x_es_ema=near(0.15),
        es_iteration=40,
        es_detected=90,
        iterations=100,
        history={"iteration": np.arange(0, 101, 10)},
        backtracks=2,
        seconds=1.0,
        oracle={"out": OracleBest(60, 0.0, near(0.02)), "ema": OracleBest(70, 0.0, near(0.01))},
    )


@pytest.fixture
def problem():
    x_true = torch.full((1, 3, 16, 16), 0.5)
    x_true[..., 4:12, 4:12] = 0.2
    return make_problem(x_true, DegradationConfig(task="denoise", sigma=0.1), torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "ema_weight, last, oracle, iteration, output", [(0.9, 0.05, 0.01, 70, "ema"), (0.0, 0.1, 0.02, 60, "raw")]
)
def test_each_point_scores_the_output_the_fit_reports_there(problem, ema_weight, last, oracle, iteration, output):
    """With output averaging the last iterate and the oracle best are the EMA's, without it the raw output's; the
    ES-WMV point is always the raw output at the minimum-variance step (ES-WMV's definition)."""
    cfg = FitConfig(ema_weight=ema_weight)
    res = _result(problem.x_true)
    images = reported_images(res, cfg)
    assert torch.equal(images["es"], res.x_es)
    assert torch.allclose(images["last"], (problem.x_true + last).clamp(0, 1))
    assert torch.allclose(images["oracle_best"], (problem.x_true + oracle).clamp(0, 1))
    scores = fit_scores(res, problem, cfg)
    assert scores["last"]["iteration"] == 100 and scores["es"]["iteration"] == 40
    assert scores["oracle_best"]["iteration"] == iteration and scores["output"] == output
    assert scores["es_detected"] == 90 and scores["backtracks"] == 2
    assert scores["oracle_best"]["psnr"] > scores["last"]["psnr"] > scores["es"]["psnr"]  # smaller offset, higher PSNR
    assert scores["es"]["psnr"] == pytest.approx(-10 * np.log10(0.2**2), abs=0.01)  # MSE 0.04 (no clamping here)


def test_the_summary_is_the_mean_and_std_over_seeds_of_every_point_present():
    per_seed = [
        {"es": {"psnr": 30.0, "ssim": 0.8}, "last": {"psnr": 29.0, "ssim": 0.7}},
        {"es": {"psnr": 32.0, "ssim": 0.9}, "last": {"psnr": 29.0, "ssim": 0.7}},
    ]
    out = summarise(per_seed)
    assert out["n_seeds"] == 2 and "oracle_best_psnr" not in out  # a point no seed has is left out
    assert out["es_psnr"] == {"mean": 31.0, "std": pytest.approx(np.sqrt(2.0))}
    assert out["last_ssim"] == {"mean": pytest.approx(0.7), "std": 0.0}
    assert summarise(per_seed[:1])["es_psnr"]["std"] == 0.0  # one seed: no spread, not nan
    assert (shown_point("paper"), shown_point("blind")) == ("oracle_best", "es")
