"""The fit loop's bookkeeping objects (lipcore.fit_state), each on its own, against a brute-force reference."""

import math
from functools import partial

import numpy as np
import pytest
import torch

from lipcore.fit_state import (
    HISTORY_COLUMNS,
    Backtracking,
    Best,
    Divergence,
    Ema,
    EsWmv,
    History,
    LastFinite,
    Oracle,
    StopCheck,
    Stopping,
    WindowVariance,
    reset_optimizer_state,
)
from lipcore.metrics import psnr, psnr_from_mse, psnr_y

N = 3  # members
SHAPE = (N, 1, 3, 5, 7)  # (N, B, C, H, W): odd sizes, so no dim is mistaken for another


def steps(k: int) -> list[torch.Tensor]:
    """The device-side iteration counter the loop hands the trackers: 1, 2, ..., k."""
    return [torch.tensor(t) for t in range(1, k + 1)]


def test_ema_averages_and_weight_zero_keeps_the_last_output():
    xs = torch.rand(4, *SHAPE)
    ema, keep = Ema(0.9), Ema(0.0)
    expected = xs[0].clone()
    for i, x in enumerate(xs):
        expected = x.clone() if i == 0 else 0.9 * expected + 0.1 * x
        torch.testing.assert_close(ema.update(x), expected)
        assert torch.equal(keep.update(x), x)


def test_window_variance_equals_brute_force_as_the_ring_buffer_wraps():
    window = 4
    g = torch.Generator().manual_seed(0)
    xs = torch.rand(11, *SHAPE, generator=g) * torch.linspace(0.1, 1.0, 11).view(-1, *[1] * len(SHAPE))
    wv = WindowVariance(window, xs[0])
    for t, x in enumerate(xs, start=1):
        got = wv.push(x)
        if t < window:
            assert got is None
            continue
        frames = xs[t - window : t].double()  # the last W outputs
        brute = frames.var(dim=0, unbiased=False).flatten(1).mean(1)  # population variance, mean per pixel
        assert got.shape == (N,) and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), brute, rtol=1e-5, atol=1e-9)


def test_best_keeps_the_argmax_and_leaves_frozen_members_alone():
    g = torch.Generator().manual_seed(1)
    values, xs = torch.randn(9, N, generator=g), torch.rand(9, *SHAPE, generator=g)
    frozen = torch.tensor([False, True, False])
    best, lowest = Best(maximise=True), Best(maximise=False)
    for step, v, x in zip(steps(9), values, xs):
        best.update(v, step, x)
        lowest.update(v, step, x, frozen if step > 4 else None)
    for m in range(N):
        top = int(values[:, m].argmax())
        assert int(best.iteration[m]) == top + 1 and float(best.value[m]) == float(values[top, m])
        assert torch.equal(best.x[m], xs[top, m])
        span = 4 if frozen[m] else 9  # frozen from step 5 on
        low = int(values[:span, m].argmin())
        assert int(lowest.iteration[m]) == low + 1 and torch.equal(lowest.x[m], xs[low, m])


def _constant_frames(levels: list[list[float]]) -> torch.Tensor:
    """Outputs (T, N, 1, 1, 2, 2) whose pixels all equal levels[t][member]."""
    return torch.tensor(levels).view(len(levels), -1, 1, 1, 1, 1).expand(-1, -1, 1, 1, 2, 2).contiguous()


def test_es_wmv_reports_the_min_variance_iteration_and_detects_after_exactly_the_patience():
    # Window 2: the variance at t is ((s_t - s_{t-1}) / 2)^2, so the step sizes set it. Member 0's smallest
    # step comes at t = 5; member 1 keeps finding smaller ones and is never detected. After member 0's
    # detection at 5 + patience a smaller step (t = 10) no longer moves its minimum.
    steps0 = [0, 5, 4, 3, 1, 2, 3, 4, 5, 0.5, 6]
    steps1 = [0, 5, 4, 3, 2.5, 2, 1.5, 1.2, 1.1, 1.0, 0.9]
    levels = np.cumsum([steps0, steps1], axis=1).T.tolist()
    xs, x_emas = _constant_frames(levels), _constant_frames(levels) + 100  # EMA outputs told apart
    patience = 3
    es = EsWmv(window=2, patience=patience, n=2, device=torch.device("cpu"))
    detected_at = []
    for step, x, x_ema in zip(steps(len(levels)), xs, x_emas):
        variance = es.update(step, x, x_ema)
        assert (variance is None) == (int(step) < 2)
        if variance is not None:
            expected = (torch.tensor([steps0[int(step) - 1], steps1[int(step) - 1]]) / 2) ** 2
            torch.testing.assert_close(variance, expected)
        detected_at.append(es.detected.tolist())
    assert [d[0] for d in detected_at].index(True) + 1 == 5 + patience  # detected at exactly 5 + patience
    assert int(es.detected_at[0]) == 5 + patience and not es.detected[1]
    r0, r1 = es.result(0, 11, xs[-1], x_emas[-1]), es.result(1, 11, xs[-1], x_emas[-1])
    assert r0["es_iteration"] == 5 and r0["es_detected"] == 5 + patience
    assert torch.equal(r0["x_es"], xs[4, 0]) and torch.equal(r0["x_es_ema"], x_emas[4, 0])
    assert r1["es_iteration"] == 11 and r1["es_detected"] is None


def test_es_wmv_before_the_window_fills_reports_the_current_outputs():
    es = EsWmv(window=5, patience=1, n=N, device=torch.device("cpu"))
    x = torch.rand(SHAPE)
    es.update(torch.tensor(1), x, x + 1)
    r = es.result(2, 1, x, x + 1)
    assert r["es_iteration"] == 1 and r["es_detected"] is None
    assert torch.equal(r["x_es"], x[2]) and torch.equal(r["x_es_ema"], x[2] + 1)


def test_oracle_keeps_the_argmax_of_each_members_metric():
    g = torch.Generator().manual_seed(2)
    x_true = torch.rand(SHAPE, generator=g)
    xs = [x_true + 0.1 * s * torch.randn(SHAPE, generator=g) for s in (3.0, 1.0, 0.5, 2.0, 0.7)]
    y_psnr = partial(psnr_y, shave=1)
    oracle = Oracle(x_true, [psnr, y_psnr, y_psnr])
    x_emas = [x.flip(-1) for x in xs]  # stands in for the averaged outputs: other images, other scores
    traces = {"out": [], "ema": []}
    for step, x, x_ema in zip(steps(len(xs)), xs, x_emas):
        s_out, s_ema = oracle.update(step, x, x_ema)
        traces["out"].append(s_out)
        traces["ema"].append(s_ema)
        for m, metric in enumerate([psnr, y_psnr, y_psnr]):
            torch.testing.assert_close(s_out[m], metric(x[m], x_true[m]).mean())
            torch.testing.assert_close(s_ema[m], metric(x_ema[m], x_true[m]).mean())
    for key, images in (("out", xs), ("ema", x_emas)):
        trace, best = torch.stack(traces[key]), oracle.best[key]
        assert torch.equal(best.iteration, trace.argmax(0) + 1) and torch.equal(best.value, trace.amax(0))
        for m in range(N):
            assert torch.equal(best.x[m], images[int(trace[:, m].argmax())][m])
    assert not torch.equal(oracle.best["out"].iteration, oracle.best["ema"].iteration)  # the two told apart


def test_oracle_with_one_metric_scores_all_members_in_one_batched_call():
    """The default path: bit-identical to psnr over the flattened members, as the fit has always computed it."""
    x_true, x = torch.rand(SHAPE), torch.rand(SHAPE)
    expected = psnr(x.flatten(0, 1), x_true.flatten(0, 1)).view(N, -1).mean(1)
    assert torch.equal(Oracle(x_true, [psnr] * N).score(x), expected)


def _stacked_params(g: torch.Generator) -> list[torch.Tensor]:
    """Two parameters stacked over N members, as the vmap engine holds them."""
    return [torch.randn(N, 4, 3, generator=g, requires_grad=True), torch.randn(N, 5, generator=g, requires_grad=True)]


def _flags_for(params: list[torch.Tensor], flags: torch.Tensor) -> list[torch.Tensor]:
    return [flags.view(-1, *([1] * (p.dim() - 1))) for p in params]


def _loss_at_psnr(db: list[float]) -> torch.Tensor:
    """Per-image MSE (N, B=1) whose PSNR is `db`."""
    return torch.tensor([[10 ** (-d / 10)] for d in db])


def test_backtracking_restores_the_snapshot_of_the_previous_check_bit_for_bit():
    g = torch.Generator().manual_seed(3)
    params = _stacked_params(g)
    bt = Backtracking(params, partial(_flags_for, params), drop_db=5.0, n=N, device=torch.device("cpu"))
    assert torch.equal(bt.floor(), torch.full((N,), -math.inf))
    bt.check(_loss_at_psnr([20, 20, 20]), bt.floor())  # first check: nothing to fall from
    at_check = [p.detach().clone() for p in params]
    with torch.no_grad():  # training moves on between checks
        for p in params:
            p.add_(torch.randn(p.shape, generator=g))
    trained = [p.detach().clone() for p in params]
    # member 0 collapses (20 -> 14 dB, more than 5 dB down), member 1 falls by less, member 2 improves
    hit = bt.check(_loss_at_psnr([14, 16, 25]), bt.floor())
    assert hit.tolist() == [True, False, False] and bt.count.tolist() == [1, 0, 0]
    for p, snap, new in zip(params, at_check, trained):
        assert torch.equal(p[0], snap[0])  # restored, bit for bit
        assert torch.equal(p[1:], new[1:])  # the others keep their training
    assert all(torch.equal(s, p) for s, p in zip(bt.snapshot, params))  # the next check falls back to these
    torch.testing.assert_close(bt.last_psnr, torch.tensor([20.0, 16.0, 25.0]))  # a collapse keeps the old level
    torch.testing.assert_close(bt.floor(), bt.last_psnr - 5.0)


def test_backtracking_off_keeps_no_snapshot_and_counts_nothing():
    params = _stacked_params(torch.Generator().manual_seed(4))
    bt = Backtracking(params, partial(_flags_for, params), drop_db=None, n=N, device=torch.device("cpu"))
    assert bt.floor() is None and bt.snapshot == [] and bt.count.tolist() == [0] * N


def test_history_rows_land_at_the_log_iterations():
    history = History(2, rows=4, device=torch.device("cpu"))
    per_image = torch.tensor([[0.01, 0.03], [0.1, 0.1]])
    for it in (5, 10, 13):
        variance = None if it == 5 else torch.tensor([1.0, 2.0]) * it
        scores = (torch.tensor([20.0, 21.0]), torch.tensor([22.0, 23.0]))
        history.log(torch.tensor(it), per_image, variance, torch.tensor([0, it]), scores)
    cols = history.columns(1)
    assert list(cols) == list(HISTORY_COLUMNS) and all(v.dtype == np.float64 for v in cols.values())
    assert cols["iteration"].tolist() == [5, 10, 13]  # only the rows written: the spare row is not returned
    np.testing.assert_allclose(cols["loss"], 0.1)
    np.testing.assert_allclose(cols["psnr_obs"], 10.0, rtol=1e-6)
    assert np.isnan(cols["es_variance"][0]) and cols["es_variance"][1:].tolist() == [20.0, 26.0]
    assert cols["backtracks"].tolist() == [5, 10, 13] and cols["psnr_ema"].tolist() == [23.0] * 3
    np.testing.assert_allclose(history.columns(0)["psnr_obs"], float(psnr_from_mse(torch.tensor([0.01, 0.03])).mean()))
    blind = History(1, rows=1, device=torch.device("cpu"))
    blind.log(torch.tensor(1), per_image[:1], None, torch.tensor([0]), None)
    assert np.isnan(blind.columns(0)["psnr_out"]).all() and np.isnan(blind.columns(0)["psnr_ema"]).all()


class FakeMembers:
    """An engine's state_dict(i): member i's 'weights' are the number of steps taken."""

    def __init__(self) -> None:
        self.steps = 0

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        return {"w": torch.tensor(self.steps + 100 * i)}


def test_stopping_captures_the_rewind_weights_and_stops_no_member_before_them():
    members, seen = FakeMembers(), []
    rule = StopCheck(2, lambda i, state: seen.append((i, int(state["w"]))) or i == 0)
    stopping = Stopping(es_stop=True, rewind_iteration=4, check=rule, n=2)
    detected = torch.tensor([True, True])
    stopping.keep_rewind(0, members)
    assert stopping.rewind_states == [None, None]
    for it in range(1, 5):  # up to and including the rewind iteration: nobody stops, no rule is asked
        members.steps = it
        stopping.keep_rewind(it, members)
        assert stopping.due(it, True, detected, members) == []
    assert seen == [] and [int(s["w"]) for s in stopping.rewind_states] == [4, 104]
    members.steps = 5
    assert stopping.due(5, False, detected, members) == []  # ES flags are read at log iterations only
    members.steps = 6
    assert stopping.due(6, False, torch.tensor([False, False]), members) == [0]  # the rule, every 2 iterations
    assert seen == [(0, 6), (1, 106)]
    assert stopping.due(7, True, detected, members) == [1] and stopping.all_stopped
    assert stopping.due(8, True, detected, members) == []  # each member is reported once


def test_rewind_at_zero_is_the_state_before_the_first_step():
    members = FakeMembers()
    stopping = Stopping(es_stop=False, rewind_iteration=0, check=None, n=1)
    stopping.keep_rewind(0, members)
    members.steps = 1
    stopping.keep_rewind(1, members)
    assert int(stopping.rewind_states[0]["w"]) == 0
    assert stopping.due(1, True, torch.tensor([True]), members) == []  # es_stop off


@pytest.mark.parametrize("every", [1, 3])
def test_stopping_without_rewind_asks_the_rule_every_few_iterations(every):
    asked = []
    stopping = Stopping(False, None, StopCheck(every, lambda i, s: asked.append(i) or False), n=1)
    for it in range(1, 7):
        stopping.due(it, True, torch.tensor([True]), FakeMembers())
    assert len(asked) == 6 // every


def test_last_finite_replaces_only_the_members_whose_output_is_not_finite():
    seen = LastFinite()
    first = torch.rand(SHAPE)
    assert torch.equal(seen.update(first), first)
    second = torch.rand(SHAPE)
    second[1, 0, 2, 3, 4] = math.nan
    second[2, 0, 0, 0, 0] = math.inf
    out = seen.update(second)
    assert torch.equal(out[0], second[0]) and torch.equal(out[1], first[1]) and torch.equal(out[2], first[2])
    nan_start = LastFinite().update(torch.full(SHAPE, math.nan))
    assert torch.equal(nan_start, torch.zeros(SHAPE))  # nothing finite seen yet


def test_divergence_counts_checks_in_a_row_and_remembers_the_first():
    div = Divergence(N, torch.device("cpu"), patience=2)
    fine, member1 = torch.ones(N, 2), torch.ones(N, 2)
    member1[1, 0] = math.nan
    for step, loss, failed in [(4, member1, []), (8, fine, []), (12, member1, []), (16, member1, [1]), (20, fine, [1])]:
        broken = div.check(torch.tensor(step), loss)
        assert broken.tolist() == [False, not torch.isfinite(loss[1]).all().item(), False]
        assert div.failed() == failed
    assert div.first_iteration(1) == 4 and div.first_iteration(0) is None


def test_reset_optimizer_state_clears_only_flagged_members():
    stacked = torch.nn.Parameter(torch.randn(N, 4))  # as the vmap engine stacks members
    opt = torch.optim.Adam([stacked], lr=0.1)
    stacked.grad = torch.randn(N, 4)
    opt.step()
    stacked.grad = torch.randn(N, 4)
    before = {k: v.clone() for k, v in opt.state[stacked].items()}
    grad = stacked.grad.clone()
    reset_optimizer_state(opt, [stacked], [torch.tensor([False, True, False]).view(N, 1)])
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt.state[stacked][key][1], torch.zeros(4))
        assert torch.equal(opt.state[stacked][key][[0, 2]], before[key][[0, 2]])
    assert torch.equal(stacked.grad[1], torch.zeros(4)) and torch.equal(stacked.grad[[0, 2]], grad[[0, 2]])
