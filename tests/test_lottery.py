"""The IMP search knobs: shorter search fits and early-bird mask drawing (lipcore.lottery)."""

import torch

from lipcore import DegradationConfig, FitConfig, build_net, fit, make_input
from lipcore.config import PruneConfig, SearchConfig
from lipcore.lottery import EarlyBird, Problem, train_and_score
from lipcore.physics import sample_operator

FIT = FitConfig(iterations=30, log_every=5, es_window=5, es_patience=10)


def _problem(tiny_cfg, x):
    g = torch.Generator().manual_seed(0)
    net = build_net(tiny_cfg, g)
    z = make_input(net, x.shape[-2], x.shape[-1], g)
    cfg = DegradationConfig(task="denoise")
    op = sample_operator(cfg, x.shape[1:], g)
    return net.state_dict(), z, Problem(op, op.observe(x, g), x, cfg)


def test_default_search_is_the_evaluation_fit(tiny_cfg, f16_small):
    start, z, problem = _problem(tiny_cfg, f16_small)
    out = train_and_score(tiny_cfg, start, z, problem, FIT, "blind", None, seed=3, device="cpu")
    assert out.search_iterations == FIT.iterations == out.result.iterations
    net = build_net(tiny_cfg)
    net.load_state_dict(start)
    res = fit(net, z, problem.op, problem.y, FIT, x_true=f16_small, seed=3, device="cpu")
    assert torch.equal(res.x_last, out.result.x_last)  # one fit served search and evaluation
    assert all(torch.equal(v, out.state[k]) for k, v in net.state_dict().items())


def test_short_search_prunes_the_short_fit_and_reports_a_full_evaluation(tiny_cfg, f16_small):
    start, z, problem = _problem(tiny_cfg, f16_small)
    search = SearchConfig(iterations=10)
    out = train_and_score(tiny_cfg, start, z, problem, FIT, "blind", None, seed=3, device="cpu", search=search)
    assert out.search_iterations == 10 and out.result.iterations == FIT.iterations
    net = build_net(tiny_cfg)
    net.load_state_dict(start)
    fit(net, z, problem.op, problem.y, FitConfig(**{**FIT.__dict__, "iterations": 10}), seed=3, device="cpu")
    assert all(torch.equal(v, out.state[k]) for k, v in net.state_dict().items())  # the weights IMP prunes
    full = train_and_score(tiny_cfg, start, z, problem, FIT, "blind", None, seed=3, device="cpu")
    assert torch.equal(full.result.x_last, out.result.x_last)  # evaluation untouched by the search setting


def test_early_bird_stops_the_search_once_the_next_mask_settles(tiny_cfg, f16_small):
    start, z, problem = _problem(tiny_cfg, f16_small)
    prune_cfg = PruneConfig(fraction=0.2)
    # Any movement below 50% of the weights counts as settled: the 2nd check (iteration 4) stops the fit.
    search = SearchConfig(early_bird=0.5, early_bird_every=2, early_bird_patience=1)
    out = train_and_score(
        tiny_cfg, start, z, problem, FIT, "blind", None, seed=3, device="cpu", search=search, prune_cfg=prune_cfg
    )
    assert out.search_iterations == 4 and out.result.iterations == FIT.iterations
    # A threshold no change can meet never stops it.
    never = SearchConfig(early_bird=1e-9, early_bird_every=2, early_bird_patience=1)
    out = train_and_score(
        tiny_cfg, start, z, problem, FIT, "blind", None, seed=3, device="cpu", search=never, prune_cfg=prune_cfg
    )
    assert out.search_iterations == FIT.iterations


def test_early_bird_measures_the_distance_between_successive_draws(tiny_cfg):
    net = build_net(tiny_cfg, torch.Generator().manual_seed(0))
    prune_cfg = PruneConfig(fraction=0.2)
    rule = EarlyBird(tiny_cfg, [None], prune_cfg, SearchConfig(early_bird=0.01, early_bird_patience=2))
    state = net.state_dict()
    assert not rule(0, state)  # the first draw has nothing to compare with
    assert not rule(0, state)  # same weights: distance 0, calm 1 of 2
    assert rule(0, state)  # calm 2 of 2
    assert rule.distances[0] == [0.0, 0.0]
    other = build_net(tiny_cfg, torch.Generator().manual_seed(1)).state_dict()  # other weights, another mask
    assert not rule(0, other) and rule.distances[0][-1] > 0.01
    assert rule.calm[0] == 0
