"""IMP on the generator: 20% of the remaining conv weights per round, rewinding to the pretrained weights, and
distillation that lowers its loss while holding pruned weights at zero."""

from __future__ import annotations

import pytest
import torch

from lipcore import gan, gan_prune
from lipcore.prune import count_kept, count_total, prunable, sparsity

pytest.importorskip("gan_face_generate", reason=f"the generator's weights come from the wheel: {gan.INSTALL}")


@pytest.fixture(scope="module")
def pretrained() -> gan.DCGANGenerator:
    return gan.load_pretrained()


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
