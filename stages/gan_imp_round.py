"""Stage gan_imp_round: IMP round k on the pretrained generator, and its random-pruning control.

Prunes gan.fraction of the remaining conv weights of round k-1's generator by global magnitude, rewinds the
survivors to the pretrained weights (round 0) and retrains by distillation from the dense generator
(lipcore.gan_prune). The control: a random mask with round k's sparsity in every layer, rewound and distilled
the same way, on the same latents. Both are scored by their distillation error on a fixed batch of held-out
latents, beside the rewound mask with no retraining.

    python -m stages.gan_imp_round --round 2 --pretrained outs/gan/rounds/r0 --parent outs/gan/rounds/r1 \
        --out outs/gan/rounds/r2
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lipcore import io, prune
from lipcore.gan import LATENT_DIM, save_generator
from lipcore.gan_prune import distill, next_mask, rewound
from lipcore.imp import nominal_sparsity
from lipcore.runtime import resolve_device
from lipcore.seeding import generator

from .plumbing import artifacts, entry, gan_study, layout
from .plumbing.params import load_params

HELD_OUT = 64  # latents of the fixed distillation-error batch


def main(argv: list[str] | None = None) -> None:
    ap = entry.parser(__doc__)
    ap.add_argument("--round", type=int, required=True)
    ap.add_argument("--pretrained", type=Path, required=True, help="round 0: the pretrained generator")
    ap.add_argument("--parent", type=Path, required=True, help="round k-1")
    ap.add_argument("--out", type=Path, required=True)
    args = entry.start(ap, argv)
    k = args.round
    if k < 1:
        raise ValueError(f"--round {k}: IMP rounds count from 1 (round 0 is gan_prepare's pretrained generator)")
    if args.out.resolve() in (args.pretrained.resolve(), args.parent.resolve()):
        raise ValueError(f"--out {args.out} is also an input of this round; each round writes its own directory")
    layout.GAN_ROUND_OUT.check(args.out)
    params = load_params(args.params)
    gan, device = params.gan, resolve_device(params.device)

    dense, _ = gan_study.load_round(args.pretrained, 0)
    parent, parent_mask = gan_study.load_round(args.parent, k - 1, parent_optional=True)  # r(k-2): no input
    mask = next_mask(parent, parent_mask, gan.fraction)
    random_mask = prune.random_mask_like(mask, generator(params.seed, "gan", "random_mask", k))
    teacher = dense.to(device)
    held_out = torch.randn(HELD_OUT, LATENT_DIM, generator=generator(params.seed, "gan", "held_out")).to(device)
    record = {
        "round": k,
        "sparsity": prune.sparsity(mask),
        "nominal_sparsity": nominal_sparsity(gan.fraction, k),
        "error_rewind": error(rewound(dense, mask).to(device), teacher, held_out),
    }
    nets = {}
    for name, m in (("lip", mask), ("random", random_mask)):
        net = rewound(dense, m).to(device)
        # the same latent stream for both: the control differs from LIP only in its mask
        losses = distill(net, teacher, m, gan.distill, LATENT_DIM, generator(params.seed, "gan", "distill", k))
        nets[name] = net.cpu()
        record[f"distill_first_{name}"] = losses[0] if losses else None
        record[f"distill_last_{name}"] = losses[-1] if losses else None
        record[f"error_{name}"] = error(net.to(device), teacher, held_out)

    meta = {"round": k, "parent": str(args.parent), "fraction": gan.fraction}
    with layout.GAN_ROUND_OUT.write(args.out) as tmp:
        artifacts.write_numerics(tmp, params.device)  # distillation: fp32
        save_generator(tmp / layout.GENERATOR, nets["lip"], meta)
        prune.save_mask(tmp / layout.MASK, mask, meta)
        save_generator(tmp / layout.RANDOM_GENERATOR, nets["random"], {**meta, "control": "random, layer-matched"})
        prune.save_mask(tmp / layout.RANDOM_MASK, random_mask, {**meta, "control": "random, layer-matched"})
        io.write_json(tmp / layout.FIT_METRICS, record)


def error(student: nn.Module, teacher: nn.Module, z: torch.Tensor) -> float:
    """Mean squared difference of the two generators' images on the latents z (the distillation objective)."""
    with torch.no_grad():
        return float((student.eval()(z) - teacher.eval()(z)).square().mean())


if __name__ == "__main__":
    entry.run(main)
