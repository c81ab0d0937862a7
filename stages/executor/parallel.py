"""`dvc repro`, with the independent stages running at the same time on Ray workers.

    python -m stages.executor                      # a local Ray cluster on this machine's cores (and GPUs)
    python -m stages.executor --workers 4          # at most 4 stages at once
    python -m stages.executor --address auto       # an existing Ray cluster (every node sees this workspace
                                                   # at the same path, e.g. a shared filesystem)
    python -m stages.executor evaluate transfer    # targets, as for dvc repro

DVC stays the source of truth: DVC's own objects say which stages exist, what they depend on and which are out
of date, and each finished stage is recorded by DVC's own save/commit/dump (stages/executor/ledger.py), one at a time in
this process (the dvc.lock entries batched, every 10 s and at the end), so dvc.lock, the cache and the run cache
end as `dvc repro` leaves them and `dvc status` is clean.
The workers only run the stages' commands, each stage's `main(argv)` in a warm process (stages/executor/worker.py).

Each stage gets params.yaml's `executor` resources: `num_cpus` cores (its torch threads: N one-thread stages
keep N cores busy without oversubscribing them) and `num_gpus` of a GPU (fractions share one). On the first
failure no further stage starts; the stages already running finish and are recorded; the failed stage's error
is shown and the command exits with status 1. A later run (or `dvc repro`) picks up from there.

Stopped (Ctrl-C, SIGTERM), the driver stops the running stages' workers, writes dvc.lock's entries of every
recorded stage and exits with one line; killed outright (SIGKILL), the workers notice and end themselves. Either
way what a stage had not finished is not recorded, the outputs of stages not yet taken by a worker are untouched,
and a rerun finishes the pipeline byte-identically. Problems DVC or the OS report (another DVC process in the
repo, an unknown stage, a broken dvc.lock, a full disk) end the run with one line saying what to do.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..plumbing.params import ExecutorConfig, load_params
from . import ledger
from .worker import Outcome, StageRunner

log = logging.getLogger("lip.parallel")


@dataclass
class Progress:
    """Counts for the live line: stages done (ran, restored from the run cache, or already up to date), running,
    waiting; and what ran, for the summary."""

    total: int
    ran: list[tuple[str, float, str]] = field(default_factory=list)  # (stage, seconds, how)
    restored: int = 0
    up_to_date: int = 0
    running: int = 0

    @property
    def done(self) -> int:
        return len(self.ran) + self.restored + self.up_to_date

    def line(self, event: str) -> str:
        waiting = self.total - self.done - self.running
        return f"[{self.done}/{self.total} done, {self.running} running, {waiting} waiting] {event}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help="stages to reproduce with everything upstream (default: all)")
    ap.add_argument("--address", help="an existing Ray cluster ('auto' or host:port); default: a local one")
    ap.add_argument("--workers", type=int, help="stages at once (default: as many as the resources allow)")
    ap.add_argument("--num-cpus", type=int, help="cores of the local Ray cluster (default: all of this machine's)")
    ap.add_argument("--params", default="params.yaml", help="params file with the executor section")
    args = ap.parse_args(argv)
    _show_progress()
    if args.workers is not None and args.workers < 1:
        ap.error(f"--workers {args.workers}: give at least 1")
    try:
        params = load_params(args.params)
        resources = params.executor
        refuse_hidden_gpus(params.device, resources, args.address)
    except (ValueError, FileNotFoundError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    try:
        refuse_if_dvc_is_running(Path.cwd())
        return reproduce(Path.cwd(), resources, args.targets, args.workers, args.address, args.num_cpus)
    except Stopped as stop:
        print(f"ERROR: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except Exception as err:
        message = one_line(err)
        if message is None or os.environ.get("LIP_TRACEBACK"):
            raise
        print(f"ERROR: {message}", file=sys.stderr)
        return 1


class Stopped(BaseException):
    """SIGINT or SIGTERM reached the driver (a BaseException, like KeyboardInterrupt: no `except Exception` in
    DVC's code or ours takes it for a stage's failure)."""

    def __init__(self, signum: int, recorded: int = 0, stopped: list[str] | None = None):
        self.signum, self.recorded, self.stopped = signum, recorded, stopped or []
        super().__init__(signum)

    def __str__(self) -> str:
        running = f"; stopped {', '.join(self.stopped)} (not recorded)" if self.stopped else ""
        return (
            f"stopped by {signal.Signals(self.signum).name}: {self.recorded} stages recorded in dvc.lock{running}. "
            "Rerun to finish the pipeline"
        )


_stop_asked: list[int] = []  # the signals that asked the driver to stop, noted by _ask_to_stop


def _ask_to_stop(signum: int, frame) -> None:
    """SIGINT/SIGTERM only note the request: raised from a handler, an exception would land inside Ray's C code
    (its wait ran the handler and broke with a SystemError); the scheduling loop acts on it within POLL seconds."""
    _stop_asked.append(signum)


POLL = 0.5  # seconds the scheduler waits for a stage to finish before it looks for a stop request


def one_line(err: Exception) -> str | None:
    """What DVC or the OS reported, as one line that says what to do; None for anything else (a bug: traceback)."""
    from dvc.exceptions import DvcException
    from dvc.lock import LockError
    from dvc.stage.exceptions import StageNotFound

    text = " ".join(str(err).split())
    if isinstance(err, LockError):
        return f"{text} Another DVC process (dvc repro, a second stages.executor) holds this repo: wait for it"
    if isinstance(err, StageNotFound):
        return f"{text}: `dvc stage list` names them"
    if isinstance(err, DvcException) and "dvc.lock" in text:
        return f"{text}: restore it (git checkout dvc.lock) or delete it (then every stage reruns)"
    if isinstance(err, DvcException):
        return f"{text} (DVC's {type(err).__name__}: fix what it names and rerun)"
    if isinstance(err, (OSError, sqlite3.OperationalError)):  # sqlite: DVC's state and run-cache databases
        return f"{text}; free disk space (or fix the path) and rerun: what was recorded is kept"
    return None


def refuse_hidden_gpus(device: str, resources: ExecutorConfig, address: str | None) -> None:
    """Refuse a run whose stages would not see the GPU that `dvc repro` uses.

    Ray gives an actor that asks for no GPU an empty CUDA_VISIBLE_DEVICES: with executor.num_gpus 0 on a machine
    with a GPU, `device: auto` would run every stage on the CPU inside the workers while `dvc repro` runs them on
    the GPU: two runners, two results (and `device: cuda` would fail in every worker). Only a local cluster is
    checked: this process sees the machine its workers run on."""
    if resources.num_gpus or address is not None or str(device) == "cpu":
        return
    import torch

    if torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} with executor.num_gpus 0 on a machine with a GPU: Ray hides the GPU from workers "
            "that ask for none, so the stages would run on the CPU (dvc repro uses the GPU). Give each stage a "
            "share (executor.num_gpus: 0.5, or 1) or set device: cpu"
        )


def refuse_if_dvc_is_running(root: Path) -> None:
    """Refuse to start while another process runs a DVC stage here.

    `dvc repro` lets go of the repo lock while a stage's command runs (so the command may call DVC); an executor
    taking the lock then would fail on DVC's per-output locks midway, and the other run's result be thrown away.
    DVC's per-output lock file names the processes that hold outputs: any of them alive means one is running."""
    import psutil

    path = root / ".dvc" / "tmp" / "rwlock"
    try:
        held = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return
    infos = [*held.get("write", {}).values(), *(i for infos in held.get("read", {}).values() for i in infos)]
    for info in infos:
        pid = info.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and psutil.pid_exists(pid):
            raise SystemExit(
                f"ERROR: another DVC process runs a stage here (PID {pid}: {info.get('cmd', '?')}); "
                "wait for it to end (or stop it), then rerun"
            )


def _show_progress() -> None:
    """This module's lines on stderr (DVC logs its own; the workers' stage logs come through Ray)."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def reproduce(
    root: Path,
    resources: ExecutorConfig,
    targets: list[str] | None = None,
    workers: int | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
) -> int:
    """Bring the pipeline at `root` up to date on Ray; 0 when every stage is, 1 after a failure."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # read when ray is imported: every fit's line, not "repeated 17x"
    import ray
    from dvc.repo import Repo

    with Repo(str(root)) as repo, repo.lock, ledger.params_parsed_once():
        work = ledger.plan(repo, targets)
        progress = Progress(len(work.stages))
        # the stages import from the workspace: a local cluster's workers inherit this process's environment; on
        # an existing cluster a runtime_env carries it (which costs each worker ~1 s of setting up, so only there)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
        ray.init(
            address=address,
            num_cpus=None if address else num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            object_store_memory=None if address else 128 * 1024**2,  # only small results travel
            runtime_env={"env_vars": {"PYTHONPATH": str(root)}} if address else None,
        )
        # after ray.init, which installs its own handlers (its SIGTERM one aborted the driver with a C++ stack dump)
        _stop_asked.clear()
        previous = {sig: signal.signal(sig, _ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            pool = _start_workers(ray, root, resources, workers, local=address is None)
            log.info("%d stages in the pipeline; %d workers, each %s", progress.total, len(pool), _shape(resources))
            failure = _schedule(ray, repo, work, pool, progress)
        finally:
            with ledger.signals_held():  # a second Ctrl-C must not cut the shutdown short
                ray.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    ran = sum(s for _, s, _ in progress.ran)
    log.info(
        "%d ran (%.0f s of stage time), %d restored from the run cache, %d already up to date",
        len(progress.ran),
        ran,
        progress.restored,
        progress.up_to_date,
    )
    if failure:
        print(f"ERROR: {failure}", file=sys.stderr)
        return 1
    return 0


def _shape(resources: ExecutorConfig) -> str:
    gpus = f" and {resources.num_gpus:g} GPU" if resources.num_gpus else ""
    return f"{resources.num_cpus:g} CPU{gpus}"


def worker_count(free: dict[str, float], resources: ExecutorConfig, workers: int | None) -> int:
    """How many stages run at once: as many as the cluster's CPUs (and GPUs) hold at `resources` each, at most
    `workers`; none fitting is refused with what to lower."""
    fit = int(free.get("CPU", 0) // resources.num_cpus)
    if resources.num_gpus:
        fit = min(fit, int(free.get("GPU", 0) // resources.num_gpus))
    if fit < 1:
        raise SystemExit(
            f"ERROR: the Ray cluster ({free.get('CPU', 0):g} CPU, {free.get('GPU', 0):g} GPU) cannot hold one stage "
            f"of {_shape(resources)}: lower executor.num_cpus / executor.num_gpus in params.yaml"
        )
    return min(fit, workers) if workers else fit


def _start_workers(ray, root: Path, resources: ExecutorConfig, workers: int | None, local: bool) -> list:
    """Long-lived workers, as many as the cluster's resources hold (or `workers`, if fewer). On a local cluster
    each watches this process and ends itself if it dies (SIGKILL gives no chance to stop them)."""
    count = worker_count(ray.cluster_resources(), resources, workers)
    actor = ray.remote(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus)(StageRunner)
    driver = os.getpid() if local else None
    pool = [actor.remote(str(root), int(resources.num_cpus), driver) for _ in range(count)]
    if local:  # to kill them for sure on a stop (ray.kill only asks Ray to)
        _PIDS.update(zip(map(id, pool), ray.get([worker.pid.remote() for worker in pool])))
    return pool


_PIDS: dict[int, int] = {}  # id(worker handle) -> its process on this machine


def _schedule(ray, repo, work: ledger.Plan, pool: list, progress: Progress) -> str | None:
    """Run every out-of-date stage once its upstream stages are done, critical path first, on idle workers;
    record each as it finishes. Returns the first failure's message, or None."""
    waiting = set(work.stages)
    done: set = set()
    ready: list = []  # out of date, upstream done, started with DVC, waiting for a worker
    running: dict = {}  # ray ref -> (stage, worker)
    idle = list(pool)
    failure: str | None = None
    lock = ledger.Lockfile()
    try:
        while True:
            if _stop_asked:
                raise Stopped(_stop_asked[0])
            if failure is None:
                _release_ready(repo, work, waiting, done, ready, progress, lock)
            while idle and ready and failure is None:
                stage = ready.pop(0)
                worker = idle.pop()
                cmd = stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd)
                with ledger.signals_held():  # taken whole: a stop finds it running (and stops it) or not taken
                    ledger.take(stage)  # only now its old outputs go
                    running[worker.run.remote(cmd)] = (stage, worker)
                progress.running += 1
                log.info(progress.line(f"started {stage.addressing}"))
            if not running:
                break
            lock.write()  # if the entries waiting have waited long enough
            due = lock.due()
            finished, _ = ray.wait(list(running), num_returns=1, timeout=POLL if due is None else min(due, POLL))
            if not finished:
                continue  # the next pass looks for a stop request and writes the entries that fell due
            stage, worker = running.pop(finished[0])
            progress.running -= 1
            try:
                outcome = ray.get(finished[0])
                idle.append(worker)
            except ray.exceptions.RayError as err:  # the worker process died (killed, out of memory, crashed)
                outcome = Outcome(False, 0.0, "in-process", f"the worker running it died: {err}")
            if outcome.ok:
                with ledger.signals_held():  # recorded whole: hashed, cached and handed to dvc.lock
                    ledger.record(stage, lock)
                done.add(stage)
                progress.ran.append((stage.addressing, outcome.seconds, outcome.how))
                log.info(progress.line(f"{stage.addressing} done in {outcome.seconds:.1f} s ({outcome.how})"))
            elif failure is None:
                failure = f"stage {stage.addressing} failed: {outcome.error}"
                log.error(progress.line(f"{stage.addressing} FAILED; starting no further stage"))
    except Stopped as stop:
        for sig in (signal.SIGINT, signal.SIGTERM):  # the stop is under way: a second Ctrl-C must not cut it short
            signal.signal(sig, signal.SIG_IGN)
        names = [stage.addressing for stage, _ in running.values()]
        _stop_workers(ray, [worker for _, worker in running.values()])
        stop.recorded, stop.stopped = len(progress.ran) + progress.restored, names
        raise
    finally:
        lock.write(force=True)  # however the run ends (a failure, a stop), every recorded stage in dvc.lock
    if failure is None and waiting:  # cannot happen in a DAG; say so rather than end silently
        failure = f"stages never became ready: {sorted(s.addressing for s in waiting)}"
    return failure


def _release_ready(
    repo, work: ledger.Plan, waiting: set, done: set, ready: list, progress: Progress, lock: ledger.Lockfile
) -> None:
    """Move every waiting stage whose upstream is done: up to date or restored from the run cache -> done (which
    may release more), out of date -> ready. `ready` is kept in the order to start them (Plan.priority)."""
    released = True
    while released:
        released = False
        for stage in sorted(waiting, key=work.order.get):
            if not all(up in done for up in work.upstream[stage]):
                continue
            waiting.discard(stage)
            released = True
            if not ledger.is_out_of_date(stage, work.upstream[stage]):
                progress.up_to_date += 1
                done.add(stage)
            elif _restored(repo, stage, lock):
                progress.restored += 1
                done.add(stage)
                log.info(progress.line(f"{stage.addressing} restored from the run cache"))
            else:
                ready.append(stage)
    ready.sort(key=work.priority)


def _restored(repo, stage, lock: ledger.Lockfile) -> bool:
    with ledger.signals_held():  # its outputs removed and restored whole, or not at all
        return ledger.restore(repo, stage, lock)


def _stop_workers(ray, workers: list, wait: float = 10.0) -> None:
    """Kill the workers running stages and wait until their processes are gone, so that no stage writes an output
    after the driver has said it stopped (an output half written stays in its temporary folder, swept later)."""
    import psutil

    procs = []
    for worker in workers:
        ray.kill(worker, no_restart=True)
        try:
            procs.append(psutil.Process(_PIDS[id(worker)]))
        except (KeyError, psutil.NoSuchProcess):  # not on this machine, or gone already
            pass
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=wait)


if __name__ == "__main__":
    sys.exit(main())
