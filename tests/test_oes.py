"""Optimal Eye Surgeon (lipcore.oes): the relaxation, the KL term, the exact top-k, and a search that works."""

import math

import pytest
import torch
from torch.func import functional_call

from lipcore import DegradationConfig, build_net, make_input
from lipcore import prune as P
from lipcore.config import OesConfig
from lipcore.oes import kl_to_density, relaxed_mask, search, top_k_mask
from lipcore.physics import make_problem


def test_the_kl_term_on_a_hand_made_case():
    # p = 0 keeps with probability 1/2: KL(Bern(.5) || Bern(.1)) = .5 ln(.5/.1) + .5 ln(.5/.9)
    expected = 0.5 * math.log(0.5 / 0.1) + 0.5 * math.log(0.5 / 0.9)
    got = kl_to_density(torch.zeros(3), 0.1)
    assert torch.allclose(got, torch.full((3,), expected), atol=1e-6)
    assert abs(expected - 0.5108256) < 1e-6
    at_rho = kl_to_density(torch.tensor([math.log(0.1 / 0.9)]), 0.1)  # sigmoid(p) = rho: no divergence
    assert abs(float(at_rho)) < 1e-6
    far = kl_to_density(torch.tensor([-60.0, 60.0]), 0.25)  # saturated logits stay finite: -ln .75, -ln .25
    assert torch.allclose(far, torch.tensor([-math.log(0.75), -math.log(0.25)]), atol=1e-5)


def test_gradients_reach_the_logits_through_the_relaxation(tiny_cfg, f16_small):
    g = torch.Generator().manual_seed(0)
    net = build_net(tiny_cfg, g)
    z = make_input(net, 32, 32, g)
    weights = P.prunable(net)
    logits = {n: torch.zeros_like(w, requires_grad=True) for n, w in weights.items()}
    masked = {n: w.detach() * relaxed_mask(logits[n], 0.2, g) for n, w in weights.items()}
    out = functional_call(net, masked, (z,), strict=False)
    (out - f16_small).pow(2).mean().backward()
    for n, p in logits.items():
        assert p.grad is not None and torch.isfinite(p.grad).all()
        assert (p.grad != 0).float().mean() > 0.5, n  # most weights' logits move, in every layer


def test_the_relaxed_mask_keeps_with_probability_sigmoid_p():
    g = torch.Generator().manual_seed(1)
    p = torch.full((200_000,), 1.0)
    m = relaxed_mask(p, 0.2, g)
    assert 0 <= float(m.min()) and float(m.max()) <= 1 and torch.isfinite(m).all()
    assert abs(float((m > 0.5).float().mean()) - torch.sigmoid(torch.tensor(1.0)).item()) < 0.005


@pytest.mark.parametrize("kept", [1, 7, 50, 96])
def test_the_mask_keeps_exactly_the_target_count_with_a_random_tie_break(kept):
    logits = {"a.weight": torch.zeros(4, 3, 2, 2), "b.weight": torch.zeros(2, 4, 2, 1)}  # 48 + 16, all tied
    logits["b.weight"][0, 0, 0, 0] = 5.0  # the one clear winner
    one = top_k_mask(logits, min(kept, 64), torch.Generator().manual_seed(0))
    two = top_k_mask(logits, min(kept, 64), torch.Generator().manual_seed(1))
    assert P.count_kept(one) == min(kept, 64) and one["b.weight"][0, 0, 0, 0]
    if 1 < kept < 64:
        assert any(not torch.equal(one[n], two[n]) for n in one)  # ties: broken at random, not by position
    with pytest.raises(ValueError, match="kept must be in"):
        top_k_mask(logits, 65, torch.Generator())


def test_a_short_search_beats_a_random_mask_of_the_same_density(tiny_cfg, f16_small):
    """OES minimises the measurement loss of the masked theta_0: after a short search its hard mask fits the
    observation better than random masks of the same count (the untrained masked nets' outputs)."""
    g = torch.Generator().manual_seed(0)
    net = build_net(tiny_cfg, g)
    z = make_input(net, 32, 32, g)
    problem = make_problem(f16_small, DegradationConfig(task="denoise"), g)
    names = list(P.prunable(net))
    total = sum(P.prunable(net)[n].numel() for n in names)
    kept = P.round_count(0.3, total)
    found = search(tiny_cfg, net.state_dict(), z, problem, names, kept, OesConfig(), 150, torch.Generator())
    assert P.count_kept(found.mask) == kept and found.steps == 150
    assert len(found.loss_curve) == 150 and found.record()["steps"] == 150  # every step (< 100 steps per point)

    def loss(mask):
        masked = {n: w.detach() * mask[n] for n, w in P.prunable(net).items()}
        with torch.no_grad():
            return float((functional_call(net.train(), masked, (z,), strict=False) - problem.y).pow(2).mean())

    randoms = [loss(P.random_mask(net, 0.7, torch.Generator().manual_seed(s))) for s in range(5)]
    assert loss(found.mask) < min(randoms)


def test_the_search_is_a_function_of_its_generator(tiny_cfg, f16_small):
    g = torch.Generator().manual_seed(0)
    net = build_net(tiny_cfg, g)
    z = make_input(net, 32, 32, g)
    problem = make_problem(f16_small, DegradationConfig(task="inpaint"), g)
    names = list(P.prunable(net))

    def run(seed):
        return search(
            tiny_cfg, net.state_dict(), z, problem, names, 500, OesConfig(), 10, torch.Generator().manual_seed(seed)
        )

    a, b, c = run(3), run(3), run(4)
    assert all(torch.equal(a.mask[n], b.mask[n]) for n in names) and a.loss_curve == b.loss_curve
    assert any(not torch.equal(a.mask[n], c.mask[n]) for n in names)


def test_oes_settings_are_checked():
    assert OesConfig().steps(300) == 450 and OesConfig(steps_per_iteration=0.001).steps(300) == 1
    with pytest.raises(ValueError, match="steps_per_iteration"):
        OesConfig(steps_per_iteration=0)
