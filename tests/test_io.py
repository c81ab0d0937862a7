import pickle
from pathlib import Path

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
    x_gray = torch.from_numpy(gray / 255.0).float()[None]
    assert torch.allclose(io.load_image(write(tmp_path, "l.png", gray)), x_gray)
    rgba = np.concatenate([rgb, np.full((10, 12, 1), 7, np.uint8)], axis=2)
    assert torch.equal(io.load_image(write(tmp_path, "rgba.png", rgba)), x)  # alpha dropped
    la = np.stack([gray, np.full_like(gray, 7)], axis=2)
    assert torch.allclose(io.load_image(write(tmp_path, "la.png", la, "LA")), x_gray)  # gray + alpha: 1 channel
    bits = rgb[..., 1] > 127
    assert torch.equal(io.load_image(write(tmp_path, "1.png", bits)), torch.from_numpy(bits).float()[None])
    # Palette images are looked up through their palette, not read as indices. A colour palette gives RGB,
    # an all-gray palette one channel.
    idx = rgb[..., 2] % 16
    colours = [(17 * i, 255 - 17 * i, (40 * i) % 256) for i in range(16)]
    p = Image.fromarray(idx, "P")
    p.putpalette([v for c in colours for v in c])
    p.save(tmp_path / "p.png")
    expected = np.asarray(colours, dtype=np.float64)[idx].transpose(2, 0, 1) / 255.0
    assert torch.allclose(io.load_image(tmp_path / "p.png"), torch.from_numpy(expected).float())
    p.putpalette([v for i in range(16) for v in (255 - 16 * i,) * 3])
    p.save(tmp_path / "pg.png")
    expected = torch.from_numpy((255 - 16 * idx.astype(np.float64)) / 255.0).float()[None]
    assert torch.allclose(io.load_image(tmp_path / "pg.png"), expected)
    # 16-bit: full precision on the 0..65535 scale (500 / 65535 steps, finer than 8 bits)
    deep = (np.arange(120, dtype=np.uint16).reshape(10, 12) * 500).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "16.png")
    x16 = io.load_image(tmp_path / "16.png")
    assert x16.shape == (1, 10, 12) and float(x16.max()) == pytest.approx(119 * 500 / 65535)
    assert torch.allclose(x16, torch.from_numpy(deep / 65535.0).float()[None], atol=1e-7)
    # float images keep their values, clipped to [0, 1]
    Image.fromarray(np.array([[-0.5, 0.25], [1.5, 0.75]], np.float32)).save(tmp_path / "f.tiff")
    assert torch.equal(io.load_image(tmp_path / "f.tiff"), torch.tensor([[[0.0, 0.25], [1.0, 0.75]]]))
    jpg = tmp_path / "a.jpg"
    Image.fromarray(rgb).save(jpg)
    decoded = np.asarray(Image.open(jpg).convert("RGB"), dtype=np.float64).transpose(2, 0, 1) / 255.0
    assert torch.allclose(io.load_image(jpg), torch.from_numpy(decoded).float())  # the decoded pixels


def test_channel_conversion_and_gray_detection(tmp_path):
    gray = np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)
    x_gray = torch.from_numpy(gray / 255.0).float()[None]
    x3 = io.load_image(write(tmp_path, "l.png", gray), channels=3)
    assert x3.shape == (3, 8, 8) and io.is_gray(x3)
    assert torch.allclose(x3, x_gray.expand(3, 8, 8))
    rgb_equal = np.stack([gray] * 3, axis=2)
    assert io.is_gray(io.load_image(write(tmp_path, "eq.png", rgb_equal)))
    # luma weights 0.299, 0.587, 0.114 sum to 1: an equal-channel image converts to its own gray values
    assert torch.allclose(io.load_image(write(tmp_path, "eq2.png", rgb_equal), channels=1), x_gray, atol=1e-6)
    # red, green, blue, white, and one mixed pixel, by hand with the BT.601 weights
    colour = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [51, 102, 204]]], np.uint8)
    c = io.load_image(write(tmp_path, "c.png", colour))
    assert not io.is_gray(c) and not io.is_gray(c[None]) and io.is_gray(c[:1])
    mixed = (0.299 * 51 + 0.587 * 102 + 0.114 * 204) / 255
    expected = torch.tensor([[[0.299, 0.587, 0.114, 1.0, mixed]]])
    assert torch.allclose(io.load_image(write(tmp_path, "c2.png", colour), channels=1), expected, atol=1e-6)
    assert torch.equal(io.load_image(tmp_path / "c.png", channels=3), c)
    with pytest.raises(ValueError, match="cannot turn"):
        io.load_image(tmp_path / "c.png", channels=2)


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
    # 37 -> 32 drops 5 rows: 2 on top, 3 below; 70 -> 64 drops 3 columns left and right
    assert torch.equal(c, x[:, 2:34, 3:67])
    with pytest.raises(ValueError, match="smaller"):
        io.center_crop(torch.zeros(1, 20, 40), 32)


def test_center_crop_to_an_exact_size():
    x = torch.arange(10 * 12).view(1, 10, 12)
    assert torch.equal(io.center_crop_to(x, 7, 9), x[:, 1:8, 1:10])  # 3 spare rows/cols: 1 before, 2 after
    assert torch.equal(io.center_crop_to(x, 4, 12), x[:, 3:7, :])
    assert torch.equal(io.center_crop_to(x, 10, 12), x)
    with pytest.raises(ValueError, match="cannot crop"):
        io.center_crop_to(x, 11, 12)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_load_mask_image_is_a_centre_cropped_binary_mask(tmp_path, mode):
    rng = np.random.default_rng(2)
    # white = known; mid-grays on either side of half-way test the threshold
    levels = np.array([0, 100, 155, 255], np.uint8)
    arr = levels[rng.integers(0, 4, (10, 12))]
    known = (arr > 127).astype(np.float32)
    img = arr if mode == "L" else np.stack([arr] * 3, axis=2)
    path = write(tmp_path, f"mask_{mode}.png", img)
    mask = io.load_mask_image(path, 7, 9)
    assert mask.shape == (7, 9) and mask.dtype == torch.float32
    assert torch.equal(mask, torch.from_numpy(known[1:8, 1:10]))  # rows 1..7, cols 1..9 of the 10 x 12 file
    assert 0 < float(mask.sum()) < mask.numel()
    with pytest.raises(ValueError, match="cannot crop"):
        io.load_mask_image(path, 11, 12)


def test_shipped_mask_image_loads_as_a_binary_mask():
    path = Path(__file__).resolve().parents[1] / "data" / "masks" / "kate_mask.png"
    arr = np.asarray(Image.open(path).convert("L"))
    mask = io.load_mask_image(path, 500, 510)
    assert mask.shape == (500, 510) and set(mask.unique().tolist()) == {0.0, 1.0}
    # 512 -> 500 rows: 6 above; 512 -> 510 columns: 1 to the left
    assert torch.equal(mask, torch.from_numpy((arr[6:506, 1:511] > 127).astype(np.float32)))


def test_png_roundtrip(tmp_path):
    x = torch.rand(3, 16, 8)
    io.save_png(x, tmp_path / "x.png")
    assert torch.allclose(io.load_image(tmp_path / "x.png"), x, atol=0.5 / 255 + 1e-6)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary behind
    # a batched gray image, out of range values clipped; 8 bits round to nearest: 0.3 * 255 = 76.5 -> 77
    g = torch.tensor([[[[-1.0, 0.3], [2.0, 1.0]]]])
    io.save_png(g, tmp_path / "g.png")
    assert np.asarray(Image.open(tmp_path / "g.png")).tolist() == [[0, 77], [255, 255]]


def test_state_roundtrip_and_shape_checks(tmp_path, tiny_cfg):
    net = build_net(tiny_cfg, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(2)
    for m in net.modules():  # BN running stats off their fresh 0 / 1, as after a fit
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1, generator=g)
            m.running_var.uniform_(0.5, 2, generator=g)
    io.save_state(tmp_path / "w.safetensors", net, {"round": 0})
    other = build_net(tiny_cfg, torch.Generator().manual_seed(1))
    a, b = net.state_dict(), other.state_dict()
    assert a.keys() == b.keys()
    assert not torch.equal(a["head.weight"], b["head.weight"])
    assert not torch.equal(a["levels.0.down.0.1.running_mean"], b["levels.0.down.0.1.running_mean"])
    meta = io.load_state(tmp_path / "w.safetensors", other)
    assert meta == {"round": 0}
    b = other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # parameters and buffers
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
