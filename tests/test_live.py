"""stages.plumbing.live: a fitting stage's progress as TSV files under live/, from lipcore's progress records."""

import logging
from pathlib import Path

from lipcore.fit import progress_log
from stages.plumbing import layout, live


def _emit(labels, rows):
    record = logging.LogRecord(progress_log.name, logging.DEBUG, __file__, 0, "progress", None, None)
    record.labels, record.rows = labels, rows
    progress_log.handle(record)


def test_progress_rows_land_in_one_tsv_per_fit_and_the_latest_in_progress_json(tmp_path):
    directory = tmp_path / "live" / "outs" / "r1"
    before = (list(progress_log.handlers), progress_log.level, progress_log.propagate)
    row = {"iteration": 10, "loss": 0.5, "psnr_out": 20.0, "psnr_ema": float("nan")}
    with live.watching(directory):
        _emit(["f16-denoise s0 r1", "a/b c"], [row, {**row, "iteration": 10, "psnr_ema": 21.0}])
        _emit(["f16-denoise s0 r1"], [{**row, "iteration": 20, "psnr_out": 22.5}])
    assert (list(progress_log.handlers), progress_log.level, progress_log.propagate) == before  # put back after
    lines = (directory / "f16-denoise_s0_r1.tsv").read_text().splitlines()
    assert lines == ["iteration\tloss\tpsnr_out\tpsnr_ema", "10\t0.5\t20\t", "20\t0.5\t22.5\t"]  # NaN: empty cell
    assert (directory / "a_b_c.tsv").exists()  # no slash or space in a file name
    latest = (directory / layout.LIVE_PROGRESS).read_text()
    assert '"iteration": 20' in latest and '"a_b_c"' in latest
    with live.watching(directory):  # a rerun starts afresh
        pass
    assert not list(directory.glob("*.tsv"))


def test_the_live_directory_stays_inside_live_whatever_out_is_given():
    assert live.live_dir("outs/rounds/x/s0/r1") == Path("live/outs/rounds/x/s0/r1")
    assert live.live_dir("/abs/../outs/./x") == Path("live/abs/outs/x")  # never outside live/: it deletes files there
    assert live.metric_name("  ") == "fit"
