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


@pytest.fixture(scope="module")
def gan_chain(tmp_path_factory):
    """GAN rounds r0-r2 as gan_prepare / gan_imp_round write them (LIP's files only; no random control), of a
    randomly initialised generator: no distillation, the files are under test, not the training."""
    from lipcore import io, prune
    from lipcore.gan_prune import next_mask
    from stages.plumbing import layout

    rounds = tmp_path_factory.mktemp("gan_rounds")
    net = gan.DCGANGenerator()
    r0 = layout.gan_round_dir(0, rounds)
    r0.mkdir()
    gan.save_generator(r0 / layout.GENERATOR, net, {"round": 0})
    io.write_json(r0 / layout.FIT_METRICS, {"round": 0, "sparsity": 0.0})
    mask = None
    for k in (1, 2):
        mask = next_mask(net, mask, 0.2)
        out = layout.gan_round_dir(k, rounds)
        out.mkdir()
        gan.save_generator(out / layout.GENERATOR, net, {"round": k})
        prune.save_mask(out / layout.MASK, mask, {"round": k})
        io.write_json(out / layout.FIT_METRICS, {"round": k, "sparsity": prune.sparsity(mask)})
    return rounds


def _gan_edit(kind: str, r2) -> None:
    from lipcore import io
    from stages.plumbing import layout

    path = r2 / layout.MASK
    tensors, meta = io.load_tensors(path)
    if kind == "inverted":
        tensors = {n: ~m for n, m in tensors.items()}
    elif kind == "not nested":  # one weight round 1 pruned comes back, one it kept goes: the same sparsity
        parent = io.load_tensors(r2.parent / "r1" / layout.MASK)[0]["main.0.weight"].view(-1)
        flat = tensors["main.0.weight"].view(-1)
        flat[int(torch.nonzero(~parent)[0])] = True
        flat[int(torch.nonzero(flat & parent)[0])] = False
    elif kind == "sparsity a string":
        io.write_json(r2 / layout.FIT_METRICS, {"round": 2, "sparsity": "high"})
    if kind != "sparsity a string":
        io.save_tensors(path, tensors, meta)


GAN_ROUND_EDITS = {
    "inverted": r"r2/mask\.safetensors prunes 64\.00% of the prunable weights \(2287862 of 3574784\), but its "
    r"metadata says 36\.00%: the mask was edited or replaced; rerun round 2",
    "not nested": r"r2/mask\.safetensors is not nested in round 1's mask \S*r1/mask\.safetensors: it keeps 1 "
    r"weight\(s\) that round 1 pruned \(an IMP round only prunes more\); rerun round 2",
    "sparsity a string": r"r2/metrics\.json: sparsity is 'high', not a number; rerun the stage that writes it",
}


@pytest.mark.parametrize("kind, message", GAN_ROUND_EDITS.items(), ids=GAN_ROUND_EDITS.keys())
def test_gan_rounds_whose_mask_disagrees_with_the_round_are_refused(gan_chain, tmp_path, kind, message):
    from stages.plumbing import gan_study, layout

    rounds = tmp_path / "rounds"
    shutil.copytree(gan_chain, rounds)
    gan_study.load_round(layout.gan_round_dir(2, rounds), 2)  # as written: accepted
    _gan_edit(kind, layout.gan_round_dir(2, rounds))
    with pytest.raises(ValueError, match=message):
        gan_study.load_round(layout.gan_round_dir(2, rounds), 2)


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
