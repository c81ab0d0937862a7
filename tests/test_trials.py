"""lipcore.trials: what a trial is fitted on and started from (the pairing every statistic relies on)."""

import pytest
import torch

from lipcore import DegradationConfig, FitConfig
from lipcore.physics import make_problem
from lipcore.trials import (
    Trial,
    fresh_initialisation,
    group_initialisation,
    initialisation,
    search_problem,
    train_and_score,
)


def _problem(x, task="denoise"):
    cfg = DegradationConfig(task="denoise", sigma=0.1) if task == "denoise" else DegradationConfig(task="inpaint")
    return make_problem(x, cfg, torch.Generator().manual_seed(0))


def test_the_paper_protocol_searches_denoising_masks_on_the_clean_image_and_blind_never_does(f16_small):
    noisy = _problem(f16_small)
    paper = search_problem(noisy, "paper")
    assert torch.equal(paper.y, noisy.x_true) and torch.equal(paper.x_true, noisy.x_true)  # the LIP code's oracle
    assert search_problem(noisy, "blind") is noisy
    holes = _problem(f16_small, "inpaint")
    assert search_problem(holes, "paper") is holes  # only denoising is changed by the paper protocol
    with pytest.raises(ValueError, match="protocol must be one of"):
        search_problem(noisy, "oracle")


def test_initialisations_depend_on_the_index_only_so_masks_can_move_between_images(tiny_cfg):
    theta, z = initialisation(tiny_cfg, 0, 1, 32, 32)
    again, z_again = initialisation(tiny_cfg, 0, 1, 32, 32)
    other, _ = initialisation(tiny_cfg, 0, 2, 32, 32)
    assert all(torch.equal(theta[k], again[k]) for k in theta) and torch.equal(z, z_again)
    assert any(not torch.equal(theta[k], other[k]) for k in theta)
    fresh = fresh_initialisation(tiny_cfg, 0, 1)  # the reinit control: a draw no LIP run starts from
    assert any(not torch.equal(theta[k], fresh[k]) for k in theta if theta[k].is_floating_point())
    group, zs = group_initialisation(tiny_cfg, 0, 1, 3, 32, 32)  # a group starts from the members' theta_0
    assert all(torch.equal(theta[k], group[k]) for k in theta) and zs.shape[0] == 3
    assert torch.equal(group_initialisation(tiny_cfg, 0, 1, 1, 32, 32)[1], z)  # one input: the members' own z


def test_a_trial_is_trained_from_its_start_and_scored_on_its_observation(tiny_cfg, f16_small):
    """Two trials from the same start, seed and problem give the same scores; train_and_score leaves the start
    untouched (every method of a comparison starts from the same theta_0)."""
    theta, z = initialisation(tiny_cfg, 0, 0, 32, 32)
    kept = {k: v.clone() for k, v in theta.items()}
    problem = _problem(f16_small)
    cfg = FitConfig(iterations=6, log_every=2, es_window=2, es_patience=2)
    a, b = train_and_score(
        tiny_cfg, [Trial(theta, z, problem, None, 7), Trial(theta, z, problem, None, 7)], cfg, device="cpu"
    )
    assert a.scores["last"]["psnr"] == b.scores["last"]["psnr"] and a.search_iterations == 6
    assert all(torch.equal(theta[k], kept[k]) for k in theta)
    assert a.scores["oracle_best"]["iteration"] <= 6
