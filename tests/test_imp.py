"""IMP: the sparsity schedule, the search knobs (shorter search fits, early-bird mask drawing), the ticket
search, and the train-and-score of trials (lipcore.imp, lipcore.trials)."""

import math

import pytest
import torch

from lipcore import DegradationConfig, FitConfig, build_net, fit, make_input, prune
from lipcore.config import ImpConfig, SearchConfig
from lipcore.imp import EarlyBird, find_ticket, headline_round, nominal_sparsity, rounds_needed
from lipcore.physics import Problem, sample_operator
from lipcore.trials import Trial, train_and_score

FIT = FitConfig(iterations=30, log_every=5, es_window=5, es_patience=10, precision="fp32")


def _trial(tiny_cfg, x, seed=3):
    g = torch.Generator().manual_seed(0)
    net = build_net(tiny_cfg, g)
    z = make_input(net, x.shape[-2], x.shape[-1], g)
    cfg = DegradationConfig(task="denoise")
    op = sample_operator(cfg, x.shape[1:], g)
    return Trial(net.state_dict(), z, Problem(op, op.observe(x, g), x, cfg), None, seed)


def test_published_nominal_sparsity_schedule():
    published = [20, 36, 48.8, 59.0, 67.2, 73.8, 79.0, 83.2, 86.6, 89.3, 91.4]
    for k, pct in enumerate(published, start=1):
        assert round(100 * nominal_sparsity(0.2, k), 1) == pct
    assert round(100 * nominal_sparsity(0.2, 16), 1) == 97.2


@pytest.mark.parametrize("target", [0.0, 0.2, 0.2000001, 0.36, 0.45, 0.9, 0.995])
def test_rounds_needed_is_the_first_round_reaching_the_target(target):
    k = rounds_needed(target, 0.2)
    assert nominal_sparsity(0.2, k) >= target - 1e-9
    assert k == 0 or nominal_sparsity(0.2, k - 1) < target - 1e-9


@pytest.mark.parametrize("target", [1.0, 1.5, -0.1])
def test_rounds_needed_refuses_unreachable_targets(target):
    with pytest.raises(ValueError, match=r"target sparsity must be in \[0, 1\)"):
        rounds_needed(target, 0.2)


def test_headline_round_is_reached_or_says_what_to_add():
    imp = ImpConfig(chain=((1, 0), (2, 1), (3, 2)))
    assert [headline_round(t, imp) for t in (0.0, 0.2, 0.3, 0.45)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"Add 2 round\(s\) to imp.chain in params.yaml: \[4, 3\], \[5, 4\]"):
        headline_round(0.6, imp)


def test_default_search_is_the_evaluation_fit(tiny_cfg, f16_small):
    trial = _trial(tiny_cfg, f16_small)
    (out,) = train_and_score(tiny_cfg, [trial], FIT, "blind", ImpConfig(), device="cpu")
    assert out.search_iterations == FIT.iterations == out.result.iterations
    net = build_net(tiny_cfg)
    net.load_state_dict(trial.start)
    res = fit(net, trial.z, trial.problem.op, trial.problem.y, FIT, x_true=f16_small, seed=3, device="cpu")
    assert torch.equal(res.x_last, out.result.x_last)  # one fit served search and evaluation
    assert all(torch.equal(v, out.state[k]) for k, v in net.state_dict().items())


def test_short_search_prunes_the_short_fit_and_reports_a_full_evaluation(tiny_cfg, f16_small):
    trial = _trial(tiny_cfg, f16_small)
    imp = ImpConfig(search=SearchConfig(iterations=10))
    (out,) = train_and_score(tiny_cfg, [trial], FIT, "blind", imp, device="cpu")
    assert out.search_iterations == 10 and out.result.iterations == FIT.iterations
    net = build_net(tiny_cfg)
    net.load_state_dict(trial.start)
    fit(net, trial.z, trial.problem.op, trial.problem.y, FitConfig(**{**FIT.__dict__, "iterations": 10}), seed=3)
    assert all(torch.equal(v, out.state[k]) for k, v in net.state_dict().items())  # the weights IMP prunes
    (full,) = train_and_score(tiny_cfg, [trial], FIT, "blind", None, device="cpu")
    assert torch.equal(full.result.x_last, out.result.x_last)  # evaluation untouched by the search setting


def test_early_bird_stops_the_search_once_the_next_mask_settles(tiny_cfg, f16_small):
    trial = _trial(tiny_cfg, f16_small)
    # Any movement below 50% of the weights counts as settled: the 2nd check (iteration 4) stops the fit.
    imp = ImpConfig(search=SearchConfig(early_bird=0.5, early_bird_every=2, early_bird_patience=1))
    (out,) = train_and_score(tiny_cfg, [trial], FIT, "blind", imp, device="cpu")
    assert out.search_iterations == 4 and out.result.iterations == FIT.iterations
    # A threshold no change can meet never stops it.
    never = ImpConfig(search=SearchConfig(early_bird=1e-9, early_bird_every=2, early_bird_patience=1))
    (out,) = train_and_score(tiny_cfg, [trial], FIT, "blind", never, device="cpu")
    assert out.search_iterations == FIT.iterations


def test_early_bird_measures_the_distance_between_successive_draws(tiny_cfg):
    net = build_net(tiny_cfg, torch.Generator().manual_seed(0))
    imp = ImpConfig(search=SearchConfig(early_bird=0.01, early_bird_patience=2))
    rule = EarlyBird(tiny_cfg, [None], imp)
    state = net.state_dict()
    assert not rule(0, state)  # the first draw has nothing to compare with
    assert not rule(0, state)  # same weights: distance 0, calm 1 of 2
    assert rule(0, state)  # calm 2 of 2
    assert rule.distances[0] == [0.0, 0.0]
    other = build_net(tiny_cfg, torch.Generator().manual_seed(1)).state_dict()  # other weights, another mask
    assert not rule(0, other) and rule.distances[0][-1] > 0.01
    assert rule.calm[0] == 0


def test_early_bird_draws_where_the_weights_are_with_a_few_host_reads(tiny_cfg, monkeypatch):
    """Every check drew the mask on the host: each layer's weights copied there (.cpu()) and sorted, with a host
    read per layer and count (~60 syncs on the paper net). Now no copy to the host and a handful of reads, however
    many layers (fits on CPU cannot see a device copy: the spy counts the explicit ones and every read)."""
    net = build_net(tiny_cfg, torch.Generator().manual_seed(0))
    imp = ImpConfig(search=SearchConfig(early_bird=0.01, early_bird_patience=2))
    parent = prune.magnitude_prune(net, prune.dense_mask(net), 0.2)
    rule = EarlyBird(tiny_cfg, [parent], imp)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    counts = {"reads": 0, "to_host": 0}

    def spy(name, key):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, **kwargs):
            counts[key] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    for name in ("__bool__", "__int__", "__float__", "item", "tolist"):
        spy(name, "reads")
    for name in ("cpu", "numpy"):
        spy(name, "to_host")
    assert not rule(0, state)
    assert not rule(0, state)
    monkeypatch.undo()
    assert rule.distances[0] == [0.0]
    assert counts["to_host"] == 0
    assert len(parent) > 10 and counts["reads"] <= 2 * 6  # per check: finite, count, 2 pruning checks, distance


def test_find_ticket_prunes_the_schedule_and_rewinds_late(tiny_cfg, f16_small):
    trial = _trial(tiny_cfg, f16_small)
    imp = ImpConfig(rewind_iteration=5)
    cfg = FitConfig(**{**FIT.__dict__, "iterations": 12})
    ticket = find_ticket(tiny_cfg, trial.start, trial.z, trial.problem, cfg, imp, 3, seed=3, device="cpu")
    assert ticket.search_iterations == [12, 12, 12]
    kept = sum(int(m.sum()) for m in ticket.mask.values())
    total = sum(m.numel() for m in ticket.mask.values())
    assert 1 - kept / total == pytest.approx(nominal_sparsity(0.2, 3), abs=1e-3)
    # the start is round 0's weights after 5 iterations: the same fit stopped there gives them
    net = build_net(tiny_cfg)
    net.load_state_dict(trial.start)
    fit(net, trial.z, trial.problem.op, trial.problem.y, FitConfig(**{**FIT.__dict__, "iterations": 5}), seed=3)
    assert all(torch.equal(v, ticket.start[k]) for k, v in net.state_dict().items())
    assert not math.isclose(float(ticket.start["head.weight"].sum()), float(trial.start["head.weight"].sum()))
