import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipcore import NetConfig, build_net, count_parameters, make_input


def test_standard_skip_net_has_the_published_parameter_count():
    net = build_net(NetConfig())
    assert count_parameters(net) == 2_217_831
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 26
    assert sum(c.weight.numel() for c in convs) == 2_208_768
    assert sum(c.bias.numel() for c in convs) == 2_583
    assert sum(b.weight.numel() + b.bias.numel() for b in bns) == 6_480


@pytest.mark.parametrize("k, expected", [(64, 25_536), (128, 100_224)])
def test_deep_decoder_parameter_count(k, expected):
    net = build_net(NetConfig(kind="decoder", decoder_channels=k))
    assert count_parameters(net) == expected == 6 * k * k + 12 * k + 3 * k


def reference_skip(state, z, cfg):
    """DIP's skip net (models/skip.py) written out with functional ops from the state dict: per scale a skip
    branch (1x1 conv, BN, act) and a deeper branch (3x3 stride-2 conv, BN, act, 3x3 conv, BN, act, the next
    scale, bilinear x2 upsampling); Concat(skip, deeper), BN, 3x3 conv, BN, act, 1x1 conv, BN, act; finally
    a 1x1 conv and a sigmoid. Convs pad by reflection, BN normalises with the batch statistics (train mode),
    the activation is LeakyReLU(0.2)."""

    def conv(h, name, stride=1):
        w = state[f"{name}.weight"]
        pad = w.shape[-1] // 2
        if pad:
            h = F.pad(h, (pad, pad, pad, pad), mode="reflect")
        return F.conv2d(h, w, state.get(f"{name}.bias"), stride=stride)

    def bn(h, name):
        return F.batch_norm(h, None, None, state[f"{name}.weight"], state[f"{name}.bias"], training=True, eps=1e-5)

    def block(h, name, stride=1):
        return F.leaky_relu(bn(conv(h, f"{name}.0", stride), f"{name}.1"), 0.2)

    def scale(h, i):
        skip = block(h, f"levels.{i}.skip")
        deeper = block(block(h, f"levels.{i}.down.0", stride=2), f"levels.{i}.down.1")
        if i + 1 < cfg.scales:
            deeper = scale(deeper, i + 1)
        deeper = F.interpolate(deeper, scale_factor=2, mode="bilinear", align_corners=False)
        h = bn(torch.cat([skip, deeper], 1), f"levels.{i}.up.0")
        return block(block(h, f"levels.{i}.up.1"), f"levels.{i}.up.2")

    return torch.sigmoid(conv(scale(z, 0), "head"))


def reference_decoder(state, z, layers):
    """The deep decoder (Heckel & Hand 2019): per layer a bias-free 1x1 conv, bilinear x2 upsampling (all but
    the last layer), ReLU and BN; then a bias-free 1x1 conv and a sigmoid."""
    h = z
    for i in range(layers):
        h = F.conv2d(h, state[f"blocks.{i}.0.weight"])
        if i < layers - 1:
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        bn = f"blocks.{i}.{3 if i < layers - 1 else 2}"
        h = F.batch_norm(F.relu(h), None, None, state[f"{bn}.weight"], state[f"{bn}.bias"], training=True)
    return torch.sigmoid(F.conv2d(h, state["head.weight"]))


@pytest.mark.parametrize("kind", ["skip", "decoder"])
def test_forward_matches_a_functional_reference(kind, tiny_cfg):
    cfg = tiny_cfg if kind == "skip" else NetConfig(kind="decoder", decoder_channels=8, decoder_layers=4)
    net = build_net(cfg, torch.Generator().manual_seed(0))
    with torch.no_grad():  # BN affine parameters away from 1 / 0, so that a swapped BN shows
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(m.num_features))
                m.bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(m.num_features + 1))
    z = make_input(net, 64, 96, torch.Generator().manual_seed(1))
    # z ~ U[0, input_scale): 0.1 in DIP; the input has the net's own channel count and scale
    expected_z = (4, 64, 96) if kind == "skip" else (8, 8, 12)
    assert z.shape == (1, *expected_z)
    assert 0 <= z.min() and z.max() < cfg.input_scale
    assert z.max() > 0.99 * cfg.input_scale and float(z.mean()) == pytest.approx(cfg.input_scale / 2, rel=0.1)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    x = net(z)
    assert x.shape == (1, 3, 64, 96)
    ref = reference_skip(state, z, cfg) if kind == "skip" else reference_decoder(state, z, cfg.decoder_layers)
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-6)
    assert float(ref.std()) > 1e-3  # not a constant image that any wiring would reproduce


@pytest.mark.parametrize("kind", ["skip", "decoder"])
def test_sizes_not_divisible_are_rejected_with_a_hint(kind, tiny_cfg):
    cfg = tiny_cfg if kind == "skip" else NetConfig(kind="decoder", decoder_channels=8)
    net = build_net(cfg)
    with pytest.raises(ValueError, match="center-crop"):
        net.input_shape(37, 31)
    if kind == "skip":
        with pytest.raises(ValueError, match="not divisible"):
            net(torch.rand(1, cfg.in_channels, 36, 32))


def test_seeded_init_is_reproducible_and_seed_dependent(tiny_cfg):
    a = build_net(tiny_cfg, torch.Generator().manual_seed(3)).state_dict()
    b = build_net(tiny_cfg, torch.Generator().manual_seed(3)).state_dict()
    c = build_net(tiny_cfg, torch.Generator().manual_seed(4)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    convs = [n for n, m in build_net(tiny_cfg).named_modules() if isinstance(m, nn.Conv2d)]
    drawn = [f"{n}.{p}" for n in convs for p in ("weight", "bias")]
    assert len(drawn) == 2 * 16 and set(drawn) <= a.keys()
    assert all(not torch.equal(a[k], c[k]) for k in drawn)  # every conv weight and bias is a fresh draw


def test_init_is_pytorchs_default_conv_init_and_fresh_batchnorm(tiny_cfg):
    """DIP used nn.Conv2d's own init: kaiming_uniform(a=sqrt(5)), i.e. weights and biases U(-b, b) with
    b = 1 / sqrt(fan_in), fan_in = in_channels * k * k. BatchNorm: weight 1, bias 0, running stats 0 / 1."""
    net = build_net(tiny_cfg, torch.Generator().manual_seed(0))
    weights, biases = [], []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            bound = 1 / math.sqrt(m.in_channels * m.kernel_size[0] * m.kernel_size[1])
            weights.append(m.weight.detach().flatten() / bound)
            biases.append(m.bias.detach() / bound)
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
            assert torch.equal(m.running_var, torch.ones_like(m.running_var)) and int(m.num_batches_tracked) == 0
    w, b = torch.cat(weights), torch.cat(biases)
    # scaled by their bounds, all draws are U(-1, 1): inside the bound, filling it, mean 0, E[u^2] = 1/3
    assert w.numel() == 5584 and b.numel() == 3 * (2 + 8 + 8 + 8 + 8) + 3
    assert 0.99 < w.abs().max() <= 1 and 0.9 < b.abs().max() <= 1
    assert float(w.mean()) == pytest.approx(0.0, abs=0.03)
    assert float(w.square().mean()) == pytest.approx(1 / 3, rel=0.03)  # 5,584 draws: spread ~1.2%
    assert float(b.square().mean()) == pytest.approx(1 / 3, rel=0.3)  # 105 draws: spread ~9%


def test_input_layers_are_the_convs_that_read_z(tiny_cfg):
    net = build_net(tiny_cfg)
    params = dict(net.named_parameters())
    names = net.input_layers()
    assert len(names) == 2
    assert all(params[n].shape[1] == tiny_cfg.in_channels for n in names)
    readers = [n for n, p in params.items() if p.dim() == 4 and p.shape[1] == tiny_cfg.in_channels]
    assert sorted(readers) == sorted(names)


def test_convs_pad_by_reflection_as_dip_and_1x1_convs_copy_nothing():
    import torch.nn.functional as F

    net = build_net(NetConfig(channels_down=8, channels_up=8, channels_skip=2, scales=3, in_channels=4))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert {(m.kernel_size[0], m.padding_mode) for m in convs} == {(3, "reflect"), (1, "zeros")}
    conv = next(m for m in convs if m.kernel_size[0] == 3 and m.stride[0] == 1)
    x = torch.rand(1, conv.in_channels, 16, 16)
    dip = F.conv2d(torch.nn.ReflectionPad2d(1)(x), conv.weight, conv.bias)  # DIP: ReflectionPad2d, then conv
    torch.testing.assert_close(conv(x), dip)


@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_is_the_conv_it_replaces(bias):
    import torch.nn.functional as F

    from lipcore.nets import PointwiseConv2d

    conv = PointwiseConv2d(8, 3, 1, bias=bias)
    x = torch.rand(1, 8, 6, 5, requires_grad=True)
    out = conv(x)
    ref = F.conv2d(x, conv.weight, conv.bias)
    torch.testing.assert_close(out, ref)
    g = torch.rand_like(out)
    grads = torch.autograd.grad(out, [x, conv.weight], g)
    ref_grads = torch.autograd.grad(ref, [x, conv.weight], g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    channels_last = x.detach().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(conv(channels_last), ref.detach(), rtol=1e-5, atol=1e-6)
    batch = torch.rand(3, 8, 6, 5)  # several images: the conv path
    torch.testing.assert_close(conv(batch), F.conv2d(batch, conv.weight, conv.bias))


def test_building_learning_shapes_and_loading_states_draw_nothing_from_the_global_generator(tiny_cfg, tmp_path):
    from lipcore import io
    from lipcore.baselines import nonzero_parameters
    from lipcore.config import ImpConfig
    from lipcore.imp import next_mask
    from lipcore.nets import net_from_state, skeleton
    from lipcore.prune import dense_mask
    from stages.plumbing import artifacts

    before = torch.random.get_rng_state()
    net = build_net(tiny_cfg, torch.Generator().manual_seed(0))
    io.save_state(tmp_path / "w.safetensors", net)
    state = artifacts.load_weights(tmp_path / "w.safetensors", tiny_cfg)
    copy = net_from_state(tiny_cfg, state)
    mask = next_mask(tiny_cfg, state, None, ImpConfig())
    assert nonzero_parameters(tiny_cfg, dense_mask(net)) == count_parameters(net)
    assert all(p.is_meta for p in skeleton(tiny_cfg).parameters())
    assert torch.equal(torch.random.get_rng_state(), before)
    z = torch.rand(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(copy(z), net(z)) and mask.keys() == dense_mask(net).keys()
    copy.head.weight.data.zero_()  # the copy owns its tensors
    assert not torch.equal(state["head.weight"], copy.head.weight)
