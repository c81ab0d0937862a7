"""lipcore.members: the engine choice, and the vmap engine's stacked forward equal to each net's own."""

import contextlib

import pytest
import torch

from lipcore.config import NetConfig
from lipcore.members import choose_engine, make_engine
from lipcore.nets import build_net
from lipcore.prune import random_mask

TINY = NetConfig(in_channels=4, scales=2, channels_down=4, channels_up=4, channels_skip=2)


def test_auto_stacks_nets_on_cuda_only_and_one_net_is_always_sequential():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_engine("auto", 4, cpu) == "sequential"  # grouped convolutions lose on CPU (bench/README.md)
    assert choose_engine("auto", 4, cuda) == "vmap"
    assert choose_engine("vmap", 1, cuda) == "sequential"  # nothing to stack
    assert choose_engine("vmap", 3, cpu) == "vmap"  # forced
    with pytest.raises(ValueError, match="engine must be one of"):
        choose_engine("grouped", 2, cpu)


def test_the_vmap_engine_gives_each_member_its_own_nets_output_and_masked_weights_stay_zero():
    nets = [build_net(TINY, torch.Generator().manual_seed(s)) for s in (0, 1)]
    for net in nets:
        net.eval()  # BatchNorm from running statistics: the plain forward is comparable member by member
    mask = random_mask(nets[1], 0.5, torch.Generator().manual_seed(2))
    zs = [torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3 + s)) for s in (0, 1)]
    engine = make_engine("vmap", nets, [None, mask])
    for net in engine.nets + [engine.base]:
        net.eval()

    def objective(members, x):
        per_image = x.pow(2).mean(dim=(-3, -2, -1))
        return per_image, per_image.sum()

    x, _ = engine.forward_backward(zs, objective, contextlib.nullcontext())
    with torch.no_grad():
        expected = [net(z) for net, z in zip(nets, zs)]  # nets[1] already carries the mask (applied by the engine)
    for i in range(
        2
    ):  # grouped and plain convolutions sum in other orders (per CPU kernel); a mixed-up member is ~0.1 off
        torch.testing.assert_close(x[i], expected[i], rtol=1e-4, atol=1e-5)
    kept = engine.state_dict(1)
    assert all(not kept[name][~m].any() for name, m in mask.items())
