"""What every stage does first: its command line, logging, and the process-wide CPU allocator setting.

The allocator setting (lipcore.runtime.tune_cpu_allocator) is process-wide and cannot be undone, so it is
made here, in the entry point, never inside lipcore. Opt out with LIP_NO_ALLOCATOR_TUNING=1 (or by setting
any MALLOC_* variable yourself).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from lipcore.fit import FitDiverged
from lipcore.runtime import tune_cpu_allocator

# What a stage refuses (bad params, inputs or paths) and fits that diverge: reported as one line naming the
# stage and its arguments (which name the image, task, seed and round), without a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FitDiverged)


def parser(description: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return ap


def output_file(suffix: str, signature: tuple[str, ...] = ()) -> Callable[[str], Path]:
    """An argparse type for a file a stage writes (metrics JSON, plot CSV, figure PNG): its name must end in
    `suffix`, and an existing one must look like this stage's (a JSON object with the keys, or a CSV header with the
    columns, of `signature`; a PNG image), so that a wrong argument (`--metrics params.yaml`, another stage's
    metrics) is refused."""

    def check(value: str) -> Path:
        path = Path(value)
        if path.suffix != suffix:
            raise argparse.ArgumentTypeError(f"{value}: this output is a {suffix} file; refusing to write it elsewhere")
        if path.exists() and not (path.is_file() and _holds(path, signature)):
            raise argparse.ArgumentTypeError(
                f"{value} exists and is not an output of this stage (expected {list(signature)} in it); "
                "refusing to replace it"
            )
        return path

    return check


def _holds(path: Path, signature: tuple[str, ...]) -> bool:
    """Whether a JSON object has the keys, or a CSV's header the columns, of `signature`; or a PNG is one."""
    try:
        if path.suffix == ".png":
            with path.open("rb") as f:
                return f.read(8) == b"\x89PNG\r\n\x1a\n"
        if path.suffix == ".json":
            record = json.loads(path.read_text())
            return isinstance(record, dict) and all(k in record for k in signature)
        with path.open() as f:
            header = f.readline().strip().split(",")
        return all(k in header for k in signature)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def start(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the stage's arguments; log progress (one line per fit) to stderr; tune the CPU allocator."""
    args = ap.parse_args(argv)
    if not logging.getLogger().handlers:  # an embedding program (or pytest) may have set up logging already
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    tune_cpu_allocator()
    return args


def run(main: Callable[[], None]) -> None:
    """Run a stage's main as a command (`python -m stages.<name> ...`). A refused input or a diverged fit ends
    the process with status 1 and one line on stderr naming the stage and its arguments; set LIP_TRACEBACK=1
    for the traceback. Every stage writes its outputs last and atomically, so nothing was written."""
    try:
        main()
    except USER_ERRORS as err:
        if os.environ.get("LIP_TRACEBACK"):
            raise
        stage = Path(sys.argv[0]).stem
        print(f"ERROR: stage {stage} ({' '.join(sys.argv[1:])}): {err}", file=sys.stderr)
        sys.exit(1)
