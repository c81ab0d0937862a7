"""Seeds derived from names, so that adding an image, task or round changes no other result."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(root: int, *names: object) -> int:
    """A 63-bit seed from the root seed and a path of names, e.g. derive_seed(0, "init", 1)."""
    text = "/".join([str(root), *(str(n) for n in names)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(root: int, *names: object) -> torch.Generator:
    """A CPU generator seeded with derive_seed(root, *names)."""
    return torch.Generator().manual_seed(derive_seed(root, *names))
