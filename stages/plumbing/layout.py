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
GAN = Path("outs/gan")  # the GAN compressive-sensing study
FACES = DATA / "faces"  # its real test faces, 64x64
METRICS = Path("metrics")
PLOTS = Path("plots")
REPORT = Path("report")
# stage check_params: written once params.yaml passes every check; degrade and gan_prepare depend on it, so DVC
# runs that check before any command that interpolates a params value
PARAMS_CHECKED = Path("outs/params-checked.json")
LIVE = Path("live")  # scratch, not an output: each fitting stage's progress (stages/plumbing/live.py); git ignores it
RESUME = Path("resume")  # scratch, not an output: what a stopped stage had finished (stages/plumbing/resume.py)

# ---------------------------------------------------------------- directories


def scratch_dir(base: Path, out: Path | str) -> Path:
    """<base>/<out>: a stage's scratch folder under `base` (live/, resume/), always inside it, never its output."""
    return base.joinpath(*[p for p in Path(out).parts if p not in ("/", "..", ".")])


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


def grid_plot(image: str, task: str) -> Path:
    """The image grid (clean, degraded, each method's output) that `dvc plots show` puts on its page."""
    return PLOTS / "grids" / f"{pair_id(image, task)}.png"


HEADLINE = METRICS / "headline.json"  # the only DVC metrics file: the numbers an experiment is compared by


TRANSFER_METRICS = METRICS / "transfer.json"

# ---------------------------------------------------------------- the GAN study

GAN_ROUNDS = GAN / "rounds"  # r0: the pretrained generator; r<k>: IMP round k (LIP and its random control)
GAN_TESTSET = GAN / "testset"
GAN_CS = GAN / "cs"  # m<m>: CSGM with every generator and FISTA-DCT; robust: the outlier setting
GAN_DIP = GAN / "dip"  # m<m>: the DIP baselines
GAN_EVALUATE = EVALUATE / "gan"
GAN_METRICS = METRICS / "gan.json"
GAN_PLOTS = PLOTS / "gan"


def face_file(name: str) -> Path:
    return FACES / f"{name}.png"


def gan_round_dir(k: int, rounds: Path = GAN_ROUNDS) -> Path:
    """GAN IMP round k (0: the pretrained generator) inside a rounds directory."""
    return Path(rounds) / f"r{k}"


def gan_cs_dir(m: int) -> Path:
    return GAN_CS / f"m{m}"


def gan_dip_dir(m: int) -> Path:
    return GAN_DIP / f"m{m}"


GAN_ROBUST = GAN_CS / "robust"
GAN_SPARSITY_PLOT = GAN_PLOTS / "mse_vs_sparsity.csv"
GAN_M_PLOT = GAN_PLOTS / "mse_vs_m.csv"

# inside a GAN round directory (r0: GENERATOR only)
GENERATOR = "generator.safetensors"  # the whole state: conv weights (masked) and BatchNorm
RANDOM_GENERATOR = "random_generator.safetensors"  # the random-pruning control, retrained the same way
RANDOM_MASK = "random_mask.safetensors"
# inside the test-set directory
TESTSET = "testset.safetensors"  # images (N, 3, 64, 64) in [-1, 1]; metadata: names, kinds
TESTSET_PNG = "testset.png"
# inside a GAN CS / DIP directory: every method's recovered images and per-image numbers
RECOVERED = "recovered.safetensors"
GAN_GRID = "grid_gan_m{m}.png"  # report: truth, adjoint, each method

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
# in the output directory of a stage that ran on CUDA only: what decided its rounding (lipcore.runtime.cuda_numerics)
NUMERICS = "numerics.json"


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
GAN_SPARSITY_PNG = "gan_mse_vs_sparsity.png"  # the report's GAN section
GAN_M_PNG = "gan_mse_vs_m.png"
GAN_CURVE_PNG = "gan_search_curve.png"
LIVE_PROGRESS = "progress.json"  # in each live/<out>/: every fit's latest row
RESUME_FILE = "progress.pt"  # in resume/<out>/: the finished parts of the stage writing <out>


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
    "dense_fit / imp_round", FIT_METRICS, (INIT, REWIND, TRAINED, MASK, HISTORY, FIT_METRICS, output_png("*"), NUMERICS)
)
EVALUATE_OUT = OutputDir("evaluate", RESULTS, (RESULTS, method_png("*"), NUMERICS))
TRANSFER_OUT = OutputDir("transfer", MATRIX, (MATRIX, NUMERICS))
MULTI_EVALUATE_OUT = OutputDir("multi_evaluate", RESULTS, (RESULTS, NUMERICS))
GAN_ROUND_OUT = OutputDir(
    "gan_prepare / gan_imp_round", FIT_METRICS, (GENERATOR, MASK, RANDOM_GENERATOR, RANDOM_MASK, FIT_METRICS, NUMERICS)
)
GAN_TESTSET_OUT = OutputDir("gan_prepare", TESTSET, (TESTSET, TESTSET_PNG))
GAN_CS_OUT = OutputDir("gan_cs / gan_robust / gan_dip", RESULTS, (RESULTS, RECOVERED, NUMERICS))
GAN_EVALUATE_OUT = OutputDir("gan_evaluate", RESULTS, (RESULTS, GAN_GRID.format(m="*")))
REPORT_OUT = OutputDir("report", REPORT_MD, (REPORT_MD, CURVES_PNG, grid_png("*"), "gan_*.png"))
