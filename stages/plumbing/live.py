"""Progress while a stage runs: every fit's history, written as the fit goes.

lipcore.fit emits a progress record every `log_every` iterations (lipcore.fit.progress_log, DEBUG), and only while
a handler listens (each record costs a host read of one history row). While a fitting stage runs, this module's
handler appends those rows to live/<the stage's --out>/<fit>.tsv (iteration, loss, psnr_out, psnr_ema; DVC's
tabular plot format) and rewrites live/<out>/progress.json (every fit's latest row), which
`dvc plots show live/<out>/<fit>.tsv -x iteration -y psnr_ema`, the VS Code DVC extension's plots of a path, or
`tail -f` read while the stage is still running. They are scratch, not results: git ignores live/, and dvc.yaml
does not declare them, so that `dvc exp show` and the plots page hold only the results. On the terminal each fit
ends with one line (lipcore.trials): what it is, its length and speed, its PSNR.

Not DVCLive: its Live() opens the DVC repository and git in every stage process (about a second, and it raises in
a repository without commits) and is built for one training script per experiment, not dozens of concurrent
stages; the files here are the same tabular format, without those side effects.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from lipcore import io
from lipcore.fit import progress_log

from . import layout

COLUMNS = ("iteration", "loss", "psnr_out", "psnr_ema")  # the data loss, the PSNR of the output and of its average


class LiveFits(logging.Handler):
    """Appends each progress record of lipcore.fit to its fits' TSV files in `directory`."""

    def __init__(self, directory: Path) -> None:
        super().__init__(logging.DEBUG)
        self.directory = Path(directory)
        if self.directory.exists():  # a rerun starts its progress afresh
            for old in [*self.directory.glob("*.tsv"), self.directory / layout.LIVE_PROGRESS]:
                old.unlink(missing_ok=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.latest: dict[str, dict[str, float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        for label, row in zip(record.labels, record.rows):
            name = metric_name(label)
            path = self.directory / f"{name}.tsv"
            new = not path.exists()
            with path.open("a") as f:
                if new:
                    f.write("\t".join(COLUMNS) + "\n")
                f.write("\t".join(_cell(row[c]) for c in COLUMNS) + "\n")
            self.latest[name] = {c: row[c] for c in COLUMNS}
        io.write_json(self.directory / layout.LIVE_PROGRESS, self.latest)


def _cell(value: float) -> str:
    return "" if value != value else f"{value:.6g}"  # NaN (no ground truth to score with): an empty cell


def metric_name(label: str) -> str:
    """A fit's label as a file name: no spaces or slashes."""
    return re.sub(r"[^\w.@=-]+", "_", label).strip("_") or "fit"


@contextlib.contextmanager
def watching(directory: Path) -> Iterator[None]:
    """While the block runs, lipcore's progress records go to the files in `directory` (and not to the terminal)."""
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
    """live/<out>, always inside live/ (LiveFits deletes the files it finds there: never the stage's output)."""
    return layout.scratch_dir(layout.LIVE, out)
