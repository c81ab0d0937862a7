"""Channel tickets (lipcore.channels): masks over output channels and the physically smaller net they leave."""

import pytest
import torch

from lipcore import FitConfig, NetConfig, build_net, count_parameters, fit, make_input
from lipcore import channels as C
from lipcore.config import DegradationConfig
from lipcore.nets import net_from_state, skeleton
from lipcore.physics import sample_operator
from lipcore.prune import round_count

SMALL = NetConfig(kind="skip", in_channels=8, scales=3, channels_down=8, channels_up=8, channels_skip=4)
# per-scale widths, one scale without a skip branch, one with a wider skip than up path
MIXED = NetConfig(
    kind="skip", in_channels=5, scales=3, channels_down=(8, 6, 7), channels_up=(6, 8, 5), channels_skip=(3, 0, 9)
)


def trained_like(cfg: NetConfig, seed: int) -> dict[str, torch.Tensor]:
    """A net's state with every BN gamma, beta and running statistic moved off its init (beta 0 at init would hide
    a BN entry left unsliced or unzeroed)."""
    g = torch.Generator().manual_seed(seed)
    state = build_net(cfg, g).state_dict()
    for key, t in state.items():
        if key.endswith("running_var"):
            t.uniform_(0.5, 2.0, generator=g)
        elif t.dim() == 1:  # conv biases, BN gamma / beta / running_mean
            t.add_(torch.randn(t.shape, generator=g))
        elif key.endswith("num_batches_tracked"):
            t.fill_(7)
    return state


def random_channel_mask(cfg: NetConfig, share: float, seed: int) -> C.ChannelMask:
    """In every layer, round_count(share, n) channels chosen at random removed (at least one kept)."""
    g = torch.Generator().manual_seed(seed)
    mask = C.dense_channel_mask(skeleton(cfg))
    for m in mask.values():
        m[torch.randperm(m.numel(), generator=g)[: min(round_count(share, m.numel()), m.numel() - 1)]] = False
    return mask


def test_every_conv_but_the_head_is_prunable_and_a_scale_without_skip_has_no_skip_entry():
    net = skeleton(MIXED)
    mask = C.dense_channel_mask(net)
    convs = [n for n, p in net.named_parameters() if p.dim() == 4]
    assert list(mask) == [n for n in convs if n != "head.weight"]
    assert "levels.1.skip.0.weight" not in mask and "levels.2.skip.0.weight" in mask
    assert {n: m.numel() for n, m in mask.items()} == {n: p.shape[0] for n, p in net.named_parameters() if n in mask}


@pytest.mark.parametrize("cfg", [SMALL, MIXED], ids=["small", "mixed-widths-no-skip"])
@pytest.mark.parametrize("size", [(32, 32), (32, 64)])
def test_ticket_computes_what_the_full_net_with_its_channels_zeroed_computes(cfg, size):
    state = trained_like(cfg, seed=1)
    mask = random_channel_mask(cfg, 0.4, seed=2)
    assert all(0 < int(m.sum()) < m.numel() for m in mask.values())  # every layer really pruned
    z = torch.rand(2, cfg.in_channels, *size, generator=torch.Generator().manual_seed(3))
    small = C.materialise(cfg, state, mask)
    full = net_from_state(cfg, C.zeroed_state(cfg, state, mask))
    assert count_parameters(small) < count_parameters(full)
    for mode in ("train", "eval"):  # eval: the sliced running statistics are used
        small.train(mode == "train")
        full.train(mode == "train")
        with torch.no_grad():
            torch.testing.assert_close(small(z), full(z), atol=1e-5, rtol=0)
    # Each zeroing is needed. The concat BN's entries show it in eval mode only: in training mode a constant channel
    # (its beta) adds a constant per channel of up.1, which up.1's own BN subtracts again.
    for part, mode in ((".up.0.", "eval"), ("levels.0.up.2.1.", "train")):  # up.2's BN: the head has no BN after it
        unzeroed = C.zeroed_state(cfg, state, mask)
        for key in unzeroed:
            if part in key and key.endswith(("weight", "bias")):
                unzeroed[key] = state[key]
        full = net_from_state(cfg, unzeroed).train(mode == "train")
        small.train(mode == "train")
        with torch.no_grad():
            assert (small(z) - full(z)).abs().max() > 1e-3, part


def test_the_dense_mask_materialises_the_full_net_itself():
    state = trained_like(SMALL, seed=4)
    full = net_from_state(SMALL, state)
    small = C.materialise(SMALL, state, C.dense_channel_mask(full))
    assert count_parameters(small) == count_parameters(full) == C.kept_parameters(SMALL, C.dense_channel_mask(full))
    z = make_input(full, 32, 64, torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(small(z), full(z))
    assert {k: v.shape for k, v in small.state_dict().items()} == {k: v.shape for k, v in state.items()}


def test_kept_parameters_counts_a_hand_made_ticket():
    cfg = NetConfig(
        kind="skip", in_channels=2, out_channels=3, scales=1, channels_down=3, channels_up=2, channels_skip=1
    )
    mask = {
        "levels.0.skip.0.weight": torch.tensor([True]),
        "levels.0.down.0.0.weight": torch.tensor([True, False, True]),
        "levels.0.down.1.0.weight": torch.tensor([False, True, False]),
        "levels.0.up.1.0.weight": torch.tensor([False, True]),
        "levels.0.up.2.0.weight": torch.tensor([True, True]),
    }
    by_hand = (
        (1 * 2 * 1 + 1 + 2)  # skip: 2 z channels -> 1, bias, BN
        + (2 * 2 * 9 + 2 + 4)  # down.0: 2 -> 2 (3x3)
        + (1 * 2 * 9 + 1 + 2)  # down.1: 2 -> 1
        + 2 * 2  # up.0: BN over [1 skip, 1 down] channels
        + (1 * 2 * 9 + 1 + 2)  # up.1: 2 -> 1
        + (2 * 1 * 1 + 2 + 4)  # up.2: 1 -> 2 (1x1)
        + (3 * 2 + 3)  # head: 2 -> 3
    )
    small = C.materialise(cfg, trained_like(cfg, seed=0), mask)
    assert C.kept_parameters(cfg, mask) == sum(p.numel() for p in small.parameters()) == by_hand == 110
    for cfg_, seed in ((SMALL, 6), (MIXED, 7)):
        mask = random_channel_mask(cfg_, 0.4, seed)
        assert C.kept_parameters(cfg_, mask) == count_parameters(C.materialise(cfg_, skeleton(cfg_).state_dict(), mask))


def test_prune_channels_removes_its_share_of_each_layer_by_l1_norm_and_never_empties_one():
    state = trained_like(MIXED, seed=8)
    scores = C.channel_scores(state, MIXED)
    w = state["levels.0.down.1.0.weight"]
    torch.testing.assert_close(scores["levels.0.down.1.0.weight"], torch.stack([w[o].abs().sum() for o in range(8)]))
    mask = C.dense_channel_mask(skeleton(MIXED))
    for _ in range(12):
        new = C.prune_channels(scores, mask)
        for n in mask:
            alive = int(mask[n].sum())
            assert alive - int(new[n].sum()) == round_count(0.2, alive)
            assert not bool((new[n] & ~mask[n]).any())  # monotone: nothing comes back
            kept_scores, gone_scores = scores[n][new[n]], scores[n][mask[n] & ~new[n]]
            if gone_scores.numel():
                assert gone_scores.max() <= kept_scores.min()  # the smallest L1 norms went
        mask = new
    assert all(int(m.sum()) >= 1 for m in mask.values())
    # at a large fraction the floor of one channel binds: 0.9 of 3 would be 3
    one = C.prune_channels({"a.weight": torch.ones(3)}, {"a.weight": torch.ones(3, dtype=torch.bool)}, 0.9)
    assert one["a.weight"].tolist() == [False, False, True]


def test_prune_channels_breaks_ties_by_position_and_is_a_function_of_the_weights():
    scores = {"a.weight": torch.tensor([2.0, 1.0, 1.0, 1.0, 3.0, 1.0, 5.0, 4.0, 6.0, 7.0])}
    mask = {"a.weight": torch.ones(10, dtype=torch.bool)}
    once = C.prune_channels(scores, mask)  # 2 of 10 go: the first two of the four tied 1.0s
    assert once["a.weight"].tolist() == [True, False, False, True, True, True, True, True, True, True]
    twice = C.prune_channels(scores, once)  # round_count(0.2, 8) = 2: the next two 1.0s
    assert twice["a.weight"].tolist() == [True, False, False, False, True, False, True, True, True, True]
    assert torch.equal(C.prune_channels(scores, mask)["a.weight"], once["a.weight"])


def test_a_ticket_halving_every_layer_costs_about_a_quarter_of_the_flops():
    cfg = NetConfig(kind="skip", in_channels=4, scales=3, channels_down=16, channels_up=16, channels_skip=4)
    state = trained_like(cfg, seed=9)
    dense = C.dense_channel_mask(skeleton(cfg))
    half = C.prune_channels(C.channel_scores(state, cfg), dense, 0.5)
    assert all(int(m.sum()) * 2 == m.numel() for m in half.values())
    z = torch.rand(1, cfg.in_channels, 32, 32)
    full = net_from_state(cfg, state)
    before = {k: v.clone() for k, v in full.state_dict().items()}
    f_dense = C.flops_per_iteration(full, z)
    assert all(torch.equal(v, before[k]) for k, v in full.state_dict().items())  # BN statistics put back
    assert all(p.grad is None for p in full.parameters())
    f_dense_small = C.flops_per_iteration(C.materialise(cfg, state, dense), z)
    f_half = C.flops_per_iteration(C.materialise(cfg, state, half), z)
    f_one_round = C.flops_per_iteration(
        C.materialise(cfg, state, C.prune_channels(C.channel_scores(state, cfg), dense)), z
    )
    assert f_dense == f_dense_small > f_one_round > f_half
    # the convs between two halved layers cost exactly a quarter; z's convs and the head a half: the total lies between
    assert 0.25 < f_half / f_dense < 0.35


def test_a_ticket_trains_with_fit_and_starts_from_the_sliced_rewind_weights(f16_small):
    g = torch.Generator().manual_seed(10)
    rewind = build_net(SMALL, g).state_dict()
    mask = random_channel_mask(SMALL, 0.4, seed=11)
    small = C.materialise(SMALL, rewind, mask)
    start = C.rewind_state(SMALL, rewind, mask)
    assert all(torch.equal(v, start[k]) for k, v in small.state_dict().items())
    z = make_input(small, 32, 32, g)
    assert z.shape == (1, SMALL.in_channels, 32, 32)
    op = sample_operator(DegradationConfig(task="denoise"), f16_small.shape[1:], g)
    cfg = FitConfig(iterations=12, log_every=4, es_window=4, es_patience=8, precision="fp32")
    res = fit(small, z, op, op.observe(f16_small, g), cfg, x_true=f16_small, device="cpu")
    assert res.iterations == 12 and res.x_last.shape == f16_small.shape
    assert not torch.equal(small.state_dict()["levels.0.down.0.0.weight"], start["levels.0.down.0.0.weight"])
    assert res.history["loss"][-1] < res.history["loss"][0]


def test_materialise_keeps_the_device_of_the_state_meta_included():
    mask = random_channel_mask(MIXED, 0.4, seed=12)
    on_meta = C.materialise(MIXED, skeleton(MIXED).state_dict(), mask)
    on_cpu = C.materialise(MIXED, trained_like(MIXED, seed=12), mask)
    assert {p.device.type for p in on_meta.state_dict().values()} == {"meta"}
    assert {k: v.shape for k, v in on_meta.state_dict().items()} == {k: v.shape for k, v in on_cpu.state_dict().items()}
    assert on_meta(torch.empty(1, MIXED.in_channels, 16, 24, device="meta")).shape == (1, 3, 16, 24)


def test_masks_and_states_that_do_not_fit_are_refused():
    mask = C.dense_channel_mask(skeleton(SMALL))
    state = skeleton(SMALL).state_dict()
    empty = dict(mask, **{"levels.1.up.1.0.weight": torch.zeros(8, dtype=torch.bool)})
    with pytest.raises(ValueError, match="keeps no channel"):
        C.materialise(SMALL, state, empty)
    with pytest.raises(ValueError, match="missing"):
        C.kept_parameters(SMALL, {k: v for k, v in mask.items() if "skip" not in k})
    with pytest.raises(ValueError, match="state does not fit"):
        C.slice_state(MIXED, state, C.dense_channel_mask(skeleton(MIXED)))
    with pytest.raises(ValueError, match="skip net"):
        C.dense_channel_mask(skeleton(NetConfig(kind="decoder")))


def test_a_trained_tickets_scores_are_its_filters_norms_at_their_places_in_the_full_net():
    """The next round ranks a ticket's own trained filters: with nothing pruned, ticket_scores are channel_scores;
    pruned, each layer's kept scores sum to its small conv's L1 norm in mask order, and the pruned ones are 0."""
    state = trained_like(MIXED, 3)
    dense = C.dense_channel_mask(skeleton(MIXED))
    same = C.ticket_scores(MIXED, C.materialise(MIXED, state, dense).state_dict(), dense)
    full = C.channel_scores(state, MIXED)
    assert all(torch.equal(same[n], full[n]) for n in dense)
    mask = random_channel_mask(MIXED, 0.4, 4)
    small = C.materialise(MIXED, state, mask).state_dict()
    got = C.ticket_scores(MIXED, small, mask)
    for name, kept in mask.items():
        norms = small[name].abs().sum(dim=(1, 2, 3))
        assert torch.allclose(got[name][kept], norms) and bool((got[name][~kept] == 0).all()), name
    again = C.prune_channels(got, mask, 0.2)  # the next round removes alive channels only
    assert all(bool((again[n] <= mask[n]).all()) for n in mask)
