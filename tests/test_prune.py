import pytest
import torch

from lipcore import NetConfig, build_net
from lipcore import prune as P
from lipcore.imp import nominal_sparsity, sparsity_report


@pytest.fixture
def net(tiny_cfg):
    return build_net(tiny_cfg, torch.Generator().manual_seed(0))


def test_prunable_weights_are_exactly_the_conv_weights(net):
    names = list(P.prunable(net))
    assert names and all(n.endswith(".weight") for n in names)
    assert all(net.get_parameter(n).dim() == 4 for n in names)
    assert not any(n.endswith("bias") for n in names)
    assert len(names) == sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())


def test_global_magnitude_pruning_removes_the_exact_count_and_the_smallest(net):
    mask = P.dense_mask(net)
    total = P.count_total(mask)
    new = P.magnitude_prune(net, mask, 0.2)
    assert total - P.count_kept(new) == P.round_count(0.2, total) == int(0.2 * total + 0.5)
    w = torch.cat([p.detach().abs().flatten() for p in P.prunable(net).values()])
    kept = torch.cat([m.flatten() for m in new.values()])
    assert w[~kept].max() <= w[kept].min()


def test_rounds_are_monotone_and_remove_a_fraction_of_the_remaining(net):
    mask = P.dense_mask(net)
    for k in range(1, 6):
        alive = P.count_kept(mask)
        with torch.no_grad():  # new weights each round, as after retraining
            for p in P.prunable(net).values():
                p.normal_()
        P.apply_mask(net, mask)
        new = P.magnitude_prune(net, mask, 0.2)
        assert P.is_monotone(mask, new)
        assert alive - P.count_kept(new) == P.round_count(0.2, alive)
        assert P.sparsity(new) == pytest.approx(nominal_sparsity(0.2, k), abs=1e-3)
        mask = new


def test_ties_are_broken_by_position_deterministically(net):
    with torch.no_grad():
        for p in P.prunable(net).values():
            p.fill_(1.0)
    mask = P.dense_mask(net)
    a = P.magnitude_prune(net, mask, 0.5)
    b = P.magnitude_prune(net, mask, 0.5)
    assert all(torch.equal(a[n], b[n]) for n in a)
    flat = torch.cat([m.flatten() for m in a.values()])
    n_removed = P.round_count(0.5, flat.numel())
    assert not flat[:n_removed].any() and flat[n_removed:].all()  # the first in order go first


def test_layerwise_scope_prunes_each_layer_by_the_fraction(net):
    new = P.magnitude_prune(net, P.dense_mask(net), 0.2, scope="layer")
    for m in new.values():
        assert m.numel() - int(m.sum()) == P.round_count(0.2, m.numel())


def test_keep_input_dense_is_paper_compatible(net):
    dense_layers = net.input_layers()
    new = P.magnitude_prune(net, P.dense_mask(net), 0.2, dense_layers=dense_layers)
    assert all(bool(new[n].all()) for n in dense_layers)
    assert P.sparsity(new) < 0.2  # ranked with the rest but kept dense: effective below nominal
    rep = sparsity_report(new, 0.2, 1)
    assert rep.nominal == pytest.approx(0.2) and rep.effective < rep.nominal


def test_random_masks_hit_the_exact_sparsity(net):
    m = P.random_mask(net, 0.67, torch.Generator().manual_seed(0))
    total = P.count_total(m)
    assert total - P.count_kept(m) == P.round_count(0.67, total)
    lip = P.magnitude_prune(net, P.dense_mask(net), 0.36, scope="layer")
    matched = P.random_mask_like(lip, torch.Generator().manual_seed(1))
    for n in lip:
        assert int(matched[n].sum()) == int(lip[n].sum())
    assert not all(torch.equal(matched[n], lip[n]) for n in lip)
    again = P.random_mask(net, 0.67, torch.Generator().manual_seed(0))
    assert all(torch.equal(m[n], again[n]) for n in m)


def test_snip_keeps_the_largest_saliency(net, tiny_cfg):
    from lipcore.nets import make_input

    z = make_input(net, 32, 32, torch.Generator().manual_seed(0))
    y = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in net.state_dict().items()}

    def loss_fn(model):
        return (model(z) - y).pow(2).mean()

    mask = P.snip_mask(net, loss_fn, 0.8)
    total = P.count_total(mask)
    assert total - P.count_kept(mask) == P.round_count(0.8, total)
    net.zero_grad()
    loss_fn(net).backward()
    score = torch.cat([(p.detach() * p.grad).abs().flatten() for p in P.prunable(net).values()])
    kept = torch.cat([m.flatten() for m in mask.values()])
    assert score[~kept].max() <= score[kept].min()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k)


def test_mask_artifact_roundtrip_and_checks(net, tmp_path, tiny_cfg):
    mask = P.magnitude_prune(net, P.dense_mask(net), 0.2)
    P.save_mask(tmp_path / "m.safetensors", mask, {"round": 1, "parent": "dense", "config": {"fraction": 0.2}})
    loaded, meta = P.load_mask(tmp_path / "m.safetensors", net)
    assert all(torch.equal(loaded[n], mask[n]) for n in mask)
    assert meta["round"] == 1 and meta["config"] == {"fraction": 0.2}
    assert meta["effective_sparsity"] == pytest.approx(P.sparsity(mask))
    other = build_net(NetConfig(channels_down=16, channels_up=16, channels_skip=2, scales=3, in_channels=4))
    with pytest.raises(ValueError, match="shape"):
        P.load_mask(tmp_path / "m.safetensors", other)
    with pytest.raises(ValueError, match="missing"):
        P.load_mask(tmp_path / "m.safetensors", build_net(NetConfig(kind="decoder", decoder_channels=8)))


def test_mask_distance_is_the_fraction_of_weights_that_flip(net):
    a = P.dense_mask(net)
    b = P.magnitude_prune(net, a, 0.2)
    assert P.mask_distance(a, a) == 0.0
    assert P.mask_distance(a, b) == pytest.approx(P.sparsity(b))
    with pytest.raises(ValueError, match="does not fit"):
        P.mask_distance(a, {k: v for k, v in list(b.items())[1:]})
