"""Shared fixtures: tiny nets and real images from data/ so the suite runs in minutes on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lipcore import NetConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


@pytest.fixture(autouse=True)
def _threads_and_seed():
    torch.set_num_threads(2)
    # Tests that draw from the global generator must not depend on which tests ran before them.
    torch.manual_seed(0)


@pytest.fixture
def tiny_cfg() -> NetConfig:
    return NetConfig(channels_down=8, channels_up=8, channels_skip=2, scales=3, in_channels=4)


@pytest.fixture
def f16_small() -> torch.Tensor:
    from lipcore.io import center_crop_to, load_image

    return center_crop_to(load_image(DATA / "f16.png"), 32, 32)[None]


def tiny_params(**overrides) -> dict:
    """A pipeline small enough for seconds per stage: 32x32 images, 8 channels, a few iterations, 2 rounds."""
    params = {
        "sparsity": 0.3,
        "protocol": "blind",
        "device": "cpu",
        "seed": 0,
        "seeds": [0],
        "image_size": 32,
        "images": ["f16", "baby"],
        "tasks": ["denoise"],
        "task_defs": {
            "denoise": {"degradation": {"task": "denoise", "sigma": 0.1}, "fit": {"ema_weight": 0.9}},
            "inpaint": {"degradation": {"task": "inpaint", "keep": 0.5}, "fit": {"ema_weight": 0.0}},
        },
        "net": {"scales": 3, "in_channels": 4, "channels_down": 8, "channels_up": 8, "channels_skip": 2},
        "fit": {"iterations": 12, "log_every": 4, "es_window": 4, "es_patience": 4},
        "imp": {
            "fraction": 0.2,
            "scope": "global",
            "keep_input_dense": False,
            "rewind_iteration": 0,
            # short search fits: the pipeline's search-then-evaluate path runs in every stage test
            "search": {"iterations": 8, "early_bird": None, "early_bird_every": 4, "early_bird_patience": 2},
            "chain": [[1, 0], [2, 1]],
        },
        "evaluate": {"decoder_layers": 3, "curve_methods": ["random_global"]},
    }
    params.update(overrides)
    return params
