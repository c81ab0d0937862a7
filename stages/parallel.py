"""`dvc repro`, with the independent stages running at the same time on Ray workers.

    python -m stages.parallel                      # a local Ray cluster on this machine's cores (and GPUs)
    python -m stages.parallel --workers 4          # at most 4 stages at once
    python -m stages.parallel --address auto       # an existing Ray cluster (every node sees this workspace
                                                   # at the same path, e.g. a shared filesystem)
    python -m stages.parallel evaluate transfer    # targets, as for dvc repro

DVC stays the source of truth: DVC's own objects say which stages exist, what they depend on and which are out
of date, and each finished stage is recorded by DVC's own save/commit/dump (stages/ledger.py), one at a time in
this process (the dvc.lock entries batched, every 10 s and at the end), so dvc.lock, the cache and the run cache
end as `dvc repro` leaves them and `dvc status` is clean.
The workers only run the stages' commands, each stage's `main(argv)` in a warm process (stages/worker.py).

Each stage gets params.yaml's `executor` resources: `num_cpus` cores (its torch threads: N one-thread stages
keep N cores busy without oversubscribing them) and `num_gpus` of a GPU (fractions share one). On the first
failure no further stage starts; the stages already running finish and are recorded; the failed stage's error
is shown and the command exits with status 1. A later run (or `dvc repro`) picks up from there.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import ledger
from .params import ExecutorConfig, load_params
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
        resources = load_params(args.params).executor
    except (ValueError, FileNotFoundError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    return reproduce(Path.cwd(), resources, args.targets, args.workers, args.address, args.num_cpus)


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
        try:
            pool = _start_workers(ray, root, resources, workers)
            log.info("%d stages in the pipeline; %d workers, each %s", progress.total, len(pool), _shape(resources))
            failure = _schedule(ray, repo, work, pool, progress)
        finally:
            ray.shutdown()
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


def _start_workers(ray, root: Path, resources: ExecutorConfig, workers: int | None) -> list:
    """Long-lived workers, as many as the cluster's resources hold (or `workers`, if fewer)."""
    free = ray.cluster_resources()
    fit = int(free.get("CPU", 0) // resources.num_cpus)
    if resources.num_gpus:
        fit = min(fit, int(free.get("GPU", 0) // resources.num_gpus))
    if fit < 1:
        raise SystemExit(
            f"ERROR: the Ray cluster ({free.get('CPU', 0):g} CPU, {free.get('GPU', 0):g} GPU) cannot hold one stage "
            f"of {_shape(resources)}: lower executor.num_cpus / executor.num_gpus in params.yaml"
        )
    count = min(fit, workers) if workers else fit
    actor = ray.remote(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus)(StageRunner)
    return [actor.remote(str(root), int(resources.num_cpus)) for _ in range(count)]


def _schedule(ray, repo, work: ledger.Plan, pool: list, progress: Progress) -> str | None:
    """Run every out-of-date stage once its upstream stages are done, critical path first, on idle workers;
    record each as it finishes. Returns the first failure's message, or None."""
    order = {stage: i for i, stage in enumerate(work.stages)}
    waiting = set(work.stages)
    done: set = set()
    ready: list = []  # out of date, upstream done, started with DVC, waiting for a worker
    running: dict = {}  # ray ref -> (stage, worker)
    idle = list(pool)
    failure: str | None = None
    lock = ledger.Lockfile()
    try:
        while True:
            if failure is None:
                _release_ready(repo, work, waiting, done, ready, progress, order, lock)
            while idle and ready and failure is None:
                stage = ready.pop(0)
                worker = idle.pop()
                cmd = stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd)
                running[worker.run.remote(cmd)] = (stage, worker)
                progress.running += 1
                log.info(progress.line(f"started {stage.addressing}"))
            if not running:
                break
            lock.write()  # if the entries waiting have waited long enough
            finished, _ = ray.wait(list(running), num_returns=1, timeout=lock.due())
            if not finished:
                continue  # nothing finished before the waiting entries fell due: the next pass writes them
            stage, worker = running.pop(finished[0])
            progress.running -= 1
            try:
                outcome = ray.get(finished[0])
                idle.append(worker)
            except ray.exceptions.RayError as err:  # the worker process died (killed, out of memory, crashed)
                outcome = Outcome(False, 0.0, "in-process", f"the worker running it died: {err}")
            if outcome.ok:
                ledger.record(stage, lock)
                done.add(stage)
                progress.ran.append((stage.addressing, outcome.seconds, outcome.how))
                log.info(progress.line(f"{stage.addressing} done in {outcome.seconds:.1f} s ({outcome.how})"))
            elif failure is None:
                failure = f"stage {stage.addressing} failed: {outcome.error}"
                log.error(progress.line(f"{stage.addressing} FAILED; starting no further stage"))
    finally:
        lock.write(force=True)  # however the run ends (a failure, Ctrl-C), every recorded stage in dvc.lock
    if failure is None and waiting:  # cannot happen in a DAG; say so rather than end silently
        failure = f"stages never became ready: {sorted(s.addressing for s in waiting)}"
    return failure


def _release_ready(
    repo, work: ledger.Plan, waiting: set, done: set, ready: list, progress: Progress, order, lock: ledger.Lockfile
) -> None:
    """Move every waiting stage whose upstream is done: up to date or restored from the run cache -> done (which
    may release more), out of date -> ready. `ready` is kept longest-chain first, then in DVC's order."""
    released = True
    while released:
        released = False
        for stage in sorted(waiting, key=order.get):
            if not all(up in done for up in work.upstream[stage]):
                continue
            waiting.discard(stage)
            released = True
            if not ledger.is_out_of_date(stage, work.upstream[stage]):
                progress.up_to_date += 1
                done.add(stage)
            elif ledger.start(repo, stage, lock):
                ready.append(stage)
            else:
                progress.restored += 1
                done.add(stage)
                log.info(progress.line(f"{stage.addressing} restored from the run cache"))
    ready.sort(key=lambda s: (-work.chain[s], order[s]))


if __name__ == "__main__":
    sys.exit(main())
