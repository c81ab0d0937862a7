import importlib
import logging
import os
import warnings
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from lipcore import DegradationConfig, FitConfig, build_net, fit, make_input, runtime
from lipcore import prune as P
from lipcore.fit import FitJob, StopCheck, fit_many
from lipcore.metrics import psnr, psnr_y
from lipcore.physics import CompressiveSensing, Inpaint, sample_operator


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
    assert res.es_detected == res.es_iteration + cfg.es_patience  # no new minimum for exactly the patience
    assert res.es_iteration >= cfg.es_window


def test_backtracking_restores_weights_when_the_fit_collapses(tiny_cfg, f16_small):
    # A threshold below zero declares every check after the first a collapse. FitConfig refuses one (it would
    # backtrack a healthy fit), so it is set past the check here, on purpose.
    net, z, op, y = setup(tiny_cfg, f16_small)
    cfg = FitConfig(iterations=20, log_every=5)
    object.__setattr__(cfg, "backtrack_db", -1e3)
    res = fit(net, z, op, y, cfg, device="cpu")
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
    y = op.observe(f16_small)
    res = fit(net, z, op, y, FitConfig(iterations=20, log_every=5, reg_noise_std=0), device="cpu")
    assert res.x_last.shape == f16_small.shape
    assert res.history["loss"][-1] < 0.8 * res.history["loss"][0]  # it does fit the observation
    np.testing.assert_allclose(res.history["loss"][-1], float((op(res.x_last) - y).pow(2).mean()), rtol=1e-5)


def test_progress_bar_runs(tiny_cfg, f16_small, capsys):
    net, z, op, y = setup(tiny_cfg, f16_small)
    res = fit(net, z, op, y, FitConfig(iterations=6, log_every=3, es_window=3), device="cpu", progress=True)
    assert res.iterations == 6
    err = capsys.readouterr().err
    assert "fit" in err and "6/6" in err and "loss=" in err


BF16_ON_THIS_CPU = "ignore:precision 'bf16' on a CPU without native bf16"  # tiny nets: slow, but short


@pytest.mark.filterwarnings(BF16_ON_THIS_CPU)
@pytest.mark.parametrize("opts", [{"precision": "bf16"}, {"channels_last": True}])
def test_fast_paths_fit_the_same_problem(tiny_cfg, f16_small, opts):
    results = []
    for extra in ({"precision": "fp32"}, {"precision": "fp32", **opts}):  # fp32 named: 'auto' may be bf16
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


def test_tf32_is_off_for_every_conv_and_matmul_during_a_fit_and_restored_after(tiny_cfg, f16_small):
    """torch's defaults allow TF32 in cuDNN convs but not in matmuls: on an Ampere GPU one net's 3x3 convs and
    its matmul paths would round differently. A fit sets one choice for all (off) and puts the flags back."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32  # (no monkeypatch:
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # cuBLAS flags can't be deleted)
    seen = []

    def flags(i, state) -> bool:
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return False

    net, z, op, y = setup(tiny_cfg, f16_small)
    cfg = FitConfig(iterations=2, log_every=2)
    try:
        fit(net, z, op, y, cfg, device="cpu", stop=StopCheck(2, flags))
        fit_many([FitJob(net, z, op, y)], cfg, device="cpu", stop=StopCheck(2, flags))
        assert seen == [(False, False)] * 2
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


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
    with pytest.raises(ValueError, match="architecture.*engine='sequential'"):
        fit_many([jobs[0], FitJob(wider, jobs[1].z, jobs[1].op, jobs[1].y, f16_small)], MULTI, engine="vmap")
    with pytest.raises(ValueError, match="x_true"):
        fit_many([jobs[0], replace(jobs[1], x_true=None)], MULTI)
    with pytest.raises(ValueError, match="engine"):
        fit_many(jobs, MULTI, engine="threads")


@pytest.mark.filterwarnings(BF16_ON_THIS_CPU)
@pytest.mark.parametrize("opts", [{"precision": "bf16"}, {"channels_last": True}])
def test_fit_many_vmap_engine_takes_the_fast_paths(tiny_cfg, f16_small, opts):
    # One step: its output comes from theta_0, so it compares the stacked forward pass and the loss. (After a
    # step, bf16 gradients near 0 flip Adam's ~lr-sized first updates either way; see the tests above.)
    cfg = FitConfig(iterations=1, log_every=1, es_window=2, es_patience=1, **opts)
    seq = _sequential(tiny_cfg, f16_small, 2, cfg)
    batched = fit_many(_jobs(tiny_cfg, f16_small, 2), cfg, device="cpu", engine="vmap")
    # bf16: both engines run their layers in bf16 (the test below), each up to ~0.016 from the fp32 output here and
    # rounding differently (the vmap engine rounds a conv before its bias), so up to twice that apart
    tol = 4e-2 if opts.get("precision") == "bf16" else 1e-4
    for (ref, _), res in zip(seq, batched):
        assert res.x_last.dtype == torch.float32
        torch.testing.assert_close(res.x_last, ref.x_last, atol=tol, rtol=0)
        np.testing.assert_allclose(res.history["loss"], ref.history["loss"], rtol=tol)


@pytest.mark.filterwarnings(BF16_ON_THIS_CPU)
def test_bf16_runs_convs_and_batchnorms_in_bf16_on_both_engines(tiny_cfg, f16_small):
    # Issue 25: under vmap a batched conv adds its stacked fp32 bias after the bf16 grouped conv, and a batched BN
    # its fp32 affine weights, so promotion put every layer of the vmap engine in fp32 while a plain fit (the dense
    # fit, the IMP rounds) ran them in bf16. Traced by what each conv, BN and activation receives (a global pre-hook
    # sees the modules the vmap engine calls too): the previous layer's output, as the next layer gets it.
    from torch.nn.modules.module import register_module_forward_pre_hook

    layers = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.LeakyReLU)
    trace: list = []
    handle = register_module_forward_pre_hook(
        lambda m, args: trace.append((type(m).__name__, args[0].dtype)) if isinstance(m, layers) else None
    )
    cfg = FitConfig(iterations=1, log_every=1, es_window=2, es_patience=1, precision="bf16")
    try:
        fit_many(_jobs(tiny_cfg, f16_small, 1), cfg, device="cpu", engine="sequential")
        sequential, trace[:] = list(trace), []
        fit_many(_jobs(tiny_cfg, f16_small, 2), cfg, device="cpu", engine="vmap")
    finally:
        handle.remove()
    fp32 = [name for name, dtype in sequential if dtype == torch.float32]
    assert fp32 == ["PointwiseConv2d", "Conv2d"]  # the two convs that read z (the skip and down branch of scale 0)
    assert len(sequential) > 20
    assert trace == sequential  # the same layers in the same order, at the same dtypes


# --- defects: a fit leaves its arguments alone; process-wide switches belong to the entry points --------------


class SpyInpaint(Inpaint):
    """An Inpaint operator that records every Module._apply (what .to / .cuda / .float run on a module)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.applied: list[str] = []

    def _apply(self, fn, recurse=True):
        self.applied.append(getattr(fn, "__name__", "fn"))
        return super()._apply(fn, recurse)


def _spy_job(tiny_cfg, x, seed=0):
    net, z, op, _ = setup(tiny_cfg, x, task="inpaint", seed=seed)
    spy = SpyInpaint(op.image_shape, op.noise_std, op.mask.clone())
    y = spy.observe(x, torch.Generator().manual_seed(seed))
    mask = P.random_mask(net, 0.5, torch.Generator().manual_seed(seed))
    return FitJob(net, z, spy, y, x.clone(), mask, seed=seed)


def _arguments(job):
    """Everything of a job a fit must not change (the net excepted: it is trained in place)."""
    tensors = {"z": job.z, "y": job.y, "x_true": job.x_true, "op.mask": job.op.mask}
    tensors.update({f"mask.{k}": v for k, v in job.mask.items()})
    return {k: (v.data_ptr(), v.device, v.clone()) for k, v in tensors.items()}


def _assert_untouched(job, before):
    assert job.op.applied == []  # never moved, cast or copied onto itself
    for k, (ptr, device, value) in before.items():
        now = _arguments(job)[k]
        assert now[0] == ptr and now[1] == device and torch.equal(now[2], value), k


def test_fit_leaves_operator_and_inputs_untouched(tiny_cfg, f16_small):
    job = _spy_job(tiny_cfg, f16_small)
    before = _arguments(job)
    fit(job.net, job.z, job.op, job.y, FitConfig(iterations=3, log_every=3), x_true=job.x_true, mask=job.mask)
    _assert_untouched(job, before)


@pytest.mark.parametrize("engine", ["sequential", "vmap"])
def test_fit_many_leaves_operators_and_inputs_untouched(tiny_cfg, f16_small, engine):
    jobs = [_spy_job(tiny_cfg, f16_small, seed) for seed in range(2)]
    before = [_arguments(j) for j in jobs]
    fit_many(jobs, FitConfig(iterations=3, log_every=3), device="cpu", engine=engine)
    for job, b in zip(jobs, before):
        _assert_untouched(job, b)


def test_on_device_shares_one_copy_per_operator_and_device_until_the_operator_changes():
    """gan_dip fits 46 nets to one 3000 x 12288 CS operator: one copy on the device for all, not one per fit."""
    a = torch.randn(30, 48, generator=torch.Generator().manual_seed(0))
    op = CompressiveSensing((3, 4, 4), 0.0, a)
    moved = runtime.on_device(op, "meta")
    assert moved is not op and moved.matrix.device.type == "meta" and op.matrix.device.type == "cpu"
    assert runtime.on_device(op, "meta") is moved  # shared
    assert runtime.on_device(op, torch.device("meta")) is moved
    op.matrix.mul_(2.0)  # changed in place: a fresh copy
    again = runtime.on_device(op, "meta")
    assert again is not moved and runtime.on_device(op, "meta") is again
    op.matrix = torch.zeros(30, 48)  # replaced: a fresh copy
    assert runtime.on_device(op, "meta") is not again
    other = CompressiveSensing((3, 4, 4), 0.0, a)
    assert runtime.on_device(other, "meta") is not runtime.on_device(op, "meta")  # per operator


def test_on_device_moves_a_copy_and_keeps_what_is_already_there():
    op = Inpaint((3, 8, 8), 0.0, torch.ones(1, 1, 8, 8))
    assert runtime.on_device(op, torch.device("cpu")) is op and runtime.on_device(op, "cpu") is op
    moved = runtime.on_device(op, "meta")
    assert moved is not op and isinstance(moved, Inpaint)
    assert op.mask.device.type == "cpu" and moved.mask.device.type == "meta"
    assert runtime.on_device(moved, "meta") is moved
    assert runtime.on_device(torch.nn.Identity(), "meta").__class__ is torch.nn.Identity  # no tensors: nothing to move


def test_fit_does_not_tune_the_allocator(tiny_cfg, f16_small, monkeypatch):
    """tune_cpu_allocator is process-wide and irreversible: only entry points may call it."""

    def refuse():
        raise AssertionError("the fit tuned the process's allocator")

    monkeypatch.setattr(runtime, "tune_cpu_allocator", refuse)
    fit_module = importlib.import_module("lipcore.fit")  # `lipcore.fit` is the function
    monkeypatch.setattr(fit_module, "tune_cpu_allocator", refuse, raising=False)
    net, z, op, y = setup(tiny_cfg, f16_small)
    fit(net, z, op, y, FitConfig(iterations=2, log_every=2), device="cpu")
    fit_many(_jobs(tiny_cfg, f16_small, 2), FitConfig(iterations=2, log_every=2), device="cpu", engine="vmap")


@pytest.mark.parametrize("env", [{"LIP_NO_ALLOCATOR_TUNING": "1"}, {"MALLOC_ARENA_MAX": "2"}, {}])
def test_allocator_tuning_opt_outs(monkeypatch, env):
    calls = []
    monkeypatch.setattr(runtime, "_allocator_tuned", False)
    monkeypatch.setattr(runtime, "_glibc_mallopt", lambda: lambda *args: calls.append(args) or 1)
    for k in list(os.environ):
        if k.startswith("MALLOC_") or k == "LIP_NO_ALLOCATOR_TUNING":
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert runtime.tune_cpu_allocator() is (not env)
    assert len(calls) == (0 if env else 3)


# --- precision: 'auto' runs bf16 only where the device has it natively -----------------------------------------


def _cpu_bf16(monkeypatch, avx512_bf16, amx):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


def test_every_fit_defaults_to_fp32_on_every_cpu(bf16_native, tiny_cfg, f16_small):
    """The default must not depend on the CPU: 'auto' made the suite and the committed results fail on Zen 4."""
    import yaml

    from tests.conftest import ROOT

    assert runtime.resolve_precision(FitConfig().precision, "cpu") == "fp32"
    assert runtime.resolve_precision("auto", "cpu") == ("bf16" if bf16_native else "fp32")  # still an opt-in
    for name in ("params.yaml", "params.cpu-study.yaml"):  # the committed results' settings: fp32 on any CPU
        assert yaml.safe_load((ROOT / name).read_text())["fit"]["precision"] == "fp32", name
    net, z, op, y = setup(tiny_cfg, f16_small)
    assert fit(net, z, op, y, FitConfig(iterations=1, log_every=1, es_window=2), device="cpu").x_last.dtype == (
        torch.float32
    )


def test_a_test_resolving_auto_on_the_host_fails_on_every_cpu():
    """The suite's own guard (tests/conftest.py): the next test that leaves 'auto' to the host is caught on an
    AVX2 machine too, not only on the CI machine whose CPU happens to have native bf16."""
    with pytest.raises(pytest.fail.Exception, match="resolves precision 'auto' on the host"):
        runtime.resolve_precision("auto", "cpu")
    assert runtime.resolve_precision("fp32", "cpu") == "fp32"


@pytest.mark.host_precision
@pytest.mark.parametrize("avx512_bf16, amx", [(True, False), (False, True)])
def test_auto_precision_is_bf16_on_a_cpu_with_native_bf16(monkeypatch, avx512_bf16, amx):
    _cpu_bf16(monkeypatch, avx512_bf16, amx)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_precision("auto", torch.device("cpu")) == "bf16"
        assert runtime.resolve_precision("bf16", "cpu") == "bf16"
    assert runtime.resolve_precision("fp32", "cpu") == "fp32"


@pytest.mark.host_precision
@pytest.mark.parametrize(
    "device, capabilities, native",
    [
        ("cuda:1", {0: (7, 0), 1: (8, 0)}, True),  # the device asked for, not the current one (0)
        ("cuda:1", {0: (8, 0), 1: (7, 0)}, False),
        ("cuda:0", {0: (7, 0), 1: (8, 0)}, False),  # V100: is_bf16_supported() says True (emulated)
        ("cuda:0", {0: (7, 5)}, False),  # T4
        ("cuda:0", {0: (9, 0)}, True),  # H100
        ("cuda", {0: (8, 6)}, True),  # no index: the current device
    ],
)
def test_auto_precision_on_cuda_is_bf16_only_where_it_is_native(monkeypatch, device, capabilities, native):
    def capability(d=None):
        d = torch.device(d) if d is not None else torch.device("cuda")
        return capabilities[d.index if d.index is not None else 0]

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # counts emulation
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    assert runtime._native_bf16(torch.device(device)) is native
    assert runtime.resolve_precision("auto", device) == ("bf16" if native else "fp32")


@pytest.mark.host_precision
def test_auto_precision_is_fp32_on_a_cpu_without_and_explicit_bf16_warns(monkeypatch):
    _cpu_bf16(monkeypatch, False, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_precision("auto", "cpu") == "fp32"
    with pytest.warns(UserWarning, match=r"(?s)tens of times slower.*Use precision 'fp32'") as record:
        assert runtime.resolve_precision("bf16", "cpu") == "bf16"
    assert torch.backends.cpu.get_cpu_capability() in str(record[0].message)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # a torch without the private probes
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert runtime.resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        runtime.resolve_precision("fp16", "cpu")


@pytest.mark.host_precision
def test_the_fit_runs_the_resolved_precision(tiny_cfg, f16_small, monkeypatch):
    # One step on a tiny net: bf16 on this machine is emulated and slow.
    cfg = FitConfig(iterations=1, log_every=1, es_window=2)
    runs = {}
    for precision, native in (("fp32", False), ("bf16", True), ("auto", True), ("auto", False)):
        _cpu_bf16(monkeypatch, native, False)
        net, z, op, y = setup(tiny_cfg, f16_small)
        runs[precision, native] = fit(net, z, op, y, replace(cfg, precision=precision), device="cpu").x_last
    assert torch.equal(runs["auto", True], runs["bf16", True])
    assert torch.equal(runs["auto", False], runs["fp32", False])
    assert not torch.equal(runs["bf16", True], runs["fp32", False])


# --- the oracle scores with each member's metric (SR: Y-channel PSNR with a shaved border) --------------------


def test_oracle_picks_by_the_given_metric(tiny_cfg, f16_small):
    metric = partial(psnr_y, shave=2)
    cfg = FitConfig(iterations=12, log_every=1, es_window=3, ema_weight=0.5)
    net, z, op, y = setup(tiny_cfg, f16_small, task="sr")
    res = fit(net, z, op, y, cfg, x_true=f16_small, device="cpu", metric=metric)
    for key, column in (("out", "psnr_out"), ("ema", "psnr_ema")):
        best, trace = res.oracle[key], res.history[column]  # log_every=1: the metric at every iteration
        assert best.iteration == int(res.history["iteration"][np.argmax(trace)])
        assert best.psnr == np.float32(trace.max())
        assert best.psnr == float(metric(best.x, f16_small))
    # The RGB oracle of the same run scores differently: the metric is no label on the same numbers.
    net, z, op, y = setup(tiny_cfg, f16_small, task="sr")
    rgb = fit(net, z, op, y, cfg, x_true=f16_small, device="cpu")
    assert torch.equal(rgb.x_last, res.x_last)
    assert not np.array_equal(rgb.history["psnr_out"], res.history["psnr_out"])
    assert rgb.oracle["out"].psnr == float(psnr(rgb.oracle["out"].x, f16_small))


def test_fit_many_scores_each_member_with_its_own_metric(tiny_cfg, f16_small):
    cfg = FitConfig(iterations=4, log_every=2, es_window=2)
    y_psnr = partial(psnr_y, shave=2)  # one object: those members are scored in one call
    metrics = [psnr, y_psnr, y_psnr]
    for engine in ("sequential", "vmap"):
        jobs = [replace(j, metric=m) for j, m in zip(_jobs(tiny_cfg, f16_small, 3), metrics)]
        for job, res in zip(jobs, fit_many(jobs, cfg, device="cpu", engine=engine)):
            for best in res.oracle.values():
                assert best.psnr == pytest.approx(float(job.metric(best.x, f16_small)), abs=1e-5)


_HOST_READS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "cpu", "numpy")
_HOST_COPIES = ("tensor", "as_tensor", "from_numpy")  # torch.*, and Tensor.new_tensor: Python data to the device


def _count_host_syncs(monkeypatch) -> dict[str, int]:
    """Spies on what makes a CUDA run wait for the device: reads of tensor values on the host, and tensors built
    from host data (a blocking copy to the device). Counts calls from anywhere (lipcore, torch, the test)."""
    counts: dict[str, int] = {}

    def spy(owner, name):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    for name in _HOST_READS:
        spy(torch.Tensor, name)
    for name in _HOST_COPIES:
        spy(torch, name)
    spy(torch.Tensor, "new_tensor")
    return counts


@pytest.mark.parametrize("engine", ["sequential", "vmap"])
def test_the_loop_syncs_with_the_host_only_at_log_steps(tiny_cfg, f16_small, monkeypatch, engine):
    """'No per-step host sync', checked: the same fit over 2 and over 5 iterations, each with one log step (the
    last), reads the host and copies from it exactly as often. Reg noise, backtracking, EMA, ES-WMV and the oracle
    with SR's Y-channel metric are all on; a host read or host-data tensor in any per-step path adds 3 calls or more.
    (On the CPU a read costs nothing and the loop reads at log steps; a CUDA run makes the same calls.)"""
    metric, x = partial(psnr_y, shave=2), f16_small[..., :16, :16]
    metric(x, x)  # its weights made on the CPU once, before the count (lipcore.metrics)
    counts = {}
    for iterations in (2, 5):
        cfg = FitConfig(iterations=iterations, log_every=iterations, es_window=2, ema_weight=0.5)
        jobs = [replace(j, metric=metric) for j in _jobs(tiny_cfg, x, 2)]
        with monkeypatch.context() as m:
            calls = _count_host_syncs(m)
            fit_many(jobs, cfg, device="cpu", engine=engine)
        counts[iterations] = calls
    assert counts[2] == counts[5]


# --- logging: one line per finished fit, progress records while it runs ------------------------------------------


def test_each_finished_fit_logs_one_debug_line(tiny_cfg, f16_small, caplog):
    """lipcore.trials writes the INFO line of the fits it runs (with the reported score); fit's own is DEBUG."""
    caplog.set_level(logging.DEBUG, logger="lipcore.fit")
    cfg = FitConfig(iterations=30, log_every=5, es_window=5, es_patience=5)
    object.__setattr__(cfg, "backtrack_db", -1e3)  # every check backtracks (see the backtracking test)
    net, z, op, y = setup(tiny_cfg, f16_small)
    res = fit(net, z, op, y, cfg, x_true=f16_small, device="cpu")
    (record,) = [r for r in caplog.records if r.name == "lipcore.fit"]
    msg = record.getMessage()
    assert record.levelno == logging.DEBUG
    assert f"{res.iterations} iterations" in msg and "s/it" in msg
    assert f"ES-WMV point {res.es_iteration}" in msg and f"detected at {res.es_detected}" in msg
    assert f"{res.backtracks} backtracks" in msg and f"{res.oracle['ema'].psnr:.2f} dB" in msg
    caplog.clear()
    jobs = [replace(j, x_true=None) for j in _jobs(tiny_cfg, f16_small, 2)]
    fit_many(jobs, replace(cfg, es_patience=100, backtrack_db=5.0), device="cpu", engine="vmap")
    msgs = [r.getMessage() for r in caplog.records if r.name == "lipcore.fit"]
    assert len(msgs) == 2 and all("not detected" in m and "oracle" not in m for m in msgs)


def test_progress_records_carry_every_members_history_row_at_each_log_step(tiny_cfg, f16_small, caplog):
    cfg = FitConfig(iterations=12, log_every=4, es_window=4, es_patience=4)
    jobs = [replace(j, label=f"m{i}") for i, j in enumerate(_jobs(tiny_cfg, f16_small, 2))]
    fit_many(jobs, cfg, device="cpu", engine="vmap")
    assert not [r for r in caplog.records if r.name == "lipcore.fit.progress"]  # nobody watches: no host reads
    caplog.set_level(logging.DEBUG, logger="lipcore.fit.progress")
    jobs = [replace(j, label=f"m{i}") for i, j in enumerate(_jobs(tiny_cfg, f16_small, 2))]
    results = fit_many(jobs, cfg, device="cpu", engine="vmap")
    records = [r for r in caplog.records if r.name == "lipcore.fit.progress"]
    assert [r.iteration for r in records] == [4, 8, 12] and all(r.labels == ["m0", "m1"] for r in records)
    for step, record in enumerate(records):
        for member, res in enumerate(results):
            row = record.rows[member]
            assert row["iteration"] == record.iteration
            assert row["psnr_out"] == pytest.approx(res.history["psnr_out"][step], rel=1e-6)


def test_channels_last_fits_the_same_noise_draw(tiny_cfg, f16_small):
    """The layout may change the summation order, not the problem: one seed, one reg-noise draw. The first
    output comes from theta_0 and that draw, so the two layouts agree to rounding."""
    cfg = FitConfig(iterations=1, log_every=1, es_window=2, precision="fp32")
    outs = []
    for channels_last in (False, True):
        net, z, op, y = setup(tiny_cfg, f16_small)
        outs.append(fit(net, z, op, y, replace(cfg, channels_last=channels_last), device="cpu", seed=3).x_last)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=0)


def test_cuda_numerics_record_the_gpu_precision_and_tf32_choice_and_nothing_on_cpu(monkeypatch):
    """A CUDA run's outputs say what decided their rounding (the issue: 'set TF32 explicitly ... and record it in
    outputs'); on CPU there is no record, so CPU outputs keep their bytes."""
    assert runtime.cuda_numerics("cpu", "fp32") is None
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    record = runtime.cuda_numerics("cuda", "bf16", cudnn_benchmark=True)
    assert record["device"] == "cuda:0" and record["gpu"] == "NVIDIA H200" and record["compute_capability"] == "9.0"
    assert record["precision"] == "bf16" and record["cudnn_benchmark"] is True
    assert record["tf32"] is False and record["tf32"] is runtime.TF32 and record["deterministic"] is False
    assert record["torch"] == torch.__version__


def test_the_gan_search_distillation_and_fista_run_with_tf32_off_and_restore_the_flags(monkeypatch):
    """One rounding for the whole study: the generator's latent search, its distillation and FISTA's matrix
    products see TF32 off, as every DIP fit does, whatever the caller set."""
    from lipcore import csgm, fista, gan_prune
    from lipcore.prune import dense_mask

    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    seen = []

    class Seeing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 12), nn.Unflatten(1, (3, 2, 2)), nn.Conv2d(3, 3, 1), nn.Tanh())

        def forward(self, z):
            seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return self.net(z)

    real_dct2 = fista.dct2
    monkeypatch.setattr(fista, "dct2", lambda x, d: seen.append((torch.backends.cudnn.allow_tf32,)) or real_dct2(x, d))
    try:
        g = Seeing()
        a = torch.randn(6, 12, generator=torch.Generator().manual_seed(1))
        csgm.recover(g, a, torch.randn(1, 6), latent_dim=4, restarts=2, iterations=2, lr=0.1, gen=torch.Generator())
        student = Seeing()
        cfg = gan_prune.DistillConfig(steps=2, batch=2)
        gan_prune.distill(student, Seeing(), dense_mask(student), cfg, 4, torch.Generator())
        fista.fista_dct(torch.randn(5, 12), torch.randn(1, 5), (3, 2, 2), lam=1e-3, iterations=2)
        assert seen and all(not any(flags) for flags in seen), seen
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul
