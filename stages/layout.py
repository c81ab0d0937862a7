"""Every directory and file name of the pipeline, in one place.

dvc.yaml spells the same directories for DVC, which cannot ask Python; tests/test_layout.py checks that
every output dvc.yaml declares is the path this module gives. Stages get their directories on the command
line (from dvc.yaml) and ask this module for every name inside them; no other module spells a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lipcore import io

DATA = Path("data")
MASK_IMAGES = DATA / "masks"  # every inpainting mask image lives here: one degrade dependency covers them
DEGRADE = Path("outs/degrade")
ROUNDS = Path("outs/rounds")
EVALUATE = Path("outs/evaluate")
TRANSFER = Path("outs/transfer")
MULTI = Path("outs/multi")
METRICS = Path("metrics")
PLOTS = Path("plots")
REPORT = Path("report")

# ---------------------------------------------------------------- directories


def pair_id(image: str, task: str) -> str:
    """The name of one image x task problem (dvc.yaml: ${item.image}-${item.task})."""
    return f"{image}-{task}"


def image_file(image: str) -> Path:
    return DATA / f"{image}.png"


def degrade_dir(image: str, task: str) -> Path:
    return DEGRADE / pair_id(image, task)


def pair_rounds(image: str, task: str) -> Path:
    """The directory of one problem's IMP rounds, all seeds."""
    return ROUNDS / pair_id(image, task)


def round_dir(rounds: Path, seed: int, k: int) -> Path:
    """Round k (0: the dense fit) of initialisation `seed`, inside a problem's rounds directory."""
    return Path(rounds) / f"s{seed}" / f"r{k}"


def multi_id(group: str) -> str:
    """The name of a multi-image group's outputs beside the problems' (dvc.yaml: multi-${item.group})."""
    return f"multi-{group}"


def multi_rounds(group: str, mode: str) -> Path:
    """The IMP rounds of one multi-image group searched in one mode, all seeds (s<seed>/r<round> inside)."""
    return MULTI / group / mode


def multi_evaluate_dir(group: str) -> Path:
    return EVALUATE / multi_id(group)


def multi_metrics(group: str) -> Path:
    return METRICS / f"{multi_id(group)}.json"


def evaluate_dir(image: str, task: str) -> Path:
    return EVALUATE / pair_id(image, task)


def headline_metrics(image: str, task: str) -> Path:
    return METRICS / f"{pair_id(image, task)}.json"


def sparsity_plot(image: str, task: str) -> Path:
    return PLOTS / "sparsity" / f"{pair_id(image, task)}.csv"


def iteration_plot(image: str, task: str) -> Path:
    return PLOTS / "iteration" / f"{pair_id(image, task)}.csv"


TRANSFER_METRICS = METRICS / "transfer.json"

# ---------------------------------------------------------------- files inside a degrade directory

OBSERVATION = "observation.safetensors"  # y and the operator's state (its random parts)
CLEAN = "clean.safetensors"  # x_true: for scoring only, never read by a fit
CLEAN_PNG = "clean.png"
DEGRADED_PNG = "degraded.png"

# ---------------------------------------------------------------- files inside a round directory

INIT = "init.safetensors"  # theta_0 (all parameters and BN buffers) and z
REWIND = "rewind.safetensors"  # the weights IMP rewinds to (theta_0, or the state at rewind_iteration)
TRAINED = "trained.safetensors"  # weights after the search fit (what the next round prunes)
MASK = "mask.safetensors"  # absent in round 0
HISTORY = "history.json"
FIT_METRICS = "metrics.json"


def output_png(point: str) -> str:
    """The reported output at `point` (last, es, oracle_best)."""
    return f"output_{point}.png"


# ---------------------------------------------------------------- evaluate, transfer, report

RESULTS = "results.json"  # inside an evaluate directory: every number, per seed


def method_png(method: str) -> str:
    """Inside an evaluate directory: the output of one method (dense, lip, a baseline, decoder)."""
    return f"{method}.png"


MATRIX = "matrix.json"  # inside the transfer directory
REPORT_MD = "report.md"
CURVES_PNG = "psnr_vs_sparsity.png"


def report_dir(setting: str) -> Path:
    """The report of one setting (params: setting), e.g. report/default, report/cpu-study."""
    return REPORT / setting


def grid_png(pair: str) -> str:
    return f"grid_{pair}.png"


# ---------------------------------------------------------------- what each stage's output directory holds


@dataclass(frozen=True)
class OutputDir:
    """The files a stage writes into its output directory. A stage replaces that directory as a whole, so it
    may replace only one like it (holding `signature` and nothing else but `patterns`), an empty one or none."""

    stage: str
    signature: str
    patterns: tuple[str, ...]

    def check(self, path: Path) -> None:
        """Refuse (ValueError) an existing `path` that is not this kind of output directory."""
        io.check_replaceable(path, self.signature, self.patterns, f"stage {self.stage}")

    def write(self, path: Path):
        """io.atomic_dir onto `path` that checks it first and again before replacing it."""
        return io.atomic_dir(path, check=self.check)


DEGRADE_OUT = OutputDir("degrade", OBSERVATION, (OBSERVATION, CLEAN, CLEAN_PNG, DEGRADED_PNG))
ROUND_OUT = OutputDir(
    "dense_fit / imp_round", FIT_METRICS, (INIT, REWIND, TRAINED, MASK, HISTORY, FIT_METRICS, output_png("*"))
)
EVALUATE_OUT = OutputDir("evaluate", RESULTS, (RESULTS, method_png("*")))
TRANSFER_OUT = OutputDir("transfer", MATRIX, (MATRIX,))
MULTI_EVALUATE_OUT = OutputDir("multi_evaluate", RESULTS, (RESULTS,))
REPORT_OUT = OutputDir("report", REPORT_MD, (REPORT_MD, CURVES_PNG, grid_png("*")))
