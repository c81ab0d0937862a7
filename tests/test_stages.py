"""Each stage's main, called in-process on tiny params in a scratch project directory."""

import json

import numpy as np
import pytest
import torch
import yaml

from lipcore import io, prune
from lipcore.fit import fit
from lipcore.imp import find_ticket, headline_round
from lipcore.metrics import psnr_y
from lipcore.nets import net_from_state
from lipcore.physics import Denoise
from lipcore.trials import search_problem
from stages import degrade, dense_fit, evaluate, imp_round, multi_evaluate, multi_round, report, transfer
from stages.plumbing import artifacts, layout
from stages.plumbing.params import load_params
from tests.conftest import tiny_params


def write_params(path, params):
    path.write_text(yaml.safe_dump(params))


def run_chain(params, image="f16", task="denoise", seeds=(0,)):
    obs, rounds = str(layout.degrade_dir(image, task)), layout.pair_rounds(image, task)
    degrade.main(["--image", str(layout.image_file(image)), "--name", image, "--task", task, "--out", obs])
    for s in seeds:
        r0 = str(layout.round_dir(rounds, s, 0))
        dense_fit.main(["--obs", obs, "--task", task, "--seed", str(s), "--out", r0])
        for k, parent in params["imp"]["chain"]:
            parent_dir, out = layout.round_dir(rounds, s, parent), layout.round_dir(rounds, s, k)
            imp_round.main(
                ["--obs", obs, "--task", task, "--seed", str(s), "--round", str(k), "--dense", r0]
                + ["--parent", str(parent_dir), "--out", str(out)]
            )


def run_evaluate(image, task):
    evaluate.main(
        ["--name", image, "--task", task, "--obs", str(layout.degrade_dir(image, task))]
        + ["--rounds", str(layout.pair_rounds(image, task)), "--out", str(layout.evaluate_dir(image, task))]
        + ["--metrics", str(layout.headline_metrics(image, task))]
        + ["--sparsity-plot", str(layout.sparsity_plot(image, task))]
        + ["--iteration-plot", str(layout.iteration_plot(image, task))]
        + ["--grid-plot", str(layout.grid_plot(image, task))]
    )


def run_transfer():
    args = ["--degrade", str(layout.DEGRADE), "--rounds", str(layout.ROUNDS), "--out", str(layout.TRANSFER)]
    transfer.main([*args, "--metrics", str(layout.TRANSFER_METRICS)])


def fit_metrics(image, task, seed, k):
    return artifacts.read_fit_metrics(layout.round_dir(layout.pair_rounds(image, task), seed, k))


def test_degrade_writes_a_rebuildable_observation(project):
    write_params(project / "params.yaml", tiny_params(tasks=["inpaint"]))
    degrade.main(["--image", "data/f16.png", "--name", "f16", "--task", "inpaint", "--out", "outs/degrade/f16-inpaint"])
    problem = artifacts.load_problem(project / "outs/degrade/f16-inpaint")
    assert problem.y.shape == (1, 3, 32, 32) and problem.x_true.shape == (1, 3, 32, 32)
    assert torch.equal(problem.op(problem.x_true), problem.y)  # noise-free inpainting: y = A x exactly
    assert 0.4 < float(problem.op.mask.mean()) < 0.6  # keep: 0.5
    assert (project / "outs/degrade/f16-inpaint" / layout.DEGRADED_PNG).exists()


def test_rounds_chain_masks_monotone_with_the_published_schedule(project):
    params = tiny_params()
    write_params(project / "params.yaml", params)
    run_chain(params)
    base = layout.pair_rounds("f16", "denoise")
    masks = [artifacts.load_round_mask(layout.round_dir(base, 0, k), load_params().net) for k in (1, 2)]
    assert prune.is_monotone(masks[0], masks[1])
    for k, mask in zip((1, 2), masks):
        m = fit_metrics("f16", "denoise", 0, k)
        assert m["round"] == k
        assert m["sparsity"]["nominal"] == pytest.approx(1 - 0.8**k)
        assert m["sparsity"]["effective"] == pytest.approx(prune.sparsity(mask))
        assert abs(m["sparsity"]["effective"] - m["sparsity"]["nominal"]) < 1e-3
        # the mask came from an 8-iteration search fit; the scores from the full 12-iteration evaluation
        assert m["search_iterations"] == 8 and m["last"]["iteration"] == 12
        _, meta = io.load_tensors(layout.round_dir(base, 0, k) / layout.MASK)
        assert meta["round"] == k and meta["parent"].endswith(f"r{k - 1}")
        assert meta["prune"] == {"fraction": 0.2, "scope": "global", "keep_input_dense": False}
    init, _ = io.load_tensors(layout.round_dir(base, 0, 0) / layout.INIT)
    rewind, _ = io.load_tensors(layout.round_dir(base, 0, 0) / layout.REWIND)
    assert all(torch.equal(init[f"net.{k}"], v) for k, v in rewind.items())  # rewind_iteration 0: theta_0


def test_round_refuses_a_wrong_parent(project):
    params = tiny_params()
    write_params(project / "params.yaml", params)
    run_chain(params)
    base = layout.pair_rounds("f16", "denoise")
    with pytest.raises(ValueError, match="expected round 2"):
        imp_round.main(
            ["--obs", "outs/degrade/f16-denoise", "--task", "denoise", "--seed", "0", "--round", "3"]
            + ["--dense", str(layout.round_dir(base, 0, 0)), "--parent", str(layout.round_dir(base, 0, 1))]
            + ["--out", str(layout.round_dir(base, 0, 3))]
        )


def test_evaluate_transfer_report(project):
    params = tiny_params()
    write_params(project / "params.yaml", params)
    for image in params["images"]:
        run_chain(params, image=image)
        run_evaluate(image, "denoise")
    head = json.loads(layout.headline_metrics("f16", "denoise").read_text())
    assert head["round"] == 2  # 0.36 >= 0.3 > 0.2
    baselines = {"random_global", "random_layer", "snip", "snip_layer", "snip_iterative", "oes"}
    assert set(head["methods"]) == {"dense", "lip", *baselines, "reinit", "decoder"}
    assert head["methods"]["lip"]["es_psnr"]["mean"] > 10
    lip = fit_metrics("f16", "denoise", 0, 2)
    assert head["methods"]["lip"]["es_psnr"]["mean"] == lip["es"]["psnr"]  # one seed: the round's own score
    results = io.read_json(layout.evaluate_dir("f16", "denoise") / layout.RESULTS)
    per_seed = results["per_seed"]
    for method in (*baselines, "reinit"):  # exactly the LIP sparsity
        assert per_seed[method][0]["sparsity"]["effective"] == pytest.approx(head["effective_sparsity"], abs=1e-9)
        assert per_seed[method][0]["collapsed_layers"] == []
    assert per_seed["reinit"][0]["es"] != per_seed["lip"][0]["es"]  # the same mask, another start
    for method in ("dense", "lip"):  # the run-length check's facts: how each headline fit's best rose
        (rise,) = (s["best_by_tenth"] for s in per_seed[method])
        measured = [r for r in rise if r is not None]  # a 12-iteration fit has no row in its first tenths
        assert len(rise) == 10 and measured and measured == sorted(measured) and rise[-1] == max(measured)
    assert per_seed["oes"][0]["search"]["steps"] == 18  # 1.5 x the 12-iteration fit (evaluate.oes)
    long = results["long_run"]  # 2 x the run: from each headline fit's start, z and stream
    assert long["factor"] == 2 and long["iterations"] == 24
    assert set(long["per_seed"]) == {"dense", "lip", "oes", "random_layer", "decoder", "dense_oes_recipe"}
    for (s,) in long["per_seed"].values():
        assert s["last"]["iteration"] == 24 and s["drop"] == pytest.approx(s["oracle_best"]["psnr"] - s["last"]["psnr"])
    ch = results["channels"]  # two channel rounds, each a smaller net: fewer parameters, fewer FLOPs
    assert ch["fraction"] == pytest.approx(1 - 0.8**0.5) and set(ch["lip_parameters"]) == {"1", "2"}
    (tickets,) = ch["per_seed"]
    assert [t["round"] for t in tickets] == [1, 2]
    assert ch["dense"]["parameters"] > tickets[0]["parameters"] > tickets[1]["parameters"]
    assert ch["dense"]["flops"] > tickets[0]["flops"] > tickets[1]["flops"]
    assert tickets[1]["last"]["iteration"] == 12 and tickets[1]["es"]["psnr"] > 10
    # its first 12 iterations are the headline fit's: its peak is at least the headline's oracle best
    for method, k in (("dense", 0), ("lip", 2)):
        headline_best = fit_metrics("f16", "denoise", 0, k)["oracle_best"]["psnr"]
        assert long["per_seed"][method][0]["oracle_best"]["psnr"] >= headline_best - 1e-6, method
    assert set(results["per_seed_curves"]["lip"]) == {"0", "1", "2"}
    curves = [r.split(",") for r in layout.sparsity_plot("f16", "denoise").read_text().splitlines()]
    assert curves[0] == ["sparsity", "psnr", "series", "plot"] and {r[3] for r in curves[1:]} == {"f16-denoise"}
    assert {r[2] for r in curves[1:]} == {"dense", "lip", *params["evaluate"]["curve_methods"]}
    assert len({r[1] for r in curves[1:] if r[2] == "dense"}) == 1  # the dense level: flat
    assert layout.grid_plot("f16", "denoise").read_bytes().startswith(b"\x89PNG")

    run_transfer()
    t = json.loads(layout.TRANSFER_METRICS.read_text())
    assert set(t["psnr"]) == {"f16-denoise", "baby-denoise"}
    assert t["psnr"]["f16-denoise"]["f16-denoise"] == pytest.approx(lip["es"]["psnr"], abs=1e-3)

    report.main(
        ["--evaluate", "outs/evaluate", "--transfer", str(layout.TRANSFER), "--out", "report"]
        + ["--headline", str(layout.HEADLINE)]
    )
    md = (project / "report" / layout.REPORT_MD).read_text()
    assert "| lip |" in md and "Transfer" in md
    assert md.index("## Claims") < md.index("## f16 / denoise")
    assert "| LIP > random pruning (global) at the same sparsity |" in md
    assert "| reinit | LIP mask from a fresh theta_0" in md
    assert "no multi-image group in this run" in md
    assert "## Long runs: does a sparse prior overfit less?" in md and "| dense_oes_recipe |" in md
    assert "| a sparse prior overfits less: lip (long runs" in md and "| oes | Optimal Eye Surgeon" in md
    assert "## Channel tickets: structured sparsity that runs faster" in md and "| 2 | 2 |" in md
    assert (project / "report" / layout.CURVES_PNG).exists()
    assert (project / "report" / layout.grid_png("f16-denoise")).exists()
    numbers = json.loads(layout.HEADLINE.read_text())  # the DVC metrics: few, and each what it says
    f16 = head["methods"]
    assert numbers["lip-dense"]["f16-denoise"] == pytest.approx(
        f16["lip"]["es_psnr"]["mean"] - f16["dense"]["es_psnr"]["mean"], abs=1e-4
    )
    assert set(numbers["psnr"]) == {"dense", "lip", "random", "snip", "decoder"} and "gan_mse" not in numbers
    assert len(_leaves(numbers)) <= 20


def test_transfer_across_tasks_measures_only_same_image_pairs(project):
    params = tiny_params(tasks=["denoise", "inpaint"], transfer={"pairs": "across_tasks"})
    write_params(project / "params.yaml", params)
    for image in params["images"]:
        for task in params["tasks"]:
            run_chain(params, image=image, task=task)
    run_transfer()
    psnr = json.loads(layout.TRANSFER_METRICS.read_text())["psnr"]
    assert set(psnr["f16-denoise"]) == {"f16-denoise", "f16-inpaint"}  # itself and its own image's other task
    assert set(psnr["baby-inpaint"]) == {"baby-inpaint", "baby-denoise"}


def test_late_rewinding_adds_the_theta0_control(project):
    """With imp.rewind_iteration > 0 the LIP mask is also trained from theta_0 instead of the rewind weights."""
    params = tiny_params(images=["f16"])
    params["imp"]["rewind_iteration"] = 4
    write_params(project / "params.yaml", params)
    run_chain(params)
    run_evaluate("f16", "denoise")
    per_seed = io.read_json(layout.evaluate_dir("f16", "denoise") / layout.RESULTS)["per_seed"]
    assert {"reinit", "lip_theta0"} <= set(per_seed)
    assert per_seed["lip_theta0"][0]["es"] != per_seed["lip"][0]["es"]


def test_a_curve_method_that_is_no_headline_baseline_joins_the_headline(project):
    """evaluate.curve_methods fits its methods at every round, the headline round included: a curve method not
    listed in evaluate.baselines is scored there too (it failed with a KeyError before)."""
    params = tiny_params(images=["f16"])
    params["evaluate"].update(curve_methods=["random_global"], baselines=["random_layer"], long_run=0)
    params["evaluate"]["channels"] = {"rounds": 0, "fraction": None}
    write_params(project / "params.yaml", params)
    run_chain(params)
    run_evaluate("f16", "denoise")
    results = io.read_json(layout.evaluate_dir("f16", "denoise") / layout.RESULTS)
    assert set(results["per_seed"]) == {"dense", "lip", "random_layer", "random_global", "reinit", "decoder"}
    head = results["summary"]["headline"]["round"]
    assert results["per_seed"]["random_global"] == results["per_seed_curves"]["random_global"][str(head)]


def run_multi(params, group="g", seeds=(0,)):
    for mode in params["multi"]["modes"]:
        rounds = layout.multi_rounds(group, mode)
        base = ["--group", group, "--mode", mode, "--degrade", str(layout.DEGRADE)]
        for s in seeds:
            r0 = layout.round_dir(rounds, s, 0)
            multi_round.main([*base, "--seed", str(s), "--round", "0", "--out", str(r0)])
            for k, parent in params["imp"]["chain"]:
                multi_round.main(
                    [*base, "--seed", str(s), "--round", str(k), "--dense", str(r0)]
                    + ["--parent", str(layout.round_dir(rounds, s, parent))]
                    + ["--out", str(layout.round_dir(rounds, s, k))]
                )
    multi_evaluate.main(
        ["--group", group, "--degrade", str(layout.DEGRADE), "--rounds", str(layout.ROUNDS)]
        + ["--multi", str(layout.MULTI / group), "--out", str(layout.multi_evaluate_dir(group))]
        + ["--metrics", str(layout.multi_metrics(group))]
    )


def test_multi_image_rounds_and_their_scoring_on_a_held_out_image(project):
    params = tiny_params(images=["f16", "baby", "kate"])
    params["multi"].update(modes=["shared", "average"], groups={"g": {"train": ["f16", "baby"], "heldout": ["kate"]}})
    write_params(project / "params.yaml", params)
    for image in params["images"]:
        run_chain(params, image=image)
    run_multi(params)

    shared = layout.multi_rounds("g", "shared")
    init, _ = io.load_tensors(layout.round_dir(shared, 0, 0) / layout.INIT)
    single, _ = io.load_tensors(layout.round_dir(layout.pair_rounds("f16", "denoise"), 0, 0) / layout.INIT)
    assert init["z"].shape[0] == 2 and single["z"].shape[0] == 1  # one input per training image
    assert all(torch.equal(init[k], v) for k, v in single.items() if k != "z")  # the single fits' theta_0
    shared_mask = artifacts.load_round_mask(layout.round_dir(shared, 0, 2), load_params().net, 2)
    f16_mask = artifacts.load_round_mask(
        layout.round_dir(layout.pair_rounds("f16", "denoise"), 0, 2), load_params().net, 2
    )
    assert prune.count_kept(shared_mask) == prune.count_kept(f16_mask)  # the same schedule
    assert prune.mask_distance(shared_mask, f16_mask) > 0

    rows = io.read_json(layout.multi_evaluate_dir("g") / layout.RESULTS)["rows"]
    at_2 = {r["method"]: r for r in rows if r["round"] == 2}
    assert set(at_2) == {"multi_shared", "multi_average", "single_f16", "single_baby", "random_global", "own"}
    assert {r["heldout"] for r in rows} == {"kate"}
    own = fit_metrics("kate", "denoise", 0, 2)
    assert at_2["own"]["es"] == own["es"]  # read, not refitted
    for name in ("multi_shared", "single_f16", "random_global"):
        assert at_2[name]["sparsity"]["effective"] == pytest.approx(own["sparsity"]["effective"], abs=1e-9)
    metrics = json.loads(layout.multi_metrics("g").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]


def test_iteration_plot_holds_each_fit_to_its_own_end_with_its_es_stop(tmp_path):
    """fit.es_stop: the dense and LIP histories end at different iterations; each fit's rows are its own."""
    dense = {"iteration": [4, 8, 12], "psnr_out": [10.0, 11.0, 12.0], "psnr_ema": [1.0, 2.0, 3.0]}
    lip = {"iteration": [4, 8], "psnr_out": [20.0, 21.0], "psnr_ema": [5.0, 6.0]}
    for k, hist, output, stop in ((0, dense, "raw", 12), (2, lip, "ema", 6)):
        d = layout.round_dir(tmp_path, 0, k)
        io.write_json(d / layout.HISTORY, hist)
        point = {"iteration": 12, "psnr": 0.0, "ssim": 0.0}
        record = {"output": output, "round": k, "sparsity": {"nominal": 0.0, "effective": 0.0}}
        record |= {"last": point, "oracle_best": point, "es": {**point, "iteration": stop}}
        io.write_json(d / layout.FIT_METRICS, record)
    rows = evaluate.iteration_plot_rows(tmp_path, 0, 2)
    artifacts.write_csv(tmp_path / "plot.csv", rows, list(evaluate.ITERATION_COLUMNS))
    assert (tmp_path / "plot.csv").read_text().splitlines() == [
        "iteration,psnr,series,es_stop",
        *("4,10,dense,12", "8,11,dense,12", "12,12,dense,12"),  # the raw output's PSNR
        *("4,5,lip,6", "8,6,lip,6"),  # the EMA's
    ]


def test_best_by_tenth_is_the_best_psnr_so_far_of_the_reported_output_at_each_tenth_of_the_run():
    """The run-length check's facts: rows up to each tenth of the last logged iteration; a gap (null) is skipped."""
    hist = {
        "iteration": [10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
        "psnr_out": [5.0, 9.0, 7.0, None, 8.0, 9.5, 9.0, 9.0, 10.0, 9.0],
        "psnr_ema": [1.0] * 10,
    }
    assert evaluate.best_by_tenth(hist, "raw") == [5.0, 9.0, 9.0, 9.0, 9.0, 9.5, 9.5, 9.5, 10.0, 10.0]
    assert evaluate.best_by_tenth(hist, "ema") == [1.0] * 10
    assert evaluate.best_by_tenth({**hist, "psnr_out": [None] * 10}, "raw") == [None] * 10


def test_es_stop_runs_through_evaluate(project):
    params = tiny_params(images=["f16"])
    params["fit"] = {**params["fit"], "es_stop": True, "iterations": 40, "log_every": 2}
    write_params(project / "params.yaml", params)
    run_chain(params)
    run_evaluate("f16", "denoise")
    rows = [r.split(",") for r in layout.iteration_plot("f16", "denoise").read_text().splitlines()[1:]]
    for k, name in ((0, "dense"), (2, "lip")):
        fit = fit_metrics("f16", "denoise", 0, k)
        iterations = [int(r[0]) for r in rows if r[2] == name and r[4] == "f16-denoise"]
        assert iterations == sorted(set(iterations)) and max(iterations) == fit["last"]["iteration"]
        assert {int(r[3]) for r in rows if r[2] == name} == {fit["es"]["iteration"]}
    stops = [fit_metrics("f16", "denoise", 0, k)["last"]["iteration"] for k in (0, 2)]
    assert min(stops) < 40  # at least one fit stopped early
    # each round records when ES-WMV detected its point: a fit that stopped itself, told from one at its cap
    for k in (0, 2):
        fit = fit_metrics("f16", "denoise", 0, k)
        if fit["last"]["iteration"] < 40:
            assert 0 <= fit["last"]["iteration"] - fit["es_detected"] < 2
        else:
            assert fit["es_detected"] is None or fit["es_detected"] > 38


def test_super_resolution_oracle_is_picked_by_the_reported_y_psnr(project):
    params = tiny_params(images=["f16"], tasks=["sr2"])
    params["task_defs"]["sr2"] = {"degradation": {"task": "sr", "factor": 2}, "fit": {"ema_weight": 0.0}}
    params["fit"] = {**params["fit"], "log_every": 1}
    write_params(project / "params.yaml", params)
    run_chain(params, task="sr2")
    for k in (0, 1, 2):
        m = fit_metrics("f16", "sr2", 0, k)
        hist = io.read_json(layout.round_dir(layout.pair_rounds("f16", "sr2"), 0, k) / layout.HISTORY)
        best = int(np.argmax(hist["psnr_out"]))
        assert m["oracle_best"]["iteration"] == hist["iteration"][best]
        assert m["oracle_best"]["psnr"] == pytest.approx(hist["psnr_out"][best], abs=1e-3)
    problem = artifacts.load_problem(layout.degrade_dir("f16", "sr2"))
    assert problem.y.shape == (1, 3, 16, 16)
    assert problem.psnr.func is psnr_y and problem.psnr.keywords == {"shave": 2}


def test_compressive_sensing_runs_through_the_rounds(project):
    params = tiny_params(images=["f16"], tasks=["cs"])
    params["task_defs"]["cs"] = {"degradation": {"task": "cs", "ratio": 0.25}, "fit": {"ema_weight": 0.0}}
    write_params(project / "params.yaml", params)
    run_chain(params, task="cs")
    problem = artifacts.load_problem(layout.degrade_dir("f16", "cs"))
    assert problem.y.shape == (1, 768)  # 0.25 of 3 x 32 x 32 measurements
    for k in (0, 1, 2):
        m = fit_metrics("f16", "cs", 0, k)
        assert np.isfinite(m["es"]["psnr"]) and m["sparsity"]["nominal"] == pytest.approx(1 - 0.8**k)


def test_paper_protocol_searches_denoising_masks_on_the_clean_image(project):
    params = tiny_params(images=["f16"], protocol="paper")
    write_params(project / "params.yaml", params)
    run_chain(params)
    p = load_params()
    problem = artifacts.load_problem(layout.degrade_dir("f16", "denoise"))
    round0 = layout.round_dir(layout.pair_rounds("f16", "denoise"), 0, 0)
    theta0, z = artifacts.load_init(round0)
    # the weights round 1 prunes come from an 8-iteration search fit of the CLEAN image
    net = net_from_state(p.net, theta0)
    search_cfg = p.imp.search.fit_cfg(p.fit_for("denoise"))
    from lipcore.seeding import derive_seed

    fit(net, z, Denoise(problem.op.image_shape, 0.0), problem.x_true, search_cfg, seed=derive_seed(0, "fit", 0))
    trained = artifacts.load_weights(round0 / layout.TRAINED, p.net)
    assert all(torch.equal(v, trained[k]) for k, v in net.state_dict().items())
    # the reported fit is on the noisy observation, 12 iterations
    assert fit_metrics("f16", "denoise", 0, 0)["last"]["iteration"] == 12


def test_find_ticket_draws_the_pipelines_masks(project):
    """find_ticket's round k fits exactly as the pipeline's round k (late rewinding, early-bird search)."""
    params = tiny_params(images=["f16"])
    params["imp"] = {
        **params["imp"],
        "rewind_iteration": 6,
        "search": {"iterations": 10, "early_bird": 0.5, "early_bird_every": 2, "early_bird_patience": 1},
    }
    write_params(project / "params.yaml", params)
    run_chain(params)
    p = load_params()
    rounds = layout.pair_rounds("f16", "denoise")
    theta0, z = artifacts.load_init(layout.round_dir(rounds, 0, 0))
    problem = artifacts.load_problem(layout.degrade_dir("f16", "denoise"))
    from lipcore.seeding import derive_seed

    ticket = find_ticket(
        p.net, theta0, z, search_problem(problem, p.protocol), p.fit_for("denoise"), p.imp, 2, derive_seed(0, "fit", 0)
    )
    assert ticket.search_iterations == [fit_metrics("f16", "denoise", 0, k)["search_iterations"] for k in (0, 1)]
    assert ticket.search_iterations[1] < 7  # a later round may stop before the rewind point of round 0
    mask = artifacts.load_round_mask(layout.round_dir(rounds, 0, 2), p.net)
    assert all(torch.equal(mask[n], ticket.mask[n]) for n in mask)
    rewind = artifacts.load_weights(layout.round_dir(rounds, 0, 0) / layout.REWIND, p.net)
    assert all(torch.equal(rewind[k], v) for k, v in ticket.start.items())


def test_unreached_sparsity_says_how_many_rounds_to_add(project):
    write_params(project / "params.yaml", tiny_params(sparsity=0.6))  # refused as the params load
    with pytest.raises(ValueError, match=r"Add 3 round\(s\) to imp.chain.*\[3, 2\], \[4, 3\], \[5, 4\]"):
        load_params()


@pytest.mark.parametrize("name", ["params.yaml", "params.paper.yaml"])
def test_shipped_params_files_are_valid(name):
    from tests.conftest import ROOT

    params = load_params(ROOT / name)
    for task in params.tasks:
        params.fit_for(task)
    assert params.imp.chain
    assert headline_round(params.sparsity, params.imp) >= 1
    assert params.image_size % params.net.downscale == 0
    for image in params.images:
        assert (ROOT / layout.image_file(image)).exists()


def test_stage_outputs_are_byte_identical_when_rerun(project):
    """DVC compares output hashes: a rerun with the same inputs must not look like a change downstream."""
    write_params(project / "params.yaml", tiny_params())
    degrade.main(["--image", "data/f16.png", "--name", "f16", "--task", "denoise", "--out", "outs/degrade/a"])
    for out in ("outs/r0a", "outs/r0b"):
        dense_fit.main(["--obs", "outs/degrade/a", "--task", "denoise", "--seed", "0", "--out", out])
    files = sorted(p.name for p in (project / "outs/r0a").iterdir())
    assert files and files == sorted(p.name for p in (project / "outs/r0b").iterdir())
    for name in files:
        assert (project / "outs/r0a" / name).read_bytes() == (project / "outs/r0b" / name).read_bytes(), name


def test_fit_configs_carry_the_task_overrides(project):
    write_params(project / "params.yaml", tiny_params())
    p = load_params()
    assert p.fit_for("denoise").ema_weight == 0.9 and p.fit_for("inpaint").ema_weight == 0.0
    assert p.fit_for("denoise", reg_noise_std=0.0).reg_noise_std == 0.0
    assert p.fit_for("denoise").iterations == 12 == p.fit.iterations


def _leaves(tree) -> list:
    return [v for x in tree.values() for v in (_leaves(x) if isinstance(x, dict) else [x])]


def test_a_fitting_stage_shows_each_fit_live_and_ends_it_with_one_line(project, caplog):
    """While dense_fit runs, its fit's history goes to live/<its --out>, one row per log step; the terminal gets
    one line for the fit: what it is, iterations, s/it and its PSNR at the reported points."""
    import logging

    from lipcore.fit import progress_log

    params = tiny_params(images=["f16"])
    write_params(project / "params.yaml", params)
    caplog.set_level(logging.INFO, logger="lipcore.trials")
    run_chain(params)
    live = project / "live" / layout.round_dir(layout.pair_rounds("f16", "denoise"), 0, 0)
    fit = "rounds_f16-denoise_s0_r0"  # the round's label, as a file name
    rows = [r.split("\t") for r in (live / f"{fit}.tsv").read_text().splitlines()]
    cfg = params["fit"]
    assert rows[0] == ["iteration", "loss", "psnr_out", "psnr_ema"]
    assert [int(r[0]) for r in rows[1:]] == list(range(cfg["log_every"], cfg["iterations"] + 1, cfg["log_every"]))
    history = json.loads((layout.round_dir(layout.pair_rounds("f16", "denoise"), 0, 0) / layout.HISTORY).read_text())
    assert [float(r[3]) for r in rows[1:]] == pytest.approx(history["psnr_ema"], rel=1e-5)
    latest = json.loads((live / "progress.json").read_text())
    assert latest[fit]["iteration"] == cfg["iterations"]
    lines = [r.getMessage() for r in caplog.records if r.name == "lipcore.trials"]
    (line,) = [m for m in lines if m.startswith("rounds f16-denoise s0 r0:")]
    assert line.startswith(f"rounds f16-denoise s0 r0: {cfg['iterations']} iterations") and "s/it" in line
    assert "dB at ES-WMV" in line and "oracle best" in line
    assert not progress_log.handlers and not progress_log.isEnabledFor(logging.DEBUG)  # put back after the stage


def test_a_cuda_round_records_its_numerics_and_a_cpu_round_does_not(project, monkeypatch):
    """numerics.json (GPU, versions, precision, TF32) lands in a round run on CUDA, and a rerun may replace that
    directory; on CPU nothing is added, so the committed CPU outputs keep their bytes."""
    write_params(project / "params.yaml", tiny_params())
    degrade.main(["--image", "data/f16.png", "--name", "f16", "--task", "denoise", "--out", "outs/degrade/a"])
    dense = ["--obs", "outs/degrade/a", "--task", "denoise", "--seed", "0", "--out", "outs/r0"]
    dense_fit.main(dense)
    assert not (project / "outs/r0" / layout.NUMERICS).exists()
    seen = []
    record = {"gpu": "a fake one", "tf32": False}
    with monkeypatch.context() as patched:
        patched.setattr(artifacts, "resolve_device", lambda name: torch.device("meta"))  # a non-CPU device
        patched.setattr(artifacts, "cuda_numerics", lambda *a: seen.append(a) or record)
        dense_fit.main(dense)  # replaces the CPU round's directory
    assert json.loads((project / "outs/r0" / layout.NUMERICS).read_text()) == record
    assert seen == [(torch.device("meta"), "fp32", False)]
    dense_fit.main(dense)  # and a CPU rerun replaces the CUDA one
    assert not (project / "outs/r0" / layout.NUMERICS).exists()
