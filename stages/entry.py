"""What every stage does first: its command line, logging, and the process-wide CPU allocator setting.

The allocator setting (lipcore.runtime.tune_cpu_allocator) is process-wide and cannot be undone, so it is
made here, in the entry point, never inside lipcore. Opt out with LIP_NO_ALLOCATOR_TUNING=1 (or by setting
any MALLOC_* variable yourself).
"""

from __future__ import annotations

import argparse
import logging
import sys

from lipcore.runtime import tune_cpu_allocator


def parser(description: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return ap


def start(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the stage's arguments; log progress (one line per fit) to stderr; tune the CPU allocator."""
    args = ap.parse_args(argv)
    if not logging.getLogger().handlers:  # an embedding program (or pytest) may have set up logging already
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    tune_cpu_allocator()
    return args
