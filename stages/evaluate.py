"""Stage evaluate: one image x task. Curves over all IMP rounds, and the headline at the target sparsity.

Headline: LIP (the first round whose nominal sparsity reaches `sparsity`) vs random masks with exactly the
same number of weights removed (global, and layer-wise matched) vs SNIP vs the dense DIP vs a deep decoder
with about as many parameters as the LIP net keeps. All start from the same theta_0 (the rewind state) and
are scored at the oracle best, the last iterate and the ES-WMV stop; mean +- std over seeds.

    python -m stages.evaluate --name f16 --task denoise --obs outs/degrade/f16-denoise \
        --rounds outs/rounds/f16-denoise --out outs/evaluate/f16-denoise --metrics metrics/f16-denoise.json
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lipcore import io
from lipcore.config import NetConfig
from lipcore.lottery import (
    MASK_BASELINES,
    Trial,
    baseline_mask,
    decoder_channels_for,
    nonzero_parameters,
    reported_images,
    rounds_needed,
    summarise,
    train_and_score,
    train_and_score_many,
)
from lipcore.nets import build_net, make_input
from lipcore.prune import Mask, nominal_sparsity, sparsity
from lipcore.seeding import derive_seed, generator

from . import common


def headline_round(params: dict[str, Any]) -> int:
    """The first round of imp.chain whose nominal sparsity reaches `sparsity`; a clear error if none does."""
    target = float(params["sparsity"])
    fraction = float(params["imp"]["fraction"])
    rounds = [k for k, _ in common.chain(params)]
    if not 0.0 <= target < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {target}")
    for k in [0, *rounds]:
        if nominal_sparsity(fraction, k) >= target - 1e-9:
            return k
    need = rounds_needed(target, fraction)
    have = len(rounds)
    more = ", ".join(f"[{k}, {k - 1}]" for k in range(have + 1, need + 1))
    raise ValueError(
        f"sparsity={target} is not reached: {have} IMP rounds give at most {nominal_sparsity(fraction, have):.3f} "
        f"at prune fraction {fraction}. Add {need - have} round(s) to imp.chain in params.yaml: {more}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--name", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--obs", type=Path, required=True)
    ap.add_argument("--rounds", type=Path, required=True, help="directory holding s<seed>/r<round>")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True, help="headline JSON (a DVC metrics file)")
    ap.add_argument("--sparsity-plot", type=Path, required=True, help="CSV: PSNR vs sparsity per method")
    ap.add_argument("--iteration-plot", type=Path, required=True, help="CSV: PSNR vs iteration")
    args = ap.parse_args(argv)
    params = common.load_params(args.params)
    head = headline_round(params)
    rounds = [0] + [k for k, _ in common.chain(params)]
    net_cfg = common.net_cfg(params)
    fit_cfg = common.fit_cfg(params, args.task)
    problem = common.load_problem(args.obs)
    root, dev = params["seed"], common.device(params)
    curve_methods = list(params.get("evaluate", {}).get("curve_methods", []))
    shown = common.shown_point(common.protocol(params))

    curves: dict[str, dict[int, list[dict]]] = {m: {} for m in ["lip", *curve_methods]}
    headline: dict[str, list[dict]] = {m: [] for m in ["dense", "lip", *MASK_BASELINES, "decoder"]}
    effective: list[float] = []
    images: dict[str, Any] = {}
    for seed in params["seeds"]:
        seed_dir = args.rounds / f"s{seed}"
        start = common.load_weights(seed_dir / "r0" / common.REWIND, net_cfg)
        _, z = common.load_init(seed_dir / "r0")
        fit_seed = derive_seed(root, "fit", seed)
        # The baseline fits of this seed share theta_0, z and the problem: one batched fit_many (on GPU).
        planned: list[tuple[str, int, Mask]] = []
        for k in rounds:
            m = io.read_json(seed_dir / f"r{k}" / common.METRICS)
            curves["lip"].setdefault(k, []).append(m)
            if k == head:
                headline["lip"].append(m)
                effective.append(m["sparsity"]["effective"])
            if k == 0:
                headline["dense"].append(m)
                continue
            lip_mask = common.load_round_mask(seed_dir / f"r{k}", net_cfg)
            methods = set(curve_methods) | (set(MASK_BASELINES) if k == head else set())
            for method in sorted(methods):
                gen = generator(root, method, args.name, args.task, seed, k)
                planned.append((method, k, baseline_mask(method, net_cfg, start, z, problem, lip_mask, gen)))
        trials = [Trial(start, z, problem, mask, fit_seed) for _, _, mask in planned]
        for (method, k, mask), res in zip(planned, train_and_score_many(net_cfg, trials, fit_cfg, "blind", dev)):
            scores = {**res.scores, "sparsity": {"effective": sparsity(mask)}}
            if method in curves:
                curves[method].setdefault(k, []).append(scores)
            if k == head:
                headline[method].append(scores)
                if seed == params["seeds"][0]:
                    images[method] = reported_images(res.result, fit_cfg)[shown]
        if head > 0:
            lip_mask = common.load_round_mask(seed_dir / f"r{head}", net_cfg)
            width = decoder_channels_for(nonzero_parameters(net_cfg, lip_mask), params["evaluate"]["decoder_layers"])
            dec_cfg = NetConfig(
                kind="decoder",
                decoder_channels=width,
                out_channels=net_cfg.out_channels,
                decoder_layers=params["evaluate"]["decoder_layers"],
                upsample=net_cfg.upsample,
            )
            dec = build_net(dec_cfg, generator(root, "decoder", seed))
            z_dec = make_input(dec, *problem.x_true.shape[-2:], generator(root, "decoder_z", seed))
            dec_fit = common.fit_cfg(params, args.task, reg_noise_std=0.0)  # the deep decoder uses no input noise
            res = train_and_score(dec_cfg, dec.state_dict(), z_dec, problem, dec_fit, "blind", None, fit_seed, dev)
            headline["decoder"].append(
                {**res.scores, "channels": width, "parameters": sum(p.numel() for p in dec.parameters())}
            )
            if seed == params["seeds"][0]:
                images["decoder"] = reported_images(res.result, dec_fit)[shown]

    summary = {
        "image": args.name,
        "task": args.task,
        "protocol": common.protocol(params),
        "shown_point": shown,
        "headline": {
            "target_sparsity": float(params["sparsity"]),
            "round": head,
            "nominal_sparsity": nominal_sparsity(params["imp"]["fraction"], head),
            "effective_sparsity": sum(effective) / len(effective),
            "methods": {m: summarise(v) for m, v in headline.items() if v},
        },
        "curves": {
            m: [
                {
                    "round": k,
                    "nominal_sparsity": nominal_sparsity(params["imp"]["fraction"], k),
                    "effective_sparsity": sum(s["sparsity"]["effective"] for s in v) / len(v),
                    **summarise(v),
                }
                for k, v in sorted(by_round.items())
            ]
            for m, by_round in curves.items()
        },
    }
    first = args.rounds / f"s{params['seeds'][0]}"
    with io.atomic_dir(args.out) as tmp:
        io.write_json(tmp / "results.json", {"summary": summary, "per_seed": headline})
        shutil.copy(args.obs / "clean.png", tmp / "clean.png")
        shutil.copy(args.obs / "degraded.png", tmp / "degraded.png")
        shutil.copy(first / "r0" / common.OUTPUT_PNG.format(shown), tmp / "dense.png")
        shutil.copy(first / f"r{head}" / common.OUTPUT_PNG.format(shown), tmp / "lip.png")
        for method, img in images.items():
            io.save_png(img, tmp / f"{method}.png")
    io.write_json(args.metrics, summary["headline"])
    write_sparsity_plot(args.sparsity_plot, summary["curves"], shown)
    write_iteration_plot(args.iteration_plot, first, head)


def write_sparsity_plot(path: Path, curves: dict[str, list[dict]], shown: str) -> None:
    """PSNR (mean over seeds, at the shown point) vs nominal sparsity, one column per method."""
    rows: dict[float, dict[str, Any]] = {}
    for method, points in curves.items():
        for p in points:
            row = rows.setdefault(round(p["nominal_sparsity"], 6), {"sparsity": round(p["nominal_sparsity"], 6)})
            row[method] = p[f"{shown}_psnr"]["mean"]
    rows[0.0].update({m: rows[0.0]["lip"] for m in curves})  # at sparsity 0 every method is the dense net
    common.write_csv(path, [rows[k] for k in sorted(rows)], ["sparsity", *curves])


def write_iteration_plot(path: Path, seed_dir: Path, head: int) -> None:
    """PSNR of the reported output vs iteration, dense and LIP at the headline round (first seed)."""
    cols = {}
    for name, k in (("dense", 0), ("lip", head)):
        hist = io.read_json(seed_dir / f"r{k}" / common.HISTORY)
        output = io.read_json(seed_dir / f"r{k}" / common.METRICS)["output"]
        cols[name] = hist["psnr_ema" if output == "ema" else "psnr_out"]
        iterations = hist["iteration"]
    rows = [{"iteration": int(it), **{n: c[i] for n, c in cols.items()}} for i, it in enumerate(iterations)]
    common.write_csv(path, rows, ["iteration", *cols])


if __name__ == "__main__":
    main()
