"""How long must the GAN study's latent search run? A pilot of CSGM on the dense pretrained generator.

In-range test images (G(z) for latents from a stream the study does not draw from) are measured at each m and
recovered from `--restarts` starts per image, every start's measurement loss kept at every step. For a search
of L steps each image keeps its restart with the lowest loss at step L (as lipcore.csgm.recover does at its
end); the pilot prints, per m and learning rate and for L = --every, 2 --every, ... up to --cap, how much that
mean loss still fell over the search's last fifth, as a share of its value at L (each end averaged over --window
steps), and the image MSE at the cap. A search is long enough when the last fifth takes off less than --flat.

    OMP_NUM_THREADS=1 python bench/gan_search_length.py --m 200 1000 3000 --lr 0.1 --cap 6000 --json pilot.json

The latent search costs the same for a pruned generator (masks skip no FLOPs), so the dense one decides.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from lipcore.csgm import gaussian_matrix, measure, recover  # noqa: E402
from lipcore.gan import LATENT_DIM, in_range_images, load_pretrained  # noqa: E402


def last_fifth_drop(losses: Tensor, restarts: int, length: int, window: int) -> tuple[float, Tensor]:
    """losses: (steps, images * restarts), the loss before each step. For a search of `length` steps: the share of
    the chosen restarts' mean loss near `length` that they shed over the search's last fifth, and the chosen rows.
    'Near' is the mean over the `window` steps up to the point: at a constant lr, Adam's iterate jitters, and two
    single steps would measure the jitter rather than the trend."""
    at_end = losses[length - 1].view(-1, restarts)
    pick = torch.arange(at_end.shape[0]) * restarts + at_end.argmin(dim=1)
    cut = round(0.8 * length)
    end = losses[max(0, length - window) : length, pick].mean()
    before = losses[max(0, cut - window) : cut, pick].mean()
    return float((before - end) / end), pick


def pilot(args: argparse.Namespace) -> list[dict]:
    net = load_pretrained()
    x = in_range_images(net, args.images, torch.Generator().manual_seed(args.seed + 7919))  # not the study's stream
    n = x[0].numel()
    rows, curves = [], {}
    for m in args.m:
        a = gaussian_matrix(m, n, torch.Generator().manual_seed(args.seed + m))
        y = measure(a, x, args.noise_std, torch.Generator().manual_seed(args.seed + 2 * m + 1))
        z0 = torch.randn(args.images * args.restarts, LATENT_DIM, generator=torch.Generator().manual_seed(args.seed))
        for lr in args.lr:
            # every start as its own row (restarts=1), so that each start's curve is kept, not only the winner's
            got = recover(
                net, a, y.repeat_interleave(args.restarts, dim=0), latent_dim=LATENT_DIM, restarts=1,
                iterations=args.cap, lr=lr, z0=z0,
            )  # fmt: skip
            curve = got.curve  # (cap, images * restarts)
            curves[f"m{m}_lr{lr:g}"] = curve
            for length in range(args.every, args.cap + 1, args.every):
                drop, pick = last_fifth_drop(curve, args.restarts, length, args.window)
                row = {"m": m, "lr": lr, "length": length, "loss": round(float(curve[length - 1, pick].mean()), 5)}
                row["last_fifth_drop"] = round(drop, 4)
                if length == args.cap:  # the images themselves exist only at the end of the search
                    row["mse"] = round(float(((got.x[pick] - x) ** 2).mean()), 5)
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.curves:
        torch.save(curves, args.curves)
    return rows


def summary(rows: list[dict], flat: float) -> None:
    for m, lr in sorted({(r["m"], r["lr"]) for r in rows}):
        mine = [r for r in rows if r["m"] == m and r["lr"] == lr]
        ok = [r["length"] for r in mine if r["last_fifth_drop"] < flat]
        drops = ", ".join(f"{r['length']}: {r['last_fifth_drop']:.1%}" for r in mine)
        shortest = ok[0] if ok else f"beyond {mine[-1]['length']}"
        print(f"m = {m}, lr = {lr}: last-fifth drop at {drops}; shortest L shedding < {flat:.0%}: {shortest}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, nargs="+", default=[200, 1000, 3000])
    ap.add_argument("--lr", type=float, nargs="+", default=[0.1])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--cap", type=int, default=6000)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--noise-std", type=float, default=0.01, help="in the generator's [-1, 1] units (gan.cs)")
    ap.add_argument("--window", type=int, default=100, help="steps averaged at each end of the last fifth")
    ap.add_argument("--flat", type=float, default=0.02)
    ap.add_argument("--curves", type=Path, help="also save every start's loss curve here (torch.save), per m and lr")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--merge", type=Path, nargs="*", help="summarise these --json files instead of searching")
    args = ap.parse_args()
    if args.merge:
        rows = [r for path in args.merge for r in json.loads(path.read_text())]
    else:
        rows = pilot(args)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + "\n")
    summary(rows, args.flat)


if __name__ == "__main__":
    main()
