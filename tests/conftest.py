"""Shared fixtures: tiny nets and real images from data/ so the suite runs in minutes on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lipcore import NetConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def tiny_cfg() -> NetConfig:
    return NetConfig(channels_down=8, channels_up=8, channels_skip=2, scales=3, in_channels=4)


@pytest.fixture
def f16_small() -> torch.Tensor:
    from lipcore.io import center_crop_to, load_image

    return center_crop_to(load_image(DATA / "f16.png"), 32, 32)[None]
