"""DVC's side of the parallel executor: which stages there are, in what order, which are out of date, and
recording a finished stage, all through DVC's own objects, in the steps `dvc repro` takes for one stage
(dvc.stage.Stage.reproduce -> run -> run_stage):

    changed?  -> remove its outputs -> restore from the run cache, or save its deps and run its cmd
              -> save (hashes, run cache) -> commit (cache) -> dump (dvc.lock)

so dvc.lock, the cache and the run cache end as `dvc repro` leaves them. Only running the cmd is handed to the
workers; everything else happens here, one stage at a time, in the driver that holds the repo lock. The dumps
alone are batched (Lockfile): DVC rewrites the whole dvc.lock for each one.

Two departures from `dvc repro`, both so that a stop at any moment loses nothing: a stage's old outputs are
removed only when a worker takes it (not when it becomes ready: a run stopped before then leaves them, and
dvc.lock's record of them, as they were), and dvc.lock is written whole to a temporary file that replaces it,
with SIGINT/SIGTERM held meanwhile (DVC writes it in place: a stop mid-write left half a lock that still parsed).

This module calls DVC internals (the graph helpers, Stage methods, the run cache, the lockfile class): pyproject
pins the DVC versions the tests have run on.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import networkx as nx
from dvc.dvcfile import Lockfile as DvcLockfile
from dvc.repo import Repo
from dvc.repo.graph import get_subgraph_of_nodes
from dvc.repo.reproduce import get_active_graph
from dvc.stage import Stage
from dvc.stage.cache import _can_hash
from dvc.stage.serialize import to_single_stage_lockfile

from lipcore.io import atomic_path


@dataclass
class Plan:
    """The stages to consider (targets and everything upstream of them, frozen stages left out), each with the
    stages it depends on and what orders them when several are ready: the longest chain of stages that wait on it
    (critical path first), then the most iterations its params declare (the longest stage first), then DVC's order.

    The second key is for a pipeline's last stages, which all have a chain of one: in DVC's order, a shard's
    longest evaluate (inpainting, 8000 iterations a fit) started 36 min after two shorter ones and ended its
    shard 23 min later than the longest-first order would have."""

    stages: list[Stage]
    upstream: dict[Stage, list[Stage]]
    chain: dict[Stage, int] = field(default_factory=dict)
    iterations: dict[Stage, int] = field(default_factory=dict)

    @cached_property
    def order(self) -> dict[Stage, int]:
        """Each stage's place in DVC's order (dependencies first)."""
        return {stage: i for i, stage in enumerate(self.stages)}

    def priority(self, stage: Stage) -> tuple[int, int, int]:
        """Sorts ready stages: the one to start first, first."""
        return -self.chain[stage], -self.iterations.get(stage, 0), self.order[stage]


def plan(repo: Repo, targets: list[str] | None = None) -> Plan:
    """What `dvc repro [targets]` would walk, as a DAG."""
    graph = get_active_graph(repo.index.graph)  # DVC's edges point from a stage to the stages it depends on
    if targets:
        wanted = [stage for target in targets for stage in repo.stage.collect(target)]
        graph = get_subgraph_of_nodes(graph, wanted)  # the targets and everything they depend on
    stages = list(reversed(list(nx.topological_sort(graph))))  # dependencies first
    upstream = {stage: list(graph.successors(stage)) for stage in stages}
    chain: dict[Stage, int] = {}
    for stage in reversed(stages):  # dependents first: each stage's chain is 1 + its longest dependent's
        chain[stage] = 1 + max((chain[d] for d in graph.predecessors(stage)), default=0)
    return Plan(stages, upstream, chain, {stage: declared_iterations(stage) for stage in stages})


def declared_iterations(stage: Stage) -> int:
    """The largest `iterations` among the params the stage tracks: a proxy for how long it runs (a fit's cost is
    its iterations), cheap to read, and 0 for a stage that declares none. Only for ordering: a wrong guess costs
    time, never a result."""
    from dvc.dependency.param import ParamsDependency

    def found(key: str, value) -> Iterator[int]:
        if isinstance(value, dict):
            for k, v in value.items():
                yield from found(str(k), v)
        elif key.rsplit(".", 1)[-1] == "iterations" and type(value) is int:  # not a bool, not null
            yield value

    params = [dep.read_params() for dep in stage.deps if isinstance(dep, ParamsDependency)]
    return max((n for tracked in params for key, value in tracked.items() for n in found(key, value)), default=0)


def is_out_of_date(stage: Stage, upstream: list[Stage]) -> bool:
    """DVC's own test (`dvc status`): the stage's cmd, params, deps or outs differ from dvc.lock."""
    if stage.frozen or not stage.cmd:
        return False
    return stage.changed(upstream=upstream)


@contextmanager
def params_parsed_once() -> Iterator[None]:
    """Within it, DVC parses each version of a local params file once.

    DVC parses params.yaml afresh (a YAML load, ~50 ms) each time it hashes a stage's params, about six times per
    stage: a third of the executor's own time on a pipeline of small stages. The file does not change during a
    run; should it, its new size or mtime is a new version, parsed anew. Each caller gets its own copy."""
    from dvc.dependency import param

    load_path = param.load_path  # the name DVC's params dependency reads files through
    parsed: dict[tuple, object] = {}

    def load_once(fs_path, fs, **kwargs):
        if kwargs or getattr(fs, "protocol", None) != "local":
            return load_path(fs_path, fs, **kwargs)
        st = os.stat(fs_path)
        version = (os.path.abspath(fs_path), st.st_size, st.st_mtime_ns)
        if version not in parsed:
            parsed[version] = load_path(fs_path, fs)
        return copy.deepcopy(parsed[version])

    param.load_path = load_once
    try:
        yield
    finally:
        param.load_path = load_path


class Lockfile:
    """The dvc.lock entries of recorded stages, written together at most every `every` seconds (and by
    `write(force=True)`, which the executor calls however it ends).

    DVC's dump rewrites the whole file with a round-trip YAML parse and dump: ~1 s for a 27-stage lock and
    growing with it, which made the driver, not the stages, the bottleneck of a pipeline of small stages (and
    quadratic in a large one). A stage is cached and in the run cache as soon as it is recorded, so if the
    driver is killed before its entry is written, the next run restores it from there rather than rerunning it
    (all but stages with an uncached output, which have no run-cache entry)."""

    def __init__(self, every: float = 10.0):
        self.every = every
        self.pending: list[Stage] = []
        self.written = time.monotonic()

    def add(self, stage: Stage) -> None:
        """A recorded stage, whose entry the next write puts in dvc.lock."""
        self.pending.append(stage)

    def due(self) -> float | None:
        """Seconds until the pending entries must be written; None when there are none."""
        return max(0.0, self.written + self.every - time.monotonic()) if self.pending else None

    def write(self, force: bool = False) -> None:
        if not self.pending or (not force and self.due()):
            return
        files: dict[str, list[Stage]] = {}  # dvc.yaml path -> its stages (a repo may have several)
        for stage in self.pending:
            files.setdefault(stage.path, []).append(stage)
        with signals_held():
            for stages in files.values():
                dump_atomically(stages)
            self.pending.clear()
        self.written = time.monotonic()


def dump_atomically(stages: list[Stage]) -> None:
    """DVC's dump of these stages' dvc.lock entries (one dvc.yaml's), made on a copy of dvc.lock that then replaces
    it: a stop or a full disk mid-write leaves the old dvc.lock whole, never a cut one."""
    dvcfile = stages[0].dvcfile
    lock = Path(os.path.splitext(dvcfile.path)[0] + ".lock")  # where DVC keeps a dvc.yaml's lock
    with atomic_path(lock) as tmp:
        if lock.exists():
            shutil.copyfile(lock, tmp)
        _LockfileCopy(dvcfile.repo, tmp, lock).dump_stages(stages)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


class _LockfileCopy(DvcLockfile):
    """DVC's lockfile, written at `tmp`, that names itself `lock` (in DVC's "Updating lock file" line and its
    `git add` hint)."""

    def __init__(self, repo: Repo, tmp: Path, lock: Path):
        super().__init__(repo, os.fspath(tmp))
        self.shown = lock

    @property
    def relpath(self) -> str:
        return os.path.relpath(self.shown)


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends, then take effect as they would have. (Only the main thread
    can set handlers; elsewhere the block runs as is.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            os.kill(os.getpid(), caught[0])  # delivered now, to the handler that was in place


def restore(repo: Repo, stage: Stage, lock: Lockfile) -> bool:
    """If DVC ran this stage with these very deps before, bring its outputs back from the cache and record it
    (True), as `dvc repro` does. Else False, and nothing is touched: its outputs go only when a worker takes it."""
    cached = _cached_run(repo, stage)
    if cached is None:
        return False
    stage.remove_outs(ignore_remove=False, force=False)
    cached.checkout()
    record(stage, lock)
    return True


def _cached_run(repo: Repo, stage: Stage) -> Stage | None:
    """The run DVC's StageCache.restore would check out for this stage, or None; asked without that method's first
    step, which removes the outputs (and, once the deps are saved, would take a stage with changed deps for one
    without). The same two cases: a stage whose cmd and deps are as dvc.lock records them (only its outputs went
    missing or changed) has its own entry; any other, the run cache entry of its deps' current hashes."""
    if not _can_hash(stage):
        return None
    cache = repo.stage_cache
    if not stage.changed_stage() and stage.deps_cached() and all(out.hash_info for out in stage.outs):
        entry = to_single_stage_lockfile(stage)
    else:
        stage.save_deps()
        entry = cache._load(stage)
    if not entry:
        return None
    cached = cache._create_stage(entry, wdir=stage.wdir)
    return cached if cached.outs_cached() else None


def take(stage: Stage) -> None:
    """Just before a worker runs the stage's cmd: its old outputs removed and its deps saved, as `dvc repro` does."""
    stage.remove_outs(ignore_remove=False, force=False)
    stage.save_deps()


def record(stage: Stage, lock: Lockfile) -> None:
    """After the stage's cmd ran: hash and cache its outputs and hand its dvc.lock entry to `lock` (dvc repro's
    save, commit and dump); the run cache too, unless an output is not cached (as dvc repro decides)."""
    uncached = any(not out.use_cache for out in stage.outs if not (out.is_metric or out.is_plot))
    stage.save(run_cache=not uncached)
    stage.commit()
    lock.add(stage)


def locked_outs(lock: Path) -> dict[str, dict[str, str]]:
    """What a dvc.lock records of every stage's outputs: {stage: {out path: md5}} (for comparing two runs)."""
    import yaml

    stages = yaml.safe_load(Path(lock).read_text())["stages"]
    return {name: {o["path"]: o["md5"] for o in entry.get("outs", [])} for name, entry in stages.items()}
