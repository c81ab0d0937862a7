"""Two methods of tests/test_methods.py, each what adding a method takes: its mask in a module of its own (here)
and one lipcore.methods.Method entry (registered by the test for its length, not in lipcore.methods.REGISTRY)."""

from __future__ import annotations

import torch

from lipcore import methods, prune


def flipped(m: methods.MaskInputs) -> prune.Mask:
    """LIP's mask read backwards within each layer: as many weights kept per layer, mostly other ones."""
    return {name: torch.flip(mask.flatten(), (0,)).reshape(mask.shape) for name, mask in m.reference.items()}


TOY = methods.Method(
    "toy",
    "LIP's mask read backwards within each layer (a test's method)",
    "baseline",
    "LIP > its mask read backwards",
    flipped,
    grid=True,
)

# LIP's own mask retrained from LIP's own start: the same fit as LIP's round, through the retraining helper
LIP_AGAIN = methods.Method(
    "lip_again", "LIP's mask retrained by evaluate (a test's method)", "baseline", None, methods.lip_mask
)
