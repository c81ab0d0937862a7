"""The pilots that set the studies' run lengths (bench/run_length.py, bench/gan_search_length.py): their rules on
hand-made curves (the fits and searches themselves are bench work)."""

import importlib.util
from pathlib import Path

import torch


def bench_script(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_length = bench_script("run_length")
gan_search_length = bench_script("gan_search_length")


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


def test_the_gan_pilot_keeps_each_images_best_restart_at_the_search_length_and_measures_its_last_fifth():
    # 2 images x 2 restarts, 10 steps. Image 0: restart 1 ends lower (1.0 against 2.0); image 1: restart 0 (0.5).
    # At step 10 (index 9) the chosen rows are 1 and 2; at step 8 (0.8 x 10, index 7) they stood at 1.5 and 0.5:
    # a mean of 1.0 shed to 0.75, a third of the end's 0.75
    losses = torch.ones(10, 4)
    losses[:, 0] = 2.0
    losses[7, 1], losses[9, 1] = 1.5, 1.0
    losses[7, 2], losses[9, 2] = 0.5, 0.5
    losses[:, 3] = 3.0
    drop, pick = gan_search_length.last_fifth_drop(losses, restarts=2, length=10, window=1)
    assert pick.tolist() == [1, 2]
    assert abs(drop - 1 / 3) < 1e-6
    # a search of 5 steps judges by step 5 (index 4), where every chosen row is flat
    drop, pick = gan_search_length.last_fifth_drop(losses, restarts=2, length=5, window=1)
    assert drop == 0.0


def test_the_gan_pilot_averages_each_end_of_the_last_fifth_over_a_window_so_jitter_is_not_a_trend():
    # one image, one restart: a flat loss of 1 jittering by +-0.5 every other step. A search of 15 steps read at
    # single steps compares step 12 (1.5) with step 15 (0.5): a drop of 200%; windows of 4 steps read 1 and 1
    losses = torch.tensor([1.5 if i % 2 else 0.5 for i in range(20)]).view(20, 1)
    drop, _ = gan_search_length.last_fifth_drop(losses, restarts=1, length=15, window=1)
    assert abs(drop - 2.0) < 1e-6
    drop, _ = gan_search_length.last_fifth_drop(losses, restarts=1, length=15, window=4)
    assert drop == 0.0
