"""The baselines LIP is compared with: matched random / SNIP masks and the deep decoder of the same size."""

import pytest
import torch

from lipcore import DegradationConfig, NetConfig, build_net, count_parameters, make_input
from lipcore import prune as P
from lipcore.baselines import decoder_channels_for, matched_decoder, nonzero_parameters
from lipcore.config import OesConfig
from lipcore.methods import baseline_mask, selectable
from lipcore.physics import make_problem


def _decoder_parameters(k: int, layers: int = 6) -> int:
    return count_parameters(build_net(NetConfig(kind="decoder", decoder_channels=k, decoder_layers=layers)))


@pytest.mark.parametrize("layers", [3, 6])
@pytest.mark.parametrize("n_params", [1, 500, 25_536, 30_000, 100_224, 1_000_000])
def test_decoder_width_is_the_nearest_parameter_count(n_params, layers):
    k = decoder_channels_for(n_params, layers)
    brute = min(range(1, 600), key=lambda c: abs(layers * c * c + (2 * layers + 3) * c - n_params))
    assert k == brute
    if k < 200:  # the formula is the built decoder's count
        assert _decoder_parameters(k, layers) == layers * k * k + (2 * layers + 3) * k


def test_published_decoder_sizes_are_matched_exactly():
    assert decoder_channels_for(25_536) == 64 and decoder_channels_for(100_224) == 128


def test_matched_decoder_has_about_the_sparse_nets_parameters(tiny_cfg):
    net = build_net(tiny_cfg, torch.Generator().manual_seed(0))
    mask = P.random_mask(net, 0.5, torch.Generator().manual_seed(1))
    kept = nonzero_parameters(tiny_cfg, mask)
    assert kept == count_parameters(net) - (P.count_total(mask) - P.count_kept(mask))
    dec = matched_decoder(tiny_cfg, mask, layers=3)
    got = _decoder_parameters(dec.decoder_channels, 3)
    neighbours = [_decoder_parameters(dec.decoder_channels + d, 3) for d in (-1, 1)]
    assert all(abs(got - kept) <= abs(n - kept) for n in neighbours)


@pytest.mark.parametrize("method", selectable())
def test_baseline_masks_remove_exactly_as_many_weights_as_lip(method, tiny_cfg, f16_small):
    g = torch.Generator().manual_seed(0)
    net = build_net(tiny_cfg, g)
    z = make_input(net, 32, 32, g)
    problem = make_problem(f16_small, DegradationConfig(task="inpaint"), g)
    lip = P.magnitude_prune(net, P.dense_mask(net), 0.36, scope="layer")
    g = torch.Generator().manual_seed(2)
    settings = {"oes": (OesConfig(), 20)}  # a short search: the count is what this test checks
    mask = baseline_mask(method, tiny_cfg, net.state_dict(), z, problem, lip, g, settings=settings)
    assert P.count_kept(mask) == P.count_kept(lip)
    if method in ("random_layer", "snip_layer"):
        assert all(int(mask[n].sum()) == int(lip[n].sum()) for n in lip)
    assert any(not torch.equal(mask[n], lip[n]) for n in lip)  # not LIP's mask itself


@pytest.mark.parametrize("method", ["snip", "snip_layer", "snip_iterative"])
def test_snip_scores_on_the_fits_device_and_returns_the_mask_on_the_cpu(method, tiny_cfg, f16_small, monkeypatch):
    """SNIP's forward and backward ran on one CPU thread whatever the fits' device. On `meta` (a CPU tensor
    meeting a meta one raises) the loss SNIP differentiates sees the net, z, the operator and y all there."""
    g = torch.Generator().manual_seed(0)
    net = build_net(tiny_cfg, g)
    z = make_input(net, 32, 32, g)
    problem = make_problem(f16_small, DegradationConfig(task="inpaint"), g)
    lip = P.magnitude_prune(net, P.dense_mask(net), 0.36, scope="layer")
    seen = []

    def scored(m, loss_fn):
        seen.append({p.device.type for p in m.parameters()} | {loss_fn(m).device.type})
        return {n: torch.rand(w.shape) for n, w in P.prunable(m).items()}

    kept = P.count_kept  # (iterative SNIP counts its meta mask: nothing to read there, say all kept)
    monkeypatch.setattr(P, "count_kept", lambda m: P.count_total(m) if next(iter(m.values())).is_meta else kept(m))
    monkeypatch.setattr(P, "snip_scores", scored)
    monkeypatch.setattr(
        P,
        "prune_by_score",
        lambda scores, mask, *a: {n: torch.ones_like(v, dtype=torch.bool) for n, v in scores.items()},
    )
    mask = baseline_mask(method, tiny_cfg, net.state_dict(), z, problem, lip, g, device="meta")
    assert seen and all(devices == {"meta"} for devices in seen)
    assert {m.device.type for m in mask.values()} == {"cpu"}


def test_unknown_baselines_are_named():
    with pytest.raises(ValueError, match="choose from"):
        baseline_mask("magnitude", NetConfig(), {}, torch.zeros(1), None, {}, torch.Generator())


def test_reinit_starts_from_a_theta0_no_lip_run_uses(tiny_cfg):
    """The lottery-ticket 'reinit' control: every tensor of its theta_0 differs from each seed's theta_0 (the
    start of that seed's LIP rounds), and it is reproducible."""
    from lipcore.trials import fresh_initialisation, initialisation

    for index in range(3):
        fresh, again = fresh_initialisation(tiny_cfg, 0, index), fresh_initialisation(tiny_cfg, 0, index)
        assert fresh.keys() == again.keys() and all(torch.equal(v, again[k]) for k, v in fresh.items())
        for seed in range(3):
            lip, _ = initialisation(tiny_cfg, 0, seed, 32, 32)
            weights = [k for k in lip if k.endswith("weight") and lip[k].dim() == 4]
            assert weights and all(not torch.equal(fresh[k], lip[k]) for k in weights)
            assert {k: v.shape for k, v in fresh.items()} == {k: v.shape for k, v in lip.items()}
