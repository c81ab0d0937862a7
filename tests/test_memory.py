"""lipcore.memory: the GPU memory a fit needs, and fit_many's vmap batches capped by it (issue 25)."""

import importlib

import pytest
import torch

from lipcore import FitConfig, NetConfig
from lipcore import memory as M
from lipcore.fit import StopCheck, fit_many
from lipcore.nets import skeleton
from tests.test_fit import _jobs

PAPER_NET = NetConfig(kind="skip", in_channels=32, scales=5, channels_down=128, channels_up=128, channels_skip=4)


def test_batches_are_the_fewest_and_even():
    assert M.batches(35, None) == [range(35)]
    assert M.batches(35, 40) == [range(35)]
    assert M.batches(35, 20) == [range(0, 18), range(18, 35)]
    assert [len(b) for b in M.batches(64, 10)] == [10, 9, 9, 9, 9, 9, 9]
    assert M.cap(3, 10) == 3 and M.cap(30, 10) == 1 and M.cap(3, None) is None


def test_paper_scale_estimate_matches_the_measured_sizes():
    # Measured on CPU and scaled to 512 px (issue 25): ~1.5 GB saved per plain fit in fp32, 2.1-2.3 GB per vmap
    # member, and a 100-frame ES-WMV window of ~315 MB. Counted on meta: nothing is computed.
    net = skeleton(PAPER_NET)
    seq = M.estimate(net, (1, 32, 512, 512), 100, "fp32", "sequential")
    vmap = M.estimate(net, (1, 32, 512, 512), 100, "fp32", "vmap")
    bf16 = M.estimate(net, (1, 32, 512, 512), 100, "bf16", "vmap")
    assert 1.5e9 < seq.saved < 1.8e9 and 2.1e9 < vmap.saved < 2.4e9
    assert 0.40e9 < vmap.images < 0.5e9  # the window (315 MB) and the other buffers
    assert 3.0e9 < vmap.per_member < 3.5e9 and 1.8e9 < bf16.per_member < 2.2e9
    assert vmap.per_member * 35 > 100e9  # one paper evaluate seed in one batch: more than an 80 GB card


def test_fit_many_splits_the_vmap_batch_by_the_memory_budget(tiny_cfg, f16_small, monkeypatch):
    # Issue 25: evaluate put ~35 fits into one vmap batch whatever the GPU's memory. On CPU fit_many has no
    # budget (no cap) unless LIP_GPU_MEMORY_GB names one: name one that holds two members of three.
    cfg = FitConfig(iterations=3, log_every=1, es_window=2, es_patience=1, rewind_iteration=1, precision="fp32")
    jobs = _jobs(tiny_cfg, f16_small, 3)
    need = M.estimate(jobs[0].net, tuple(jobs[0].z.shape), cfg.es_window, "fp32", "vmap").per_member
    monkeypatch.setenv(M.ENV, str(2.5 * need / 1e9))
    F = importlib.import_module("lipcore.fit")  # `lipcore.fit` the attribute is the function
    sizes, seen = [], set()
    make = F.make_engine
    monkeypatch.setattr(F, "make_engine", lambda name, nets, masks: sizes.append(len(nets)) or make(name, nets, masks))
    stop = StopCheck(1, lambda i, state: seen.add(i) or False)
    split = fit_many(jobs, cfg, device="cpu", engine="vmap", stop=stop)
    assert sizes == [2, 1]
    assert seen == {0, 1, 2}  # the stop rule sees each member by its index in the whole set
    # the same results as the first batch's two fits alone, and as one batch of all three up to rounding (a
    # batch of one runs the vmap engine too: every fit of a comparison on one engine path)
    first = fit_many(_jobs(tiny_cfg, f16_small, 2), cfg, device="cpu", engine="vmap")
    whole = fit_many(_jobs(tiny_cfg, f16_small, 3), cfg, device="cpu", engine="vmap", max_members=3)
    for i, res in enumerate(split):
        for k in ("x_last", "x_ema", "x_es"):
            if i < 2:
                assert torch.equal(getattr(res, k), getattr(first[i], k)), k
            # Up to rounding: a batch of 3 runs other grouped-conv kernels than one of 2 (on Zen 4 and AVX512 CPUs
            # at least), and Adam's first steps move every weight by +-lr whatever its gradient's size, so a
            # near-zero gradient rounded to the other sign moves a weight by 2 lr: measured, pixels differ by 1.5e-4 on
            # average and 2.2e-3 at most (Zen 4); a member mixed up with another would differ by ~0.1 on average.
            diff = (getattr(res, k) - getattr(whole[i], k)).abs()
            assert float(diff.mean()) < 1e-3 and float(diff.max()) < 4 * cfg.lr, (
                k,
                float(diff.mean()),
                float(diff.max()),
            )
    assert sizes == [2, 1, 2, 3]


def test_budget_from_the_environment_and_none_on_cpu(monkeypatch):
    monkeypatch.delenv(M.ENV, raising=False)
    assert M.budget(torch.device("cpu")) is None  # CPU runs sequential fits: nothing to cap
    monkeypatch.setenv(M.ENV, "40")
    assert M.budget(torch.device("cpu")) == 40e9
    monkeypatch.setenv(M.ENV, "lots")
    with pytest.raises(ValueError, match="LIP_GPU_MEMORY_GB"):
        M.budget(torch.device("cpu"))


def test_a_divergence_in_a_later_batch_names_the_member_of_the_whole_set(tiny_cfg, f16_small):
    """Split into batches, a diverging fit must still be named by its place among all the jobs."""
    from dataclasses import replace

    from lipcore.fit import FitDiverged

    jobs = _jobs(tiny_cfg, f16_small, 3)
    jobs[2] = replace(jobs[2], y=torch.full_like(jobs[2].y, float("nan")))  # a NaN observation: a NaN loss
    cfg = FitConfig(iterations=6, log_every=2, es_window=2, precision="fp32")
    with pytest.raises(FitDiverged, match=r"member 3 of 3") as err:
        fit_many(jobs, cfg, device="cpu", engine="vmap", max_members=2)
    assert err.value.member == 2
