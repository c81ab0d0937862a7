"""Progress while a stage runs: every fit's history, through DVCLive, as the fit goes.

lipcore.fit emits a progress record every `log_every` iterations (lipcore.fit.progress_log, DEBUG), and only while
a handler listens (each record costs a host read of one history row). While a fitting stage runs, this module's
handler writes those rows with DVCLive into live/<the stage's --out>/: metrics.json (every fit's latest values)
and plots/metrics/<fit>/<column>.tsv (per iteration), which `dvc plots show live/...`, the VS Code DVC extension's
plots of a path, or `tail -f` read while the stage is still running. They are scratch, not results: git ignores
live/, and dvc.yaml does not declare them, so that `dvc exp show` and the plots page hold only the results.
On the terminal each fit ends with one line (lipcore.trials): what it is, its length and speed, its PSNR.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from lipcore.fit import progress_log

LIVE = Path("live")
COLUMNS = ("loss", "psnr_out", "psnr_ema")  # per fit: the data loss, the PSNR of the output and of its average


class LiveFits(logging.Handler):
    """Writes each progress record of lipcore.fit to a DVCLive directory, one metric per fit and column."""

    def __init__(self, directory: Path) -> None:
        super().__init__(logging.DEBUG)
        from dvclive import Live  # here, not at the top: about a second of imports, for fitting stages only

        # no dvc.yaml, no experiment of its own, no report: files only (a stage runs inside the user's dvc repro)
        self.live = Live(str(directory), dvcyaml=False, save_dvc_exp=False, report=None)

    def emit(self, record: logging.LogRecord) -> None:
        self.live.step = record.iteration
        for label, row in zip(record.labels, record.rows):
            for column in COLUMNS:
                if row[column] == row[column]:  # NaN: not measured (no ground truth to score with)
                    self.live.log_metric(f"{metric_name(label)}/{column}", row[column])
        self.live.make_summary()


def metric_name(label: str) -> str:
    """A fit's label as a DVCLive metric folder: no spaces or slashes."""
    return re.sub(r"[^\w.@=-]+", "_", label).strip("_") or "fit"


@contextlib.contextmanager
def watching(directory: Path) -> Iterator[None]:
    """While the block runs, lipcore's progress records go to DVCLive in `directory` (and not to the terminal)."""
    handler = LiveFits(directory)
    level, propagate = progress_log.level, progress_log.propagate
    progress_log.addHandler(handler)
    progress_log.setLevel(logging.DEBUG)
    progress_log.propagate = False  # a line per log step would drown the one line per fit
    try:
        yield
    finally:
        progress_log.removeHandler(handler)
        progress_log.setLevel(level)
        progress_log.propagate = propagate
        handler.live.end()


def watches_fits(main: Callable[[list[str] | None], None]) -> Callable[[list[str] | None], None]:
    """Decorate a fitting stage's main(argv): its fits' progress goes to live/<its --out> while it runs."""

    @functools.wraps(main)
    def watched(argv: list[str] | None = None) -> None:
        args = sys.argv[1:] if argv is None else list(argv)
        if "--out" not in args[:-1]:  # argparse will say what is missing
            return main(argv)
        with watching(live_dir(args[args.index("--out") + 1])):
            return main(argv)

    return watched


def live_dir(out: str) -> Path:
    """live/<out>, always inside live/ (DVCLive empties its directory: never the stage's output itself)."""
    return LIVE.joinpath(*[p for p in Path(out).parts if p not in ("/", "..", ".")])
