"""IMP on the generator: 20% of the remaining conv weights per round, rewinding to the pretrained weights, and
distillation that lowers its loss while holding pruned weights at zero."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lipcore import gan, gan_prune
from lipcore.prune import count_kept, count_total, dense_mask, magnitude_prune, prunable, sparsity


@pytest.fixture(scope="module")
def pretrained() -> gan.DCGANGenerator:
    pytest.importorskip("gan_face_generate", reason=f"the generator's weights come from the wheel: {gan.INSTALL}")
    return gan.load_pretrained()


_TORCH_OPTIM = str(Path(torch.optim.__file__).parent)


def _in_torch_optim(frame) -> bool:
    return frame.f_code.co_filename.startswith(_TORCH_OPTIM)


def _tiny_generator() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 12), nn.Unflatten(1, (3, 2, 2)), nn.ConvTranspose2d(3, 2, 3), nn.Tanh())


@pytest.mark.parametrize("steps", [3, 9])
def test_distillation_reads_the_host_once_and_copies_latents_by_the_block(monkeypatch, steps):
    """On a GPU every float() of a loss and every CPU -> device copy of a step's latents waits for the device:
    the losses are read once at the end, and the latents (drawn on the CPU) go over LATENT_BLOCK steps at a time."""
    teacher, student = _tiny_generator(), _tiny_generator()
    mask = magnitude_prune(student, dense_mask(student), 0.3, "global")
    monkeypatch.setattr(gan_prune, "LATENT_BLOCK", 4, raising=False)
    counts = {"reads": 0, "copies": 0}

    def spy(name, key):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, **kwargs):
            # not torch.optim's reads: Adam keeps its step counts on the CPU on every device (a read there waits
            # for nothing)
            counts[key] += not _in_torch_optim(sys._getframe(1))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    for name in ("__float__", "item", "tolist", "__bool__"):
        spy(name, "reads")
    spy("to", "copies")
    gan_prune.distill(student, teacher, mask, gan_prune.DistillConfig(steps=0), 5, torch.Generator())
    setup = dict(counts)  # what distill copies and reads before its first step (the mask, to the weights)
    cfg = gan_prune.DistillConfig(steps=steps, batch=3, lr=1e-2)
    losses = gan_prune.distill(student, teacher, mask, cfg, 5, torch.Generator().manual_seed(3))
    monkeypatch.undo()  # (LATENT_BLOCK too: read it before)
    assert len(losses) == steps and all(isinstance(v, float) for v in losses)
    assert counts["reads"] - 2 * setup["reads"] == 1
    assert counts["copies"] - 2 * setup["copies"] == -(-steps // 4)  # one copy per block


def test_rounds_remove_20_percent_of_the_remaining_conv_weights(pretrained):
    first = gan_prune.next_mask(pretrained, None)
    assert count_total(first) == gan.CONV_WEIGHTS
    assert count_kept(first) == gan.CONV_WEIGHTS - round(0.2 * gan.CONV_WEIGHTS)
    second = gan_prune.next_mask(pretrained, first)
    assert sparsity(second) == pytest.approx(1 - 0.8**2, abs=1e-6)


def test_a_round_starts_from_the_pretrained_weights_with_the_mask(pretrained):
    mask = gan_prune.next_mask(pretrained, None)
    net = gan_prune.rewound(pretrained, mask)
    for name, w in prunable(net).items():
        original = prunable(pretrained)[name]
        assert torch.equal(w, original * mask[name])
    assert torch.equal(prunable(pretrained)["main.0.weight"], pretrained.main[0].weight)  # not touched


def test_distillation_lowers_its_loss_and_keeps_pruned_weights_at_zero(pretrained):
    mask = gan_prune.next_mask(pretrained, gan_prune.next_mask(pretrained, None))
    student = gan_prune.rewound(pretrained, mask)
    held_out = torch.randn(16, gan.LATENT_DIM, generator=torch.Generator().manual_seed(99))

    def gap() -> float:
        with torch.no_grad():
            return float((student(held_out) - pretrained(held_out)).square().mean())

    before = gap()
    cfg = gan_prune.DistillConfig(steps=5, batch=16, lr=1e-4)
    losses = gan_prune.distill(student, pretrained, mask, cfg, gan.LATENT_DIM, torch.Generator().manual_seed(0))
    assert len(losses) == 5 and gap() < before
    for name, w in prunable(student).items():
        assert not w[~mask[name]].any()
