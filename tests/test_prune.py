import pytest
import torch

from lipcore import NetConfig, build_net
from lipcore import prune as P
from lipcore.imp import sparsity_report


@pytest.fixture
def net(tiny_cfg):
    return build_net(tiny_cfg, torch.Generator().manual_seed(0))


def test_prunable_weights_are_exactly_the_conv_weights(net):
    names = list(P.prunable(net))
    assert names and all(n.endswith(".weight") for n in names)
    assert all(net.get_parameter(n).dim() == 4 for n in names)
    assert not any(n.endswith("bias") for n in names)
    assert len(names) == sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())


def test_round_count_rounds_half_up():
    # exact binary fractions, so the products are exact: x.5 goes up (Python's round() would go to even)
    assert [P.round_count(f, n) for f, n in [(0.5, 5), (0.25, 10), (0.25, 6), (0.125, 12)]] == [3, 3, 2, 2]
    assert [P.round_count(f, n) for f, n in [(0.2, 7), (0.2, 8), (0.0, 9), (1.0, 9)]] == [1, 2, 0, 9]


def test_counts_sparsity_and_mask_distance_by_hand():
    a = {"w": torch.tensor([True, True, False, False]), "v": torch.tensor([[True, False], [True, True]])}
    b = {"w": torch.tensor([True, False, True, False]), "v": torch.tensor([[True, False], [False, True]])}
    assert P.count_total(a) == 8 and P.count_kept(a) == 5 and P.count_kept(b) == 4
    assert P.sparsity(a) == pytest.approx(3 / 8) and P.sparsity(b) == pytest.approx(4 / 8)
    assert P.mask_distance(a, b) == pytest.approx(3 / 8) == P.mask_distance(b, a)  # w differs twice, v once
    assert P.mask_distance(a, a) == 0.0
    assert not P.is_monotone(a, b)  # b keeps w[2], which a removed
    child = {"w": torch.tensor([True, False, False, False]), "v": torch.tensor([[False, False], [True, True]])}
    assert P.is_monotone(a, child) and P.is_monotone(b, child) is False  # child keeps v[1, 0]; b removed it


def test_global_magnitude_pruning_removes_the_exact_count_and_the_smallest(net):
    mask = P.dense_mask(net)
    total = P.count_total(mask)
    new = P.magnitude_prune(net, mask, 0.2)
    assert total == 5584  # the tiny net's 16 conv weights, counted by hand from its channels
    assert total - P.count_kept(new) == 1117  # 0.2 * 5584 = 1116.8
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
        assert not any(bool((new[n] & ~mask[n]).any()) for n in mask)  # nothing removed comes back
        assert alive - P.count_kept(new) == P.round_count(0.2, alive)
        # among the survivors, the smallest of the new weights went
        w = torch.cat([p.detach().abs().flatten() for p in P.prunable(net).values()])
        was, now = torch.cat([m.flatten() for m in mask.values()]), torch.cat([m.flatten() for m in new.values()])
        assert w[was & ~now].max() <= w[now].min()
        assert P.sparsity(new) == pytest.approx(1 - 0.8**k, abs=1e-3)  # 20% of the remaining, k times
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
    weights = P.prunable(net)
    removed = {n: m.numel() - int(m.sum()) for n, m in new.items()}
    # by hand: 0.2 * (8, 16, 24, 64, 288, 576, 720) = 1.6, 3.2, 4.8, 12.8, 57.6, 115.2, 144
    by_size = {8: 2, 16: 3, 24: 5, 64: 13, 288: 58, 576: 115, 720: 144}
    assert removed == {n: by_size[m.numel()] for n, m in new.items()}
    for n, m in new.items():  # within each layer, the smallest go
        w = weights[n].detach().abs()
        assert w[~m].max() <= w[m].min()
    # a global ranking would have removed other counts: the scope is honoured
    glob = P.magnitude_prune(net, P.dense_mask(net), 0.2)
    assert removed != {n: m.numel() - int(m.sum()) for n, m in glob.items()}
    with pytest.raises(ValueError, match="scope"):
        P.magnitude_prune(net, P.dense_mask(net), 0.2, scope="net")


def test_keep_input_dense_is_paper_compatible(net):
    dense_layers = net.input_layers()
    new = P.magnitude_prune(net, P.dense_mask(net), 0.2, dense_layers=dense_layers)
    # ranked with the rest, then kept dense: exactly the global mask with those layers set back to all-kept,
    # so the weights they would have lost are simply not removed (nobody else is removed in their place)
    glob = P.magnitude_prune(net, P.dense_mask(net), 0.2)
    for n in new:
        assert torch.equal(new[n], torch.ones_like(glob[n]) if n in dense_layers else glob[n])
    spared = sum(int((~glob[n]).sum()) for n in dense_layers)
    assert spared > 0  # the input layers do lose weights in the global ranking: the test has something to see
    assert P.count_total(new) - P.count_kept(new) == 1117 - spared
    rep = sparsity_report(new, 0.2, 1)
    assert rep.nominal == pytest.approx(0.2) and rep.effective == pytest.approx((1117 - spared) / 5584)


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
    other = P.random_mask(net, 0.67, torch.Generator().manual_seed(1))
    assert not all(torch.equal(m[n], other[n]) for n in m)
    assert {n: t.shape for n, t in m.items()} == {n: p.shape for n, p in P.prunable(net).items()}
    # uniform over all weights: the big layers lose close to 67% each (576 weights: spread ~2%)
    assert all(abs(1 - float(t.float().mean()) - 0.67) < 0.1 for t in m.values() if t.numel() >= 576)


def test_apply_mask_zeroes_exactly_the_pruned_weights(net):
    mask = P.random_mask(net, 0.5, torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in P.prunable(net).items()}
    P.apply_mask(net, mask)
    for n, p in P.prunable(net).items():
        assert torch.equal(p.detach(), torch.where(mask[n], before[n], torch.zeros_like(before[n])))
    assert all(bool((before[n] != 0).all()) for n in before)  # so a zero above is the mask's doing


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


def _snip_loss(net):
    from lipcore.nets import make_input

    z = make_input(net, 32, 32, torch.Generator().manual_seed(0))
    y = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return lambda model: (model(z) - y).pow(2).mean()


def test_iterative_snip_in_one_step_is_snip(net):
    loss_fn = _snip_loss(net)
    one, snip = P.snip_iterative_mask(net, loss_fn, 0.6, steps=1), P.snip_mask(net, loss_fn, 0.6)
    assert all(torch.equal(one[n], snip[n]) for n in snip)


def test_iterative_snip_removes_the_exact_count_and_leaves_the_net_alone(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    mask = P.snip_iterative_mask(net, _snip_loss(net), 0.9, steps=5)
    total = P.count_total(mask)
    assert total - P.count_kept(mask) == P.round_count(0.9, total)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="at least 1 step"):
        P.snip_iterative_mask(net, _snip_loss(net), 0.5, steps=0)


def test_iterative_snip_rescored_after_each_step_differs_from_one_shot(net):
    loss_fn = _snip_loss(net)
    iterative, one_shot = P.snip_iterative_mask(net, loss_fn, 0.9, steps=5), P.snip_mask(net, loss_fn, 0.9)
    assert P.mask_distance(iterative, one_shot) > 0


def test_collapsed_layers_names_the_layers_with_no_weight_left(net):
    mask = P.dense_mask(net)
    first, second = list(mask)[:2]
    mask[first] = torch.zeros_like(mask[first])
    mask[second][0] = False
    assert P.collapsed_layers(mask) == [first]
    assert P.collapsed_layers(P.dense_mask(net)) == []


def test_keep_top_like_keeps_the_references_count_per_layer_by_score(net):
    scores = P.snip_scores(net, _snip_loss(net))
    reference = P.random_mask(net, 0.7, torch.Generator().manual_seed(3))
    mask = P.keep_top_like(scores, reference)
    for name in reference:
        assert int(mask[name].sum()) == int(reference[name].sum())
        kept, cut = scores[name][mask[name]], scores[name][~mask[name]]
        assert cut.numel() == 0 or kept.numel() == 0 or cut.max() <= kept.min()
