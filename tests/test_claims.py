"""stages.reporting.claims: pairs are assembled per (image, task, seed), and the claims read their verdicts."""

import pytest

from stages.reporting import claims


def scores(es: float, oracle: float | None = None) -> dict:
    return {"es": {"psnr": es}, "oracle_best": {"psnr": es if oracle is None else oracle}}


def record(image: str, task: str, per_method: dict[str, list[float]], head: int = 3) -> dict:
    """A hand-made evaluate record: per-seed ES PSNRs per method; LIP's curve from round 0 (its dense) to `head`."""
    per_seed = {m: [scores(v) for v in vals] for m, vals in per_method.items()}
    curve = {"0": per_seed["dense"], str(head): per_seed["lip"]}
    nominal = {0: 0.0, head: 1 - 0.8**head}
    return {
        "summary": {
            "image": image,
            "task": task,
            "headline": {"round": head, "nominal_sparsity": nominal[head]},
            "curves": {"lip": [{"round": k, "nominal_sparsity": s} for k, s in nominal.items()]},
        },
        "per_seed": per_seed,
        "per_seed_curves": {"lip": curve},
    }


# Two problems x two seeds. LIP beats random by 1, 0.5, 1, 0.5 dB (the stats test's table), ties dense
# within noise, and loses to SNIP on every pair.
RECORDS = {
    "a-denoise": record(
        "a", "denoise", {"lip": [30.0, 31.0], "random_global": [29.0, 30.5], "dense": [30.2, 30.8], "snip": [31, 32]}
    ),
    "b-denoise": record(
        "b", "denoise", {"lip": [32.0, 29.5], "random_global": [31.0, 29.0], "dense": [31.9, 29.7], "snip": [33, 31]}
    ),
}


def test_pairs_are_lip_and_the_method_on_the_same_problem_and_seed():
    lip, rand = claims.headline_pairs(RECORDS, "random_global", "es")
    assert lip == [30.0, 31.0, 32.0, 29.5] and rand == [29.0, 30.5, 31.0, 29.0]


def test_comparisons_and_verdicts_on_a_hand_made_table():
    compared = claims.comparisons(RECORDS, "es")
    assert compared["random_global"].mean == pytest.approx(0.75)
    assert compared["random_global"].verdict == "better"
    assert compared["dense"].verdict == "no difference"
    assert compared["snip"].verdict == "worse" and compared["snip"].wins == 0
    assert "decoder" not in compared  # not fitted in these records: not compared


def test_claims_say_holds_not_shown_or_reversed():
    lines = "\n".join(claims.claims_section(RECORDS, {"per_seed": {}}, {}, "es"))
    dense = next(line for line in lines.splitlines() if line.startswith("| LIP ≈ dense DIP"))
    assert dense.endswith("**holds** |")  # LIP - dense: [-0.35, +0.30] dB, within the 0.5 dB margin
    assert "LIP − random_global +0.75 dB" in lines
    snip = next(line for line in lines.splitlines() if line.startswith("| LIP > SNIP"))
    assert snip.endswith("**reversed** |")
    assert "no multi-image group in this run" in lines


def test_lip_against_dense_along_the_rounds():
    ((k, sparsity, p),) = claims.rounds_against_dense(RECORDS, "es")
    assert k == 3 and sparsity == pytest.approx(0.488) and p.n == 4
    assert p.mean == pytest.approx((-0.2 + 0.2 + 0.1 - 0.2) / 4)


def test_cross_task_transfer_pairs_a_moved_mask_with_the_targets_own():
    records = {
        "a-denoise": record("a", "denoise", {"lip": [30.0, 31.0], "random_global": [29.0, 29.5], "dense": [30, 31]}),
        "a-inpaint": record("a", "inpaint", {"lip": [25.0, 26.0], "random_global": [24.0, 24.5], "dense": [25, 26]}),
    }
    transfer = {"per_seed": {"a-denoise": {"a-inpaint": [scores(24.5), scores(25.0)]}}}
    pairs = claims.transfer_pairs(records, transfer, "es", "task")
    assert pairs["own"] == ([24.5, 25.0], [25.0, 26.0])
    assert pairs["random_global"] == ([24.5, 25.0], [24.0, 24.5])
    assert claims.transfer_pairs(records, transfer, "es", "image")["own"] == ([], [])


def test_multi_image_mask_is_compared_with_the_mean_of_the_members_masks():
    def row(method, seed, value):
        return {"round": 2, "heldout": "h", "seed": seed, "method": method, **scores(value)}

    values = {"multi_shared": [30.0, 31.0], "single_a": [29.0, 29.0], "single_b": [28.0, 30.0]}
    values |= {"random_global": [27.0, 27.5], "own": [30.5, 31.5]}
    rows = [row(m, s, v) for m, vals in values.items() for s, v in enumerate(vals)]
    result = {"summary": {"modes": ["shared"]}, "rows": rows}
    (r,) = claims.multi_comparisons(result, "es")
    assert r["single"] == pytest.approx(29.0)  # mean over members, then over (held-out, seed)
    assert r["vs_single"].mean == pytest.approx(((30 - 28.5) + (31 - 29.5)) / 2) and r["vs_single"].n == 2
    assert r["vs_own"].mean == pytest.approx(-0.5)


def test_a_parity_claim_needs_a_tight_interval_not_just_one_that_holds_zero():
    from lipcore.stats import paired

    assert claims.parity(paired([30.0, 31.0, 29.0], [30.1, 30.9, 29.1])) == "holds"
    wide = paired([30.0, 33.0, 27.0], [30.0, 30.0, 30.0])  # mean 0, interval about +-7 dB
    assert wide.verdict == "no difference" and claims.parity(wide).startswith("not shown")
    assert claims.parity(paired([29.0, 28.0, 28.5], [30.0, 29.1, 29.6])) == "does not hold"


def _group(train, heldout, values_by_image):
    """A hand-made multi_evaluate result: per held-out image, per method, one ES PSNR per seed (round 2)."""
    rows = [
        {"round": 2, "heldout": h, "seed": s, "method": m, **scores(v)}
        for h, values in values_by_image.items()
        for m, vals in values.items()
        for s, v in enumerate(vals)
    ]
    summary = {"modes": ["shared"], "train": train, "heldout": heldout, "task": "denoise"}
    return {"summary": summary, "rows": rows}


def test_two_groups_scored_on_each_others_images_pool_their_held_out_pairs():
    """Issue 26: a pair of groups, each group's masks scored on the other's images, gives one comparison over
    both groups' held-out (image, seed) pairs; a group without such a partner stands alone."""
    one = {"multi_shared": [31.0, 30.0], "single_x": [30.0, 30.0], "random_global": [28.0, 28.0], "own": [31, 31]}
    other = {"multi_shared": [29.0, 29.5], "single_x": [30.0, 29.0], "random_global": [27.0, 27.0], "own": [30, 30]}
    multi = {
        "nat_a": _group(["p", "q"], ["r", "s"], {"r": one, "s": one}),
        "nat_b": _group(["r", "s"], ["p", "q"], {"p": other, "q": other}),
        "lonely": _group(["p", "r"], ["q"], {"q": one}),
    }
    assert claims.cross_scored(multi) == [("nat_a", "nat_b")]
    (pooled,) = claims.pooled_comparisons(multi, ("nat_a", "nat_b"), "es")
    # 2 held-out images x 2 seeds per group: 8 pairs; differences +1, 0 (x2 images) and -1, +0.5 (x2 images)
    assert pooled["n"] == 8 and pooled["vs_single"].n == 8
    assert pooled["vs_single"].mean == pytest.approx((1 + 0 - 1 + 0.5) / 4)
    lines = claims.multi_claims(multi, "es", head=2)
    assert len(lines) == 2 and "nat_a + nat_b" in lines[0] and "on 8 held-out" in lines[0]
    assert "group lonely" in lines[1] and "on 2 held-out" in lines[1]
    section = "\n".join(claims.multi_section(multi, "es"))
    assert "groups nat_a + nat_b, pooled" in section and "| 2 | shared | 8 |" in section


def test_the_run_length_check_counts_late_peaks_and_fits_that_stopped_themselves():
    """The rule: the dense peak before 80% of the iterations run in at least 90% of a task's fits."""

    def dense(best, ran, detected=None):
        return {
            "es": {"psnr": 30.0},
            "oracle_best": {"psnr": 31.0, "iteration": best},
            "last": {"iteration": ran},
            "es_detected": detected,
        }

    def rec(task, fits):
        return {"summary": {"task": task}, "per_seed": {"dense": fits}}

    early = [dense(400, 1000)] * 9
    records = {
        "a-denoise": rec("denoise", [*early, dense(700, 750, 740)]),  # 9 of 10 early, one stopped by ES
        "a-inpaint": rec("inpaint", [dense(900, 1000)] * 2 + [dense(100, 1000)] * 8),  # 8 of 10 early
    }
    check = claims.run_length_check(records)
    assert check["denoise"]["holds"] and check["denoise"]["peak_early"] == 9 and check["denoise"]["stopped_by_es"] == 1
    assert not check["inpaint"]["holds"] and check["inpaint"]["peak_early"] == 8
    table = "\n".join(claims.run_length_lines(records))
    assert "| denoise | 10 |" in table and "**passes**" in table and "**fails**" in table

    # noise-free tasks: a late peak that gains < 0.1 dB over the last fifth passes as a plateau
    def creeping(gain):  # peak at the end, the best so far rising `gain` dB after 80% of the run
        return {**dense(1000, 1000), "best_by_tenth": [20.0 + t for t in range(7)] + [27.0, 27.0, 27.0 + gain]}

    assert claims.late_gain(creeping(0.05)) == pytest.approx(0.05)  # the best at 80% (the 8th tenth) to the end
    plateau = {"b-sr4": rec("sr4", [creeping(0.05)] * 9 + [creeping(0.5)])}
    check = claims.run_length_check(plateau)["sr4"]
    assert not check["holds"] and check["plateau"] and check["flat"] == 9
    assert "| 9 of 10 (" in "\n".join(claims.run_length_lines(plateau))
    assert "**passes (plateau)**" in "\n".join(claims.run_length_lines(plateau))
    creep = {"b-sr4": rec("sr4", [creeping(0.05)] * 8 + [creeping(0.5)] * 2)}
    assert not claims.run_length_check(creep)["sr4"]["plateau"]
    assert claims.run_length_check(records)["denoise"]["flat"] is None  # records from before best_by_tenth
    # the report's header says each task's run length when the tasks ran for different lengths (task_defs)
    assert claims.run_lengths(records) == "1000 iterations per fit"
    records["a-sr4"] = rec("sr4", [dense(100, 3000)])
    assert claims.run_lengths(records) == "iterations per fit: denoise 1000, inpaint 1000, sr4 3000"
    assert claims.run_lengths({}) == "no dense fit recorded its length"


def test_a_creeping_task_passes_when_lip_minus_dense_is_flat_over_the_last_fifth():
    """Both fits still rise (no plateau), but LIP - dense, paired per fit, moves less than 0.1 dB after 80% of
    the run: stopping earlier would not have changed the headline. A shift of 0.3 dB fails."""

    def fit(rise_late, round_=0, base=30.0):  # best so far at each tenth, peak at the end: rises `rise_late` dB
        tenths = [base - 5 + t * 0.5 for t in range(8)] + [base, base + rise_late]
        tenths[7] = base - 0.001  # the 8th tenth: just below the 9th
        return {
            "round": round_,
            "es": {"psnr": base},
            "oracle_best": {"psnr": tenths[-1], "iteration": 3000},
            "last": {"iteration": 3000},
            "es_detected": None,
            "best_by_tenth": tenths,
        }

    def rec(dense_late, lip_late):
        per_seed = {"dense": [fit(g) for g in dense_late], "lip": [fit(g, round_=10, base=29) for g in lip_late]}
        return {"summary": {"task": "sr4"}, "per_seed": per_seed}

    dense_late = [0.40, 0.35, 0.45, 0.30, 0.50, 0.38]  # every fit creeps: no plateau
    close = {"a-sr4": rec(dense_late, [g + d for g, d in zip(dense_late, [0.02, -0.03, 0.01, 0.0, -0.01, 0.03])])}
    check = claims.run_length_check(close)["sr4"]
    assert not check["holds"] and not check["plateau"] and check["flat"] == 0
    assert check["lip_shift"].n == 6 and check["lip_shift"].mean == pytest.approx(0.02 / 6, abs=1e-9)
    assert check["lip_flat"]
    assert "**passes (LIP − dense flat)**" in "\n".join(claims.run_length_lines(close))
    moving = {"a-sr4": rec(dense_late, [g + 0.3 for g in dense_late])}  # LIP catches up 0.3 dB late in the run
    check = claims.run_length_check(moving)["sr4"]
    assert check["lip_shift"].mean == pytest.approx(0.3) and not check["lip_flat"]
    assert "**fails**" in "\n".join(claims.run_length_lines(moving))
    # records from before LIP's best_by_tenth was recorded: no shift, the check as before
    for lip in close["a-sr4"]["per_seed"]["lip"]:
        del lip["best_by_tenth"]
    assert claims.run_length_check(close)["sr4"]["lip_shift"] is None
    assert "| – | **fails** |" in "\n".join(claims.run_length_lines(close))


def test_the_channel_tickets_table_pairs_each_round_with_dense_and_the_lip_round_of_nearest_size():
    """A hand-made record: two seeds, two channel rounds; LIP rounds of 80% and 50% of the parameters."""
    from stages.reporting import structured

    def s(v):
        return {"es": {"psnr": v}}

    rec = {
        "per_seed_curves": {"lip": {"0": [s(30.0), s(31.0)], "1": [s(30.5), s(31.2)], "2": [s(29.0), s(30.0)]}},
        "channels": {
            "fraction": 0.1,
            "dense": {"parameters": 1000, "flops": 400},
            "lip_parameters": {"1": [800, 800], "2": [500, 500]},
            "per_seed": [
                [
                    {"round": 1, "parameters": 780, "flops": 300, **s(30.2)},
                    {"round": 2, "parameters": 600, "flops": 200, **s(29.6)},
                ],
                [
                    {"round": 1, "parameters": 780, "flops": 300, **s(31.1)},
                    {"round": 2, "parameters": 600, "flops": 200, **s(30.4)},
                ],
            ],
        },
    }
    one, two = structured.rows({"a": rec}, "es")
    assert one["lip_rounds"] == [1] and two["lip_rounds"] == [2]  # 600 is nearer 500 than 800
    assert one["vs_dense"].mean == pytest.approx(0.15) and two["vs_lip"].mean == pytest.approx(0.5)
    assert one["parameters"] == pytest.approx(0.78) and two["flops_ratio"] == pytest.approx(2.0)
    assert structured.within(one["vs_dense"]) in ("yes", "not shown", "no")
    rec["channels"]["lip_parameters"] = {}  # no IMP round to compare with: the LIP columns stay empty
    (alone, _) = structured.rows({"a": rec}, "es")
    assert alone["vs_lip"] is None and "| 1 | 2 | 78.0% | 1.33 |" in "\n".join(structured.section({"a": rec}, "es"))
