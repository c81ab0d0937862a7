"""Run DVC stage commands in a long-lived Python process (a Ray worker of stages/executor/parallel.py).

A stage started by `dvc repro` is a fresh process that pays ~5 s before its first fit (`import torch`, then the
first torch.optim.Adam importing torch._dynamo). A StageRunner pays that once, then calls each stage's
`main(argv)` in-process. Before every stage it puts back what a fresh process would have (torch's default
generator, the torch flags a stage may touch, the environment, the working directory, the thread count), so a
stage's outputs are byte-identical to its `dvc repro` run. Commands that are not `python -m stages.<name>` run
as a subprocess.
"""

from __future__ import annotations

import gc
import importlib
import os
import shlex
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

# torch's default CPU generator seed in a new process (c10's default_rng_seed_val): no stage draws from the global
# generator (every draw has a named, seeded generator: lipcore.seeding), but a fresh process would start here.
FRESH_TORCH_SEED = 67280421310721


@dataclass(frozen=True)
class Outcome:
    """How one stage command ended: ok, its wall time, how it ran, and on failure the error to show."""

    ok: bool
    seconds: float
    how: str  # "in-process" | "subprocess"
    error: str = ""


def module_call(cmd: str) -> tuple[str, list[str]] | None:
    """`python -m stages.<name> args...` -> ("stages.<name>", args); None for any other command."""
    try:
        argv = shlex.split(cmd)
    except ValueError:  # unbalanced quotes: leave it to the shell, which reports it as dvc repro would
        return None
    if len(argv) >= 3 and Path(argv[0]).name in ("python", "python3") and argv[1] == "-m":
        if argv[2].startswith("stages.") and not any(c in cmd for c in "|;&><`$"):
            return argv[2], argv[3:]
    return None


class StageRunner:
    """One worker: torch imported and warmed once; stages run one at a time, each from a fresh-process state."""

    def __init__(self, root: str, threads: int, driver: int | None = None) -> None:
        self.root = Path(root)
        self.threads = threads
        if driver is not None:
            threading.Thread(target=_end_with, args=(driver,), daemon=True, name="driver-watch").start()
        os.chdir(self.root)
        if str(self.root) not in sys.path:
            sys.path.insert(0, str(self.root))
        import torch

        torch.set_num_threads(threads)
        self._warm(torch)
        self._env = dict(os.environ)
        self._torch_flags = _torch_flags()

    @staticmethod
    def _warm(torch) -> None:
        """Pay the one-off imports a stage's first fit would pay: the first Adam step imports torch._dynamo."""
        weight = torch.zeros(1, requires_grad=True)
        weight.sum().backward()
        torch.optim.Adam([weight]).step()
        import lipcore.fit  # noqa: F401  (the library every stage imports)

    def pid(self) -> int:
        return os.getpid()

    def run(self, cmd: str) -> Outcome:
        """Run one stage command; never raises (a failure comes back as an Outcome with the error)."""
        call = module_call(cmd)
        start = time.perf_counter()
        if call is None:
            return self._subprocess(cmd, start)
        self._fresh_state()
        try:
            importlib.import_module(call[0]).main(call[1])
        except SystemExit as err:  # argparse refusing an argument, or a stage ending itself
            if err.code not in (0, None):
                return Outcome(False, time.perf_counter() - start, "in-process", f"{cmd}: exit status {err.code}")
        except Exception as err:
            return Outcome(False, time.perf_counter() - start, "in-process", _error_text(cmd, err))
        finally:
            self._release()
        return Outcome(True, time.perf_counter() - start, "in-process")

    def _fresh_state(self) -> None:
        import torch

        os.chdir(self.root)
        os.environ.clear()
        os.environ.update(self._env)
        torch.manual_seed(FRESH_TORCH_SEED)
        torch.set_num_threads(self.threads)
        _set_torch_flags(self._torch_flags)

    def _release(self) -> None:
        """Free the finished stage's tensors (its GPU memory too, for the stages sharing that GPU)."""
        import torch

        gc.collect()
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def _subprocess(self, cmd: str, start: float) -> Outcome:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        proc = subprocess.run(cmd, shell=True, cwd=self.root, env=env, stderr=subprocess.PIPE, text=True)
        sys.stderr.write(proc.stderr)
        if proc.returncode:
            tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
            error = f"{cmd}: exit status {proc.returncode}\n{tail}"
            return Outcome(False, time.perf_counter() - start, "subprocess", error)
        return Outcome(True, time.perf_counter() - start, "subprocess")


def _end_with(driver: int, every: float = 0.5) -> None:
    """End this worker process as soon as the driver's process is gone (killed with SIGKILL, it could not stop us):
    a stage must not go on writing outputs for a run that no longer records them."""
    while True:
        time.sleep(every)
        try:
            os.kill(driver, 0)
        except (ProcessLookupError, PermissionError):  # gone (PermissionError: another user's process took the PID)
            os._exit(1)


def _error_text(cmd: str, err: BaseException) -> str:
    """A refused input or diverged fit as the one line `python -m` would print; anything else with its traceback."""
    from ..plumbing.entry import USER_ERRORS

    if isinstance(err, USER_ERRORS) and not os.environ.get("LIP_TRACEBACK"):
        return f"{cmd}: {err}"
    return f"{cmd}:\n{''.join(traceback.format_exception(err))}"


def _torch_flags() -> dict[str, object]:
    """The process-wide torch settings a stage could change, as a fresh process has them."""
    import torch

    return {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "default_dtype": torch.get_default_dtype(),
        "grad": torch.is_grad_enabled(),
    }


def _set_torch_flags(flags: dict[str, object]) -> None:
    import torch

    torch.use_deterministic_algorithms(flags["deterministic"])
    torch.backends.cudnn.benchmark = flags["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = flags["cudnn_deterministic"]
    torch.set_float32_matmul_precision(flags["matmul_precision"])
    torch.set_default_dtype(flags["default_dtype"])
    torch.set_grad_enabled(flags["grad"])
