"""bench/run_length.py: the pilot's two run-length rules, on hand-made curves (the fits themselves are bench work)."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("run_length", Path(__file__).parents[1] / "bench" / "run_length.py")
run_length = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_length)


def test_the_peak_rule_puts_the_share_th_peak_before_the_early_part_of_the_run():
    # 10 fits: the 9th smallest peak (90%) is 935, so L must satisfy 0.8 L >= 935: 1169 -> 1200 in steps of 100
    peaks = [600, 620, 640, 660, 700, 720, 760, 800, 935, 2000]
    assert run_length.shortest_length(peaks, 0.8, 0.9, 100) == 1200
    assert run_length.shortest_length(peaks, 0.8, 1.0, 100) == 2500  # every fit: the 2000 peak decides


def test_the_plateau_rule_finds_the_first_run_whose_last_fifth_gains_less_than_flat():
    # best-so-far PSNR at 100, 200, ...: a fit that rises 1 dB per 100 steps to step 1000 and then creeps up by
    # 0.06 dB per 100 steps, and one that rises 1 dB per 100 steps to step 500 and then stays flat
    creeping = [20 + min(k, 10) + 0.06 * max(0, k - 10) for k in range(1, 41)]
    flat_after_500 = [20 + min(k, 5) for k in range(1, 41)]
    # the flat fit: L = 500 gains 1 dB over 400 -> 500; L = 600 gains nothing over 500 -> 600
    assert run_length.plateau_length([flat_after_500], 0.8, 0.9, 100, 0.1) == 600
    # the creeping fit: L = 1100 spans 900 -> 1100 (1.06 dB); from L = 1200 on, the last fifth of L holds at
    # least 200 steps of creep (0.12 dB, growing with L): under 0.3 dB at 1200, never under 0.1
    assert run_length.plateau_length([creeping], 0.8, 0.9, 100, 0.1) is None
    assert run_length.plateau_length([creeping], 0.8, 0.9, 100, 0.3) == 1200
    # with a share of one half, the flat fit alone decides; with every fit, the creeping one
    assert run_length.plateau_length([creeping, flat_after_500], 0.8, 0.5, 100, 0.1) == 600
    assert run_length.plateau_length([creeping, flat_after_500], 0.8, 1.0, 100, 0.3) == 1200


def test_the_plateau_rule_reads_the_best_so_far_so_a_falling_fit_counts_as_flat():
    overfitting = [20 + min(k, 6) - 0.5 * max(0, k - 6) for k in range(1, 21)]  # peaks at 600, then falls
    assert run_length.plateau_length([overfitting], 0.8, 1.0, 100, 0.1) == 700  # 600 -> 700: the best stays at 600's


def test_best_every_keeps_the_best_logged_value_up_to_each_multiple_of_the_step():
    history = {"iteration": [0, 50, 100, 150, 200, 250, 300], "psnr": [10.0, 12.0, 11.0, 15.0, 13.0, 14.0, 14.5]}
    assert run_length.best_every(history, "psnr", 100) == [12.0, 15.0, 15.0]
