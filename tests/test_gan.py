"""The pretrained DCGAN face generator: its published size, the real weights file, plausible output, refusals."""

from __future__ import annotations

import shutil

import pytest
import torch

from lipcore import gan

pytest.importorskip("gan_face_generate", reason=f"the generator's weights come from the wheel: {gan.INSTALL}")


@pytest.fixture(scope="module")
def generator() -> gan.DCGANGenerator:
    return gan.load_pretrained()


def test_the_architecture_has_the_published_conv_weight_count():
    net = gan.DCGANGenerator()
    assert sum(w.numel() for w in net.conv_weights().values()) == gan.CONV_WEIGHTS == 3_574_784
    assert list(net.conv_weights()) == [f"main.{i}.weight" for i in (0, 3, 6, 9, 12)]


def test_the_real_weights_make_plausible_images(generator):
    z = torch.randn(4, gan.LATENT_DIM, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = generator(z)
    assert x.shape == (4, 3, 64, 64)
    assert -1.0 <= x.min() and x.max() <= 1.0 and x.min() < -0.5 and x.max() > 0.5  # uses the Tanh range
    assert (x.std(dim=(2, 3)) > 0.05).all()  # structure, not a flat image
    assert (x[0] - x[1]).abs().mean() > 0.1  # the latent matters
    # recorded from this file on an AVX2 CPU; a changed file or architecture moves it far beyond rounding
    assert float(x.double().sum()) == pytest.approx(-16395.4205, abs=0.05)


def test_a_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setattr(gan.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps gan-face-generate==1\.1\.1"):
        gan.weights_path()


def test_an_altered_weights_file_is_refused(tmp_path):
    copy = tmp_path / "weights.tar"
    shutil.copy(gan.weights_path(), copy)
    data = bytearray(copy.read_bytes())
    data[-100] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is not the weights file of gan-face-generate==1.1.1"):
        gan.load_pretrained(copy)


def test_the_safetensors_copy_makes_the_same_images(generator, tmp_path):
    gan.save_generator(tmp_path / "g.safetensors", generator, {"source": gan.PACKAGE})
    copy = gan.load_generator(tmp_path / "g.safetensors")
    z = torch.randn(2, gan.LATENT_DIM, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(copy(z), generator(z))


def test_a_generator_file_with_a_wrong_shape_conv_is_refused_naming_the_tensor(tmp_path):
    state = gan.DCGANGenerator().state_dict()
    state["main.3.weight"] = torch.zeros(512, 128, 4, 4)  # 512 -> 128 where the architecture has 512 -> 256
    from lipcore.io import save_tensors

    save_tensors(tmp_path / "g.safetensors", state, {"round": 1})
    with pytest.raises(
        ValueError,
        match=r"g\.safetensors: generator weights 'main\.3\.weight' has shape \(512, 128, 4, 4\), the net has "
        r"\(512, 256, 4, 4\)",
    ):
        gan.load_generator(tmp_path / "g.safetensors")
    del state["main.3.weight"]
    save_tensors(tmp_path / "g.safetensors", state, {"round": 1})
    with pytest.raises(ValueError, match=r"generator weights does not fit this net: missing \['main\.3\.weight'\]"):
        gan.load_generator(tmp_path / "g.safetensors")


def test_test_faces_are_read_in_the_generators_range(tmp_path):
    from tests.conftest import ROOT

    x = gan.face_image(ROOT / "data" / "faces" / "lenna.png")
    assert x.shape == (3, 64, 64) and -1 <= x.min() < 0 < x.max() <= 1
    from PIL import Image

    Image.new("RGB", (65, 64)).save(tmp_path / "wide.png")
    with pytest.raises(ValueError, match=r"wide\.png is 65x64; the generator's test faces must be 64x64"):
        gan.face_image(tmp_path / "wide.png")


def test_in_range_images_come_from_the_generator(generator):
    a = gan.in_range_images(generator, 3, torch.Generator().manual_seed(7))
    b = gan.in_range_images(generator, 3, torch.Generator().manual_seed(7))
    assert a.shape == (3, 3, 64, 64) and torch.equal(a, b)
