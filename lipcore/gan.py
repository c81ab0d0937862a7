"""A pretrained GAN generator as an image prior: the DCGAN face generator shipped in the wheel gan-face-generate.

The LIP paper's last result prunes a pretrained generator by IMP and uses the sparse generator for compressive
sensing. Its Progressive GAN came from a model hub, which cannot be reached here; the wheel
`gan-face-generate==1.1.1` (MIT; trained on the DigiFace1M synthetic faces) ships a DCGAN generator instead:
z in R^100 (100x1x1) -> 64x64 RGB in [-1, 1], five ConvTranspose2d layers 100->512->256->128->64->3 (kernel 4;
stride 1 pad 0, then stride 2 pad 1), BatchNorm + ReLU between, Tanh at the end, no biases.

lipcore defines the architecture itself and only reads the wheel's weights file: the package is located with
importlib.util.find_spec (never imported: its modules pull wandb and torchvision) and its checkpoint read with
torch.load(weights_only=True), the only torch.load in the project, which refuses anything but tensors and
plain containers. The file's SHA-256 is checked first, so a changed file is refused, not trusted.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

LATENT_DIM = 100
IMAGE_SIZE = 64
CHANNELS = (512, 256, 128, 64)
CONV_WEIGHTS = 3_574_784  # 100*512*16 + 512*256*16 + 256*128*16 + 128*64*16 + 64*3*16
PACKAGE = "gan-face-generate==1.1.1"
WEIGHTS_SHA256 = "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"
INSTALL = f"pip install --no-deps {PACKAGE}"


class DCGANGenerator(nn.Module):
    """The wheel's generator, layer for layer (its state_dict keys are main.0.weight ... main.12.weight)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        widths = (LATENT_DIM, *CHANNELS)
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            stride, pad = (1, 0) if i == 0 else (2, 1)
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(CHANNELS[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """z: (N, 100) or (N, 100, 1, 1) -> images (N, 3, 64, 64) in [-1, 1]."""
        if z.dim() == 2:
            z = z[:, :, None, None]
        return self.main(z)

    def conv_weights(self) -> dict[str, Tensor]:
        """The prunable weights: every ConvTranspose2d's (BatchNorm's affine parameters are not pruned)."""
        return {f"main.{i}.weight": m.weight for i, m in enumerate(self.main) if isinstance(m, nn.ConvTranspose2d)}


def weights_path() -> Path:
    """The wheel's weights file, found without importing the package; a clear error if the wheel is missing."""
    spec = importlib.util.find_spec("gan_face_generate")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the pretrained generator comes from the wheel {PACKAGE}; install it: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights.tar"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {PACKAGE}; reinstall it: {INSTALL}")
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_pretrained(path: Path | None = None) -> DCGANGenerator:
    """The pretrained generator in eval mode (BatchNorm uses the trained running statistics), on the CPU."""
    path = weights_path() if path is None else Path(path)
    found = sha256(path)
    if found != WEIGHTS_SHA256:
        raise ValueError(
            f"{path} is not the weights file of {PACKAGE} (SHA-256 {found}, expected {WEIGHTS_SHA256}); "
            f"reinstall the wheel: {INSTALL} --force-reinstall"
        )
    checkpoint = torch.load(path, weights_only=True, map_location="cpu")  # saved from CUDA
    state = checkpoint.get("netG_state_dict") if isinstance(checkpoint, dict) else None
    if state is None:
        raise ValueError(f"{path} holds no 'netG_state_dict'; it is not the generator checkpoint of {PACKAGE}")
    net = DCGANGenerator()
    net.load_state_dict(state)  # strict: every key and shape must match the architecture above
    return net.eval()


def save_generator(path: Path, net: DCGANGenerator, metadata: dict | None = None) -> None:
    """The generator's whole state (weights and BatchNorm statistics) as safetensors: what the pipeline keeps,
    converted once from the wheel's pickle-based checkpoint."""
    from .io import save_tensors

    save_tensors(path, {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, metadata or {})


def load_generator(path: Path) -> DCGANGenerator:
    """A generator saved by save_generator, in eval mode; refused (naming the tensor and both shapes) unless its
    names and shapes are the architecture's."""
    from .io import check_against, load_tensors

    state, _ = load_tensors(path)
    net = DCGANGenerator()
    check_against(state, net.state_dict(), "generator weights", path)
    net.load_state_dict(state)
    return net.eval()


def in_range_images(net: nn.Module, count: int, gen: torch.Generator) -> Tensor:
    """Images the generator can make exactly: G(z) for `count` latents drawn from `gen` (a stream no training
    step uses), in [-1, 1]."""
    z = torch.randn(count, LATENT_DIM, generator=gen)
    with torch.no_grad():
        return net.eval()(z)


def face_image(path: Path) -> Tensor:
    """A real test face: a 64x64 RGB file (data/faces) as a (3, 64, 64) image in the generator's [-1, 1]."""
    from .io import load_image

    x = load_image(path, channels=3)
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"{path} is {x.shape[-1]}x{x.shape[-2]}; the generator's test faces must be "
            f"{IMAGE_SIZE}x{IMAGE_SIZE} (crop and resize it first, as data/faces/SOURCES.md describes)"
        )
    return x * 2 - 1
