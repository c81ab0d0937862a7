"""Frozen configuration dataclasses, one per params section of the library (net, fit, imp + imp.search, a task's
degradation), built by `lipcore.schema.from_dict` (unknown keys, wrong types and values outside a Literal refused
with the key's path); each derives from `lipcore.schema.Section`, which records the params keys a caller reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .schema import Section, derive


def _per_scale(value: int | list[int] | tuple[int, ...], scales: int, what: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * scales
    value = tuple(int(v) for v in value)
    if len(value) != scales:
        raise ValueError(f"NetConfig.{what} has {len(value)} entries but scales={scales}")
    return value


@dataclass(frozen=True)
class NetConfig(Section):
    """Architecture. kind='skip' is the DIP encoder-decoder, kind='decoder' the deep decoder.

    The defaults are the DIP / LIP standard skip net (2,217,831 parameters for 3 output channels).
    Per-scale fields accept one int (used at every scale) or a list with one entry per scale.
    """

    kind: Literal["skip", "decoder"] = "skip"
    in_channels: int = 32
    out_channels: int = 3
    scales: int = 5
    channels_down: int | tuple[int, ...] = 128
    channels_up: int | tuple[int, ...] = 128
    channels_skip: int | tuple[int, ...] = 4
    upsample: Literal["bilinear", "nearest"] = "bilinear"
    pad: Literal["reflection", "zero"] = "reflection"
    act: Literal["leaky_relu", "relu", "elu"] = "leaky_relu"
    decoder_channels: int = 64
    decoder_layers: int = 6
    input_scale: float = 0.1  # z ~ U[0, input_scale), as in DIP's get_noise(..., 'noise') * 1/10

    def __post_init__(self) -> None:
        if self.scales < 1:
            raise ValueError(f"NetConfig.scales must be >= 1, got {self.scales}")
        for name in ("in_channels", "out_channels", "decoder_channels", "decoder_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"NetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.input_scale > 0:
            raise ValueError(f"NetConfig.input_scale must be > 0 (z ~ U[0, input_scale)), got {self.input_scale}")
        for name in ("channels_down", "channels_up", "channels_skip"):
            object.__setattr__(self, name, _per_scale(getattr(self, name), self.scales, name))
            least = 0 if name == "channels_skip" else 1  # a scale may have no skip branch, not no channels
            if min(getattr(self, name)) < least:
                raise ValueError(f"NetConfig.{name} must be >= {least} at every scale, got {list(getattr(self, name))}")

    @property
    def downscale(self) -> int:
        """Factor by which H and W must be divisible (2^scales for skip, 2^(layers-1) for decoder)."""
        return 2**self.scales if self.kind == "skip" else 2 ** (self.decoder_layers - 1)


MIN_KNOWN = 0.01  # an inpainting mask must keep at least this share of the pixels


@dataclass(frozen=True)
class DegradationConfig(Section):
    """One task's degradation (lipcore.physics: the task's Operator class). `sigma=None` means the task's
    default (its class's default_sigma: 25/255 for denoise, else 0)."""

    task: str = "denoise"  # a registered task (lipcore.physics.TASKS): denoise | inpaint | sr | cs
    sigma: float | None = None  # std of additive Gaussian noise on the observation, [0,1] scale
    keep: float = 0.5  # inpaint: fraction of pixels kept
    per_channel: bool = False  # inpaint: draw the Bernoulli mask per channel instead of per pixel
    mask: str | None = None  # inpaint: path of a mask image (white = known) instead of a random mask
    factor: Literal[2, 4, 8] = 4  # sr: downscaling factor
    ratio: float = 0.25  # cs: m / n, number of measurements over number of unknowns

    def __post_init__(self) -> None:
        from .physics import task_class  # physics imports this module: the task classes are known by now

        task_class(self.task)
        if not MIN_KNOWN <= self.keep < 1.0:  # 1 keeps every pixel: nothing to inpaint
            raise ValueError(f"keep must be in [{MIN_KNOWN}, 1) (the share of pixels known), got {self.keep}")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.sigma is not None and self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")

    @property
    def noise_std(self) -> float:
        if self.sigma is not None:
            return float(self.sigma)
        from .physics import task_class

        return task_class(self.task).default_sigma


@dataclass(frozen=True)
class FitConfig(Section):
    """The optimisation loop. Defaults: the published DIP denoising setup (Adam 0.01, 3000 its)."""

    iterations: int = 3000
    lr: float = 0.01
    reg_noise_std: float = 1.0 / 30.0  # fresh N(0, std^2) added to z at every step
    ema_weight: float = 0.99  # output averaging; 0 disables (then the EMA equals the last output)
    log_every: int = 25  # history resolution; the only points where the loop reads device values
    backtrack_db: float | None = 5.0  # restore weights if PSNR vs observation drops by more; None: off
    es_window: int = 100  # ES-WMV window W
    es_patience: int = 1000  # ES-WMV patience P (scale with the run length)
    es_stop: bool = False  # actually halt at the ES-WMV point (otherwise only record it)
    rewind_iteration: int | None = None  # keep a copy of all weights at this iteration (late rewinding)
    # fp32: the same arithmetic on every CPU, so results reproduce across machines (and bf16 was slower at 64 px
    # even on a CPU with native bf16: README "Precision"). bf16: autocast of the forward; weights and Adam stay
    # fp32. auto: bf16 where the device runs it natively (CUDA with bf16, a CPU with AVX512-BF16 or AMX), else fp32.
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    channels_last: bool = False  # NHWC activations (helps some conv backends; measure with bench/compare.py)
    # CUDA only: let cuDNN time its conv algorithms on the first steps and keep the fastest for the fixed
    # shapes of a fit. Off until measured on a GPU (bench/compare.py --variants lip lip-cudnn-benchmark).
    cudnn_benchmark: bool = False

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
        if not 0.0 <= self.ema_weight < 1.0:
            raise ValueError(f"ema_weight must be in [0, 1), got {self.ema_weight}")
        if self.reg_noise_std < 0:
            raise ValueError(f"reg_noise_std must be >= 0, got {self.reg_noise_std}")
        if self.backtrack_db is not None and not self.backtrack_db > 0:
            raise ValueError(f"backtrack_db must be > 0 (null turns backtracking off), got {self.backtrack_db}")
        if self.es_window < 2 or self.es_patience < 1:
            raise ValueError("es_window must be >= 2 and es_patience >= 1")
        if self.rewind_iteration is not None and not 0 <= self.rewind_iteration <= self.iterations:
            raise ValueError(f"rewind_iteration must be in [0, {self.iterations}]")


@dataclass(frozen=True)
class SearchConfig(Section):
    """How IMP trains the nets whose weights it prunes (the search fits); reported fits keep their FitConfig.

    Defaults: the search fit IS the evaluation fit (same length, no early stop), as in the LIP paper.
    """

    iterations: int | None = None  # search fit length per round; None: the evaluation fit's
    early_bird: float | None = None  # stop a search fit once the mask the next round would draw moves less
    # than this fraction of the prunable weights between checks (You et al. 2020, "early-bird tickets")
    early_bird_every: int = 10  # iterations between mask checks
    early_bird_patience: int = 3  # consecutive checks below the threshold

    def __post_init__(self) -> None:
        if self.iterations is not None and self.iterations < 1:
            raise ValueError(f"search iterations must be >= 1 (null: the evaluation length), got {self.iterations}")
        if self.early_bird is not None and not 0.0 < self.early_bird < 1.0:
            raise ValueError(f"early_bird must be a fraction in (0, 1) (or null to turn it off), got {self.early_bird}")
        if self.early_bird_every < 1 or self.early_bird_patience < 1:
            raise ValueError("early_bird_every and early_bird_patience must be >= 1")

    @property
    def is_evaluation(self) -> bool:
        """Whether the search fit is the evaluation fit itself."""
        return self.iterations is None and self.early_bird is None

    def fit_cfg(self, evaluation: FitConfig) -> FitConfig:
        """The search fit's config: the evaluation's with the search length."""
        if self.iterations is None:
            return evaluation
        rewind = evaluation.rewind_iteration
        if rewind is not None and rewind > self.iterations:
            raise ValueError(f"rewind_iteration {rewind} lies beyond the search fit ({self.iterations} iterations)")
        return derive(evaluation, iterations=self.iterations)


@dataclass(frozen=True)
class OesConfig(Section):
    """The Optimal Eye Surgeon mask search (lipcore.oes): Adam on one logit per conv weight of the frozen theta_0.

    The authors' recipe: temperature 0.2, Adam 0.01, kappa = 1e-9 summed over ~3M weights (here kl_weight on
    the mean: 3e-3), 60k search steps for a 40k-iteration fit (here steps_per_iteration 1.5 of our fit's length).
    """

    steps_per_iteration: float = 1.5  # search steps per iteration of the evaluation fit
    lr: float = 0.01
    temperature: float = 0.2
    kl_weight: float = 3e-3  # on the mean KL(Bern(sigmoid(p)) || Bern(rho)) over the weights

    def __post_init__(self) -> None:
        if not self.steps_per_iteration > 0:
            raise ValueError(f"steps_per_iteration must be > 0, got {self.steps_per_iteration}")
        if not self.lr > 0 or not self.temperature > 0 or self.kl_weight < 0:
            raise ValueError("lr and temperature must be > 0 and kl_weight >= 0")

    def steps(self, iterations: int) -> int:
        """The search length for an evaluation fit of `iterations` (at least one step)."""
        return max(1, round(self.steps_per_iteration * iterations))


@dataclass(frozen=True)
class ChannelsConfig(Section):
    """Channel tickets (lipcore.channels): IMP over whole output channels of the skip net's convs, each round's
    ticket materialised as a smaller net and trained from the sliced rewind weights."""

    rounds: int = 0  # 0: none; k: rounds 1..k
    # of the remaining channels of each layer per round; None: 1 - sqrt(1 - imp.fraction), so that a conv's
    # weights (out x in channels) shrink by about imp.fraction per round and round k keeps about as many
    # parameters as LIP's round k
    fraction: float | None = None

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ValueError(f"rounds must be >= 0 (0: no channel tickets), got {self.rounds}")
        if self.fraction is not None and not 0.0 < self.fraction < 0.5:
            raise ValueError(f"fraction must be in (0, 0.5) (or null: matched to imp.fraction), got {self.fraction}")

    def per_round(self, imp_fraction: float) -> float:
        """The fraction of each layer's channels a round removes."""
        return self.fraction if self.fraction is not None else 1.0 - (1.0 - imp_fraction) ** 0.5


def round_chain(chain: Any) -> tuple[tuple[int, int], ...]:
    """An IMP chain [[1, 0], [2, 1], ...] as a tuple of (round, parent) pairs, refused unless in that order."""
    pairs = tuple(tuple(int(v) for v in pair) for pair in chain)
    for i, pair in enumerate(pairs, start=1):
        if pair != (i, i - 1):
            raise ValueError(f"chain entry {i} is {list(pair)}; expected [{i}, {i - 1}] (rounds chain in order)")
    return pairs


@dataclass(frozen=True)
class ImpConfig(Section):
    """Iterative magnitude pruning (params.yaml's `imp`): what a round removes, what it rewinds to, how its
    search fits run, and the chain of rounds."""

    fraction: float = 0.2  # of the REMAINING prunable weights removed per round: nominal sparsity 1 - (1-f)^k
    scope: Literal["global", "layer"] = "global"
    keep_input_dense: bool = False  # paper-compatible: layers reading z are ranked but kept dense
    rewind_iteration: int = 0  # 0: rewind to theta_0; k > 0: late rewinding to round 0's weights at iteration k
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)
    # (round, parent) pairs, [[1, 0], [2, 1], ...]: DVC cannot compute k - 1, so the pipeline spells them out
    chain: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"prune fraction must be in (0, 1), got {self.fraction}")
        if self.rewind_iteration < 0:
            raise ValueError(f"rewind_iteration must be >= 0, got {self.rewind_iteration}")
        object.__setattr__(self, "chain", round_chain(self.chain))

    @property
    def rounds(self) -> list[int]:
        """The pruned rounds 1..K of the chain (round 0 is the dense fit)."""
        return [k for k, _ in self.chain]

    def prune_dict(self) -> dict[str, Any]:
        """What decides one round's mask, for the mask's metadata (not the chain: adding a round changes no mask)."""
        return {"fraction": self.fraction, "scope": self.scope, "keep_input_dense": self.keep_input_dense}


# The published per-task DIP settings (Ulyanov et al. 2018 and their code; LIP reuses them), for users who want
# the paper's setup: copy one into params.yaml's task_defs.<task>.fit, or pass it to fit().
PUBLISHED_FIT: dict[str, FitConfig] = {
    "denoise": FitConfig(iterations=3000, reg_noise_std=1.0 / 30.0, ema_weight=0.99),
    "denoise_sigma50": FitConfig(iterations=3000, reg_noise_std=1.0 / 20.0, ema_weight=0.99),
    "inpaint": FitConfig(iterations=3000, reg_noise_std=0.03, ema_weight=0.0),
    "inpaint_text": FitConfig(iterations=6000, reg_noise_std=0.03, ema_weight=0.0),
    "sr4": FitConfig(iterations=2000, reg_noise_std=0.03, ema_weight=0.0),
    "sr8": FitConfig(iterations=4000, reg_noise_std=0.05, ema_weight=0.0),
}
