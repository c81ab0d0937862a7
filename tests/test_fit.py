import numpy as np
import pytest
import torch

from lipcore import DegradationConfig, FitConfig, build_net, fit, make_input
from lipcore import prune as P
from lipcore.physics import sample_operator


def setup(tiny_cfg, x, task="denoise", seed=0):
    g = torch.Generator().manual_seed(seed)
    net = build_net(tiny_cfg, g)
    z = make_input(net, x.shape[-2], x.shape[-1], g)
    op = sample_operator(DegradationConfig(task=task), x.shape[1:], g)
    return net, z, op, op.observe(x, g)


CFG = FitConfig(iterations=30, log_every=5, es_window=5, es_patience=10)


def test_same_seed_gives_identical_history_and_outputs(tiny_cfg, f16_small):
    runs = []
    for _ in range(2):
        net, z, op, y = setup(tiny_cfg, f16_small)
        runs.append(fit(net, z, op, y, CFG, x_true=f16_small, seed=7, device="cpu"))
    a, b = runs
    for k in a.history:
        np.testing.assert_array_equal(a.history[k], b.history[k])
    assert torch.equal(a.x_last, b.x_last) and torch.equal(a.x_ema, b.x_ema)
    net, z, op, y = setup(tiny_cfg, f16_small)
    c = fit(net, z, op, y, CFG, seed=8, device="cpu")
    assert not np.array_equal(a.history["loss"], c.history["loss"])


def test_masked_weights_and_their_gradients_stay_exactly_zero(tiny_cfg, f16_small):
    net, z, op, y = setup(tiny_cfg, f16_small, task="inpaint")
    mask = P.random_mask(net, 0.8, torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in P.prunable(net).items()}
    fit(net, z, op, y, CFG, mask=mask, device="cpu")
    for n, w in P.prunable(net).items():
        assert torch.count_nonzero(w[~mask[n]]) == 0
        assert torch.count_nonzero(w.grad[~mask[n]]) == 0
    kept = [n for n in mask if mask[n].any()]
    assert any(not torch.equal(P.prunable(net)[n][mask[n]], before[n][mask[n]]) for n in kept)  # they trained


def test_history_records_every_log_interval(tiny_cfg, f16_small):
    net, z, op, y = setup(tiny_cfg, f16_small)
    res = fit(net, z, op, y, FitConfig(iterations=23, log_every=5, es_window=5), x_true=f16_small, device="cpu")
    assert res.history["iteration"].tolist() == [5, 10, 15, 20, 23]
    assert np.all(np.isfinite(res.history["psnr_ema"]))
    assert res.history["loss"][-1] < res.history["loss"][0]
    np.testing.assert_allclose(res.history["psnr_obs"], -10 * np.log10(res.history["loss"]), rtol=1e-5)


def test_oracle_only_with_ground_truth_and_it_is_the_best(tiny_cfg, f16_small):
    net, z, op, y = setup(tiny_cfg, f16_small)
    blind = fit(net, z, op, y, CFG, device="cpu")
    assert blind.oracle is None and np.all(np.isnan(blind.history["psnr_out"]))
    net, z, op, y = setup(tiny_cfg, f16_small)
    res = fit(net, z, op, y, CFG, x_true=f16_small, device="cpu")
    from lipcore.metrics import psnr

    for key, x_key in (("out", "x_last"), ("ema", "x_ema")):
        best = res.oracle[key]
        assert best.psnr >= np.nanmax(res.history[f"psnr_{key}"]) - 1e-5
        assert best.psnr >= float(psnr(getattr(res, x_key), f16_small)) - 1e-5
        assert float(psnr(best.x, f16_small)) == pytest.approx(best.psnr, abs=1e-4)
        assert 1 <= best.iteration <= CFG.iterations


def test_es_wmv_stop_halts_and_returns_the_min_variance_output(tiny_cfg, f16_small):
    net, z, op, y = setup(tiny_cfg, f16_small)
    cfg = FitConfig(iterations=400, log_every=5, es_window=5, es_patience=5, es_stop=True)
    res = fit(net, z, op, y, cfg, device="cpu")
    assert res.es_detected is not None
    assert res.iterations < 400 and res.iterations - res.es_detected < cfg.log_every
    assert res.es_iteration <= res.es_detected - cfg.es_patience
    assert res.es_iteration >= cfg.es_window


def test_backtracking_restores_weights_when_the_fit_collapses(tiny_cfg, f16_small):
    # A threshold below zero declares every check after the first a collapse.
    net, z, op, y = setup(tiny_cfg, f16_small)
    res = fit(net, z, op, y, FitConfig(iterations=20, log_every=5, backtrack_db=-1e3), device="cpu")
    assert res.backtracks == 3
    net, z, op, y = setup(tiny_cfg, f16_small)
    assert fit(net, z, op, y, FitConfig(iterations=20, log_every=5), device="cpu").backtracks == 0


def test_rewind_state_is_the_state_at_that_iteration(tiny_cfg, f16_small):
    net, z, op, y = setup(tiny_cfg, f16_small)
    theta0 = {k: v.clone() for k, v in net.state_dict().items()}
    res = fit(net, z, op, y, FitConfig(iterations=10, log_every=5, rewind_iteration=0), device="cpu")
    assert all(torch.equal(res.rewind_state[k], theta0[k]) for k in theta0)
    net2, z, op, y = setup(tiny_cfg, f16_small)
    res3 = fit(net2, z, op, y, FitConfig(iterations=10, log_every=5, rewind_iteration=3), device="cpu", seed=1)
    net3, z, op, y = setup(tiny_cfg, f16_small)
    fit(net3, z, op, y, FitConfig(iterations=3, log_every=5), device="cpu", seed=1)
    assert all(torch.equal(res3.rewind_state[k], v) for k, v in net3.state_dict().items())


def test_deep_decoder_fits_too(f16_small):
    from lipcore import NetConfig

    g = torch.Generator().manual_seed(0)
    net = build_net(NetConfig(kind="decoder", decoder_channels=16), g)
    z = make_input(net, 32, 32, g)
    op = sample_operator(DegradationConfig(task="sr", factor=2), f16_small.shape[1:], g)
    res = fit(
        net,
        z,
        op,
        op.observe(f16_small),
        FitConfig(iterations=20, log_every=5, reg_noise_std=0),
        device="cpu",
    )
    assert res.x_last.shape == f16_small.shape


def test_progress_bar_runs(tiny_cfg, f16_small, capsys):
    net, z, op, y = setup(tiny_cfg, f16_small)
    res = fit(net, z, op, y, FitConfig(iterations=6, log_every=3, es_window=3), device="cpu", progress=True)
    assert res.iterations == 6
    assert "fit" in capsys.readouterr().err


@pytest.mark.parametrize("opts", [{"precision": "bf16"}, {"channels_last": True}])
def test_fast_paths_fit_the_same_problem(tiny_cfg, f16_small, opts):
    from lipcore.metrics import psnr

    results = []
    for extra in ({}, opts):
        net, z, op, y = setup(tiny_cfg, f16_small)
        results.append(
            fit(net, z, op, y, FitConfig(iterations=40, log_every=10, **extra), x_true=f16_small, device="cpu")
        )
    ref, fast = results
    assert fast.x_last.dtype == torch.float32
    assert abs(float(psnr(fast.x_ema, f16_small)) - float(psnr(ref.x_ema, f16_small))) < 1.0
