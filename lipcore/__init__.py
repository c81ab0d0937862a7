"""lipcore: lottery image priors — DIP / deep-decoder nets, degradations, the fitting loop, pruning, metrics."""

from .config import DegradationConfig, FitConfig, ImpConfig, NetConfig, SearchConfig
from .fit import FitDiverged, FitResult, OracleBest, fit
from .nets import build_net, count_parameters, make_input
from .runtime import resolve_device, tune_cpu_allocator
from .schema import from_dict

__all__ = [
    "DegradationConfig",
    "FitConfig",
    "FitDiverged",
    "FitResult",
    "NetConfig",
    "OracleBest",
    "ImpConfig",
    "SearchConfig",
    "build_net",
    "count_parameters",
    "fit",
    "from_dict",
    "make_input",
    "resolve_device",
    "tune_cpu_allocator",
]
