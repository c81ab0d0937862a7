"""Stage gan_prepare: the GAN study's round 0 and its test set.

Converts the pretrained DCGAN face generator of the wheel gan-face-generate (its SHA-256 checked, read with
torch.load(weights_only=True)) once to safetensors, the round-0 generator every IMP round rewinds to, and makes
the test set: gan.in_range images of that generator from a latent stream no other step draws from, and the real
64x64 faces gan.faces (data/faces, sources in data/faces/SOURCES.md).

    python -m stages.gan_prepare --faces data/faces --round0 outs/gan/rounds/r0 --testset outs/gan/testset
"""

from __future__ import annotations

from pathlib import Path

from lipcore import gan, io, prune

from .plumbing import entry, gan_study, layout
from .plumbing.params import load_params


def main(argv: list[str] | None = None) -> None:
    ap = entry.parser(__doc__)
    ap.add_argument("--faces", type=Path, required=True, help="directory of the 64x64 test faces")
    ap.add_argument("--round0", type=Path, required=True)
    ap.add_argument("--testset", type=Path, required=True)
    args = entry.start(ap, argv)
    for out, kind in ((args.round0, layout.GAN_ROUND_OUT), (args.testset, layout.GAN_TESTSET_OUT)):
        kind.check(out)  # before any work
    params = load_params(args.params)
    dense = gan.load_pretrained()
    x, names, kinds = gan_study.make_testset(params, dense, args.faces)

    with layout.GAN_ROUND_OUT.write(args.round0) as tmp:
        gan.save_generator(tmp / layout.GENERATOR, dense, {"round": 0, "source": gan.PACKAGE})
        weights = prune.count_total(prune.dense_mask(dense))
        io.write_json(tmp / layout.FIT_METRICS, {"round": 0, "sparsity": 0.0, "conv_weights": weights})
    with layout.GAN_TESTSET_OUT.write(args.testset) as tmp:
        gan_study.save_testset(tmp, x, names, kinds)


if __name__ == "__main__":
    entry.run(main)
