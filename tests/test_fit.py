import numpy as np
import pytest
import torch

from lipcore import DegradationConfig, FitConfig, build_net, fit, make_input
from lipcore import prune as P
from lipcore.fit import FitJob, StopCheck, fit_many
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


def test_cudnn_benchmark_is_set_for_the_fit_only(tiny_cfg, f16_small):
    """The flag is process-wide: a fit that asks for it must not leave it changed for the rest of the process."""
    seen = []
    before = torch.backends.cudnn.benchmark
    net, z, op, y = setup(tiny_cfg, f16_small)
    cfg = FitConfig(iterations=4, log_every=2, cudnn_benchmark=not before)
    stop = StopCheck(2, lambda i, state: seen.append(torch.backends.cudnn.benchmark) or False)
    fit(net, z, op, y, cfg, device="cpu", stop=stop)
    fit_many([FitJob(net, z, op, y)], cfg, device="cpu", stop=stop)
    assert seen == [not before] * 4
    assert torch.backends.cudnn.benchmark is before


def _jobs(tiny_cfg, x, n, task="inpaint"):
    """n problems of one architecture: different seeds, masks (the first dense) and observations."""
    jobs = []
    for i in range(n):
        net, z, op, y = setup(tiny_cfg, x, task=task, seed=i)
        mask = None if i == 0 else P.random_mask(net, 0.3 * i, torch.Generator().manual_seed(i))
        jobs.append(FitJob(net, z, op, y, x, mask, seed=10 + i))
    return jobs


def _sequential(tiny_cfg, x, n, cfg, task="inpaint"):
    out = []
    for j in _jobs(tiny_cfg, x, n, task):
        res = fit(j.net, j.z, j.op, j.y, cfg, x_true=j.x_true, mask=j.mask, seed=j.seed, device="cpu")
        out.append((res, j.net.state_dict()))
    return out


MULTI = FitConfig(iterations=25, log_every=5, es_window=5, es_patience=10, rewind_iteration=4, ema_weight=0.9)


def test_fit_many_on_cpu_is_bit_identical_to_sequential_fits(tiny_cfg, f16_small):
    seq = _sequential(tiny_cfg, f16_small, 3, MULTI)
    jobs = _jobs(tiny_cfg, f16_small, 3)
    batched = fit_many(jobs, MULTI, device="cpu")  # auto: sequential on CPU
    for (ref, ref_state), res, job in zip(seq, batched, jobs):
        for k in ("x_last", "x_ema", "x_es", "x_es_ema"):
            assert torch.equal(getattr(ref, k), getattr(res, k)), k
        for k in ref.history:
            np.testing.assert_array_equal(ref.history[k], res.history[k])
        assert ref.oracle["out"].iteration == res.oracle["out"].iteration
        assert all(torch.equal(v, job.net.state_dict()[k]) for k, v in ref_state.items())
        assert all(torch.equal(v, res.rewind_state[k]) for k, v in ref.rewind_state.items())


def test_fit_many_vmap_engine_equals_sequential_fits_within_float_tolerance(tiny_cfg, f16_small):
    # Grouped convolutions sum in another order, so results agree to rounding only. Rounding then grows:
    # conv biases in front of BatchNorm get gradients that are pure rounding noise (~1e-9) and Adam scales
    # every update to ~lr whatever the gradient's size, so any two float-different runs of DIP drift apart
    # after a few steps (measured: 1e-6 after 2 steps, 1e-2 after 25). Hence exact-up-to-rounding over the
    # first steps, where the comparison means something.
    cfg = FitConfig(iterations=2, log_every=1, es_window=2, es_patience=1, rewind_iteration=1, ema_weight=0.9)
    seq = _sequential(tiny_cfg, f16_small, 3, cfg)
    jobs = _jobs(tiny_cfg, f16_small, 3)
    batched = fit_many(jobs, cfg, device="cpu", engine="vmap")
    for (ref, ref_state), res, job in zip(seq, batched, jobs):
        for k in ("x_last", "x_ema", "x_es"):
            torch.testing.assert_close(getattr(res, k), getattr(ref, k), atol=1e-4, rtol=0)
        np.testing.assert_allclose(res.history["loss"], ref.history["loss"], rtol=1e-5)
        np.testing.assert_allclose(res.history["psnr_ema"], ref.history["psnr_ema"], atol=1e-4)
        assert res.oracle["out"].iteration == ref.oracle["out"].iteration
        # Weights: Adam's first steps are ~lr * sign(gradient), so the few weights whose gradient is ~0 (and
        # the biases BN cancels, all of whose gradients are rounding noise) may step either way: compare the
        # conv weights, nearly all equal and none further apart than those steps allow.
        for state, ref_w in ((job.net.state_dict(), ref_state), (res.rewind_state, ref.rewind_state)):
            diff = torch.cat([(state[k] - ref_w[k]).abs().flatten() for k in P.prunable(job.net)])
            assert float((diff > 1e-4).float().mean()) < 0.05 and float(diff.max()) <= 2 * cfg.lr * 2
    for job in jobs[1:]:  # masks hold in the stacked weights too
        for name, w in P.prunable(job.net).items():
            assert torch.count_nonzero(w[~job.mask[name]]) == 0


def test_fit_many_vmap_es_stop_stops_each_member_at_its_own_point(tiny_cfg, f16_small):
    from dataclasses import replace

    cfg = FitConfig(iterations=200, log_every=5, es_window=5, es_patience=5, es_stop=True)
    jobs = _jobs(tiny_cfg, f16_small, 2, task="denoise")
    batched = fit_many(jobs, cfg, device="cpu", engine="vmap")
    assert len({res.iterations for res in batched}) > 1  # the members did stop at different points
    for i, (res, job) in enumerate(zip(batched, jobs)):
        assert res.es_detected is not None and res.iterations - res.es_detected < cfg.log_every
        assert res.history["iteration"][-1] == res.iterations
        # Each member keeps the results and weights of its own stop: the same stacked run cut there.
        cut_jobs = _jobs(tiny_cfg, f16_small, 2, task="denoise")
        cut = fit_many(cut_jobs, replace(cfg, iterations=res.iterations, es_stop=False), device="cpu", engine="vmap")
        assert torch.equal(cut[i].x_last, res.x_last) and torch.equal(cut[i].x_es, res.x_es)
        assert all(torch.equal(v, job.net.state_dict()[k]) for k, v in cut_jobs[i].net.state_dict().items())


def test_fit_many_rejects_mixed_architectures_and_partial_ground_truth(tiny_cfg, f16_small):
    from dataclasses import replace

    jobs = _jobs(tiny_cfg, f16_small, 2)
    wider = build_net(replace(tiny_cfg, channels_down=tiny_cfg.channels_down[0] * 2))
    with pytest.raises(ValueError, match="architecture"):
        fit_many([jobs[0], FitJob(wider, jobs[1].z, jobs[1].op, jobs[1].y, f16_small)], MULTI, engine="vmap")
    with pytest.raises(ValueError, match="x_true"):
        fit_many([jobs[0], replace(jobs[1], x_true=None)], MULTI)
    with pytest.raises(ValueError, match="engine"):
        fit_many(jobs, MULTI, engine="threads")


@pytest.mark.parametrize("opts", [{"precision": "bf16"}, {"channels_last": True}])
def test_fit_many_vmap_engine_takes_the_fast_paths(tiny_cfg, f16_small, opts):
    # One step: its output comes from theta_0, so it compares the stacked forward pass and the loss. (After a
    # step, bf16 gradients near 0 flip Adam's ~lr-sized first updates either way; see the tests above.)
    cfg = FitConfig(iterations=1, log_every=1, es_window=2, es_patience=1, **opts)
    seq = _sequential(tiny_cfg, f16_small, 2, cfg)
    batched = fit_many(_jobs(tiny_cfg, f16_small, 2), cfg, device="cpu", engine="vmap")
    tol = 2e-2 if opts.get("precision") == "bf16" else 1e-4
    for (ref, _), res in zip(seq, batched):
        assert res.x_last.dtype == torch.float32
        torch.testing.assert_close(res.x_last, ref.x_last, atol=tol, rtol=0)
        np.testing.assert_allclose(res.history["loss"], ref.history["loss"], rtol=tol)
