import pytest
import torch
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


@pytest.mark.parametrize("kind", ["skip", "decoder"])
def test_output_shape_and_range(kind, tiny_cfg):
    cfg = tiny_cfg if kind == "skip" else NetConfig(kind="decoder", decoder_channels=8)
    net = build_net(cfg, torch.Generator().manual_seed(0))
    z = make_input(net, 64, 96, torch.Generator().manual_seed(1))
    x = net(z)
    assert x.shape == (1, 3, 64, 96)
    assert 0 < x.min() and x.max() < 1
    assert 0 <= z.min() and z.max() < cfg.input_scale


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
    assert not all(torch.equal(a[k], c[k]) for k in a)


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
    from stages import artifacts

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
