import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from lipcore import build_net, io


def write(tmp_path, name, arr, mode=None):
    path = tmp_path / name
    img = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    img.save(path)
    return path


def test_loads_every_mode(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    x = io.load_image(write(tmp_path, "rgb.png", rgb))
    assert x.shape == (3, 10, 12) and x.dtype == torch.float32
    assert torch.allclose(x, torch.from_numpy(rgb.transpose(2, 0, 1) / 255.0).float())
    gray = rgb[..., 0]
    assert io.load_image(write(tmp_path, "l.png", gray)).shape == (1, 10, 12)
    rgba = np.concatenate([rgb, np.full((10, 12, 1), 7, np.uint8)], axis=2)
    assert torch.equal(io.load_image(write(tmp_path, "rgba.png", rgba)), x)  # alpha dropped
    p = Image.fromarray(rgb).convert("P")
    p.save(tmp_path / "p.png")
    assert io.load_image(tmp_path / "p.png").shape == (3, 10, 12)
    deep = (np.arange(120, dtype=np.uint16).reshape(10, 12) * 500).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "16.png")
    x16 = io.load_image(tmp_path / "16.png")
    assert x16.shape == (1, 10, 12) and float(x16.max()) == pytest.approx(119 * 500 / 65535)
    jpg = tmp_path / "a.jpg"
    Image.fromarray(rgb).save(jpg)
    assert io.load_image(jpg).shape == (3, 10, 12)


def test_channel_conversion_and_gray_detection(tmp_path):
    gray = np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)
    x3 = io.load_image(write(tmp_path, "l.png", gray), channels=3)
    assert x3.shape == (3, 8, 8) and io.is_gray(x3)
    rgb_equal = np.stack([gray] * 3, axis=2)
    assert io.is_gray(io.load_image(write(tmp_path, "eq.png", rgb_equal)))
    assert io.load_image(write(tmp_path, "eq2.png", rgb_equal), channels=1).shape == (1, 8, 8)


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        io.load_image(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read"):
        io.load_image(tmp_path / "junk.png")


def test_center_crop_to_multiple():
    x = torch.arange(37 * 70).view(1, 37, 70)
    c = io.center_crop(x, 32)
    assert c.shape == (1, 32, 64)
    assert int(c[0, 0, 0]) == int(x[0, 2, 3])
    with pytest.raises(ValueError, match="smaller"):
        io.center_crop(torch.zeros(1, 20, 40), 32)


def test_png_roundtrip(tmp_path):
    x = torch.rand(3, 16, 8)
    io.save_png(x, tmp_path / "x.png")
    assert torch.allclose(io.load_image(tmp_path / "x.png"), x, atol=0.5 / 255 + 1e-6)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary behind


def test_state_roundtrip_and_shape_checks(tmp_path, tiny_cfg):
    net = build_net(tiny_cfg, torch.Generator().manual_seed(0))
    io.save_state(tmp_path / "w.safetensors", net, {"round": 0})
    other = build_net(tiny_cfg, torch.Generator().manual_seed(1))
    meta = io.load_state(tmp_path / "w.safetensors", other)
    assert meta == {"round": 0}
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))
    from lipcore import NetConfig

    wider = build_net(NetConfig(channels_down=16, channels_up=16, channels_skip=2, scales=3, in_channels=4))
    with pytest.raises(ValueError, match="shape"):
        io.load_state(tmp_path / "w.safetensors", wider)


def test_pickles_are_never_loaded(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"w": Boom()}))
    with pytest.raises(ValueError, match="not a valid safetensors"):
        io.load_tensors(path)


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "stage"
    with io.atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with io.atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("second")
            raise RuntimeError("stage failed")
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]
