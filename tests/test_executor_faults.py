"""The executor stopped at every kind of moment loses nothing: SIGTERM, SIGINT and SIGKILL to the driver (while a
stage runs, right after one is recorded, inside the write of dvc.lock) and SIGKILL to a worker mid-stage.

One project, built once without interruption, is the reference. A copy of it has a code dependency of the training
stages edited (so six stages are out of date while their outputs, being deterministic, stay the same bytes) and is then
run again and again, each run stopped in another way, one worker at a time. After every stop: no process of the
run is left, dvc.lock parses with every entry whole, every stage DVC calls up to date holds the reference's
outputs, and no stage that was not running lost an output. A last run finishes, and every output md5 equals the
reference's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import dvc_project, locked_outs, run_command, run_executor, tiny_params

pytest.importorskip("ray", reason="the parallel executor needs ray: pip install -e '.[parallel]'")

TARGETS = ["imp_round"]  # check_params, 2 degrade, 2 dense fits, 4 rounds: stages of every training kind
EXECUTOR = [sys.executable, "-m", "stages.executor", "--num-cpus", "1", "--workers", "1", *TARGETS]

# The driver with dvc.lock written after every recorded stage, and a fault inside its first write (after DVC's dump
# of the entries, before the file replaces dvc.lock): the moment a stop used to cut dvc.lock short.
IN_LOCK_WRITE = """
import errno, os, signal, sys, time
from stages.executor import ledger, parallel
ledger.Lockfile.__init__.__defaults__ = (0.0,)
dump = ledger.DvcLockfile.dump_stages
def dump_then_fault(self, stages, **kwargs):
    dump(self, stages, **kwargs)
    {fault}
ledger.DvcLockfile.dump_stages = dump_then_fault
sys.exit(parallel.main({argv}))
"""
FAULTS = {
    signal.SIGTERM: "os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.5)",
    signal.SIGKILL: "os.kill(os.getpid(), signal.SIGKILL)",
    "ENOSPC": "raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))",  # the disk full
}


def outputs(path: Path, stages: dict) -> dict[str, str]:
    """{stage: one hash of every file of its outputs} for the stages whose outputs dvc.yaml lists."""
    found = {}
    for name, outs in stages.items():
        digest = hashlib.md5()
        for out in outs:
            root = path / out
            files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
            for f in files:
                digest.update(f"{f.relative_to(path)}\0".encode())
                digest.update(f.read_bytes() if f.exists() else b"<missing>")
        found[name] = digest.hexdigest()
    return found


def stage_outs(path: Path) -> dict[str, list[str]]:
    """dvc.lock's record of each stage's output paths."""
    return {name: list(outs) for name, outs in locked_outs(path).items()}


def run_processes(path: Path) -> list[psutil.Process]:
    """Processes working in `path` (the driver, its Ray cluster, the workers), other than this test's."""
    left = []
    for proc in psutil.process_iter(["cwd", "pid", "status"]):
        try:
            alive = proc.info["status"] != psutil.STATUS_ZOMBIE  # a zombie is dead: it only waits to be reaped
            if alive and proc.info["cwd"] == str(path) and proc.pid != psutil.Process().pid:
                left.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return left


def command_line(proc: psutil.Process) -> str:
    """The process's command line; "" once it has ended (or become a zombie) since it was listed."""
    try:
        return " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return ""


def wait_until_gone(path: Path, workers_only: bool, seconds: float = 20.0) -> None:
    """Wait until no process of the run is left (workers_only: no worker, which is what could write an output;
    a driver killed with SIGKILL cannot stop the Ray cluster's agents, which end on their own later)."""

    def left() -> list[psutil.Process]:
        procs = run_processes(path)
        return [p for p in procs if "StageRunner" in command_line(p)] if workers_only else procs

    deadline = time.monotonic() + seconds
    while (procs := left()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not procs, f"{path.name}: still running after the stop: {[command_line(p)[:60] for p in procs]}"
    for proc in run_processes(path):  # Ray's leftovers after a SIGKILL: not to pile up over the runs
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def stop_at(path: Path, env: dict, cmd: list[str], when: str, how) -> tuple[int, str]:
    """Start the driver; when a line of its output matches `when`, call how(driver); its exit status and output."""
    proc = subprocess.Popen(cmd, cwd=path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if when and re.search(when, line):
                how(proc)
                when = ""
        return proc.wait(timeout=120), "".join(lines)
    finally:
        proc.kill()


def kill_worker(path: Path):
    def how(driver: subprocess.Popen) -> None:
        workers = [p for p in run_processes(path) if "StageRunner" in command_line(p)]
        assert workers, "no worker process found"
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()

    return how


def check_after_stop(
    path: Path, env: dict, dvc: str, reference: dict, before: dict, started: list[str], killed: bool
) -> None:
    wait_until_gone(path, workers_only=killed)
    lock = yaml.safe_load((path / "dvc.lock").read_text())
    for name, entry in lock["stages"].items():  # whole entries only: a cut write left one without outs
        assert {"cmd", "deps", "outs"} <= set(entry), (name, sorted(entry))
        assert all("md5" in out for out in entry["outs"]), name
    stale = json.loads(run_command([dvc, "status", "--json"], path, env, stdout_only=True))
    locked = locked_outs(path)
    for name in set(locked) - set(stale):  # what DVC calls up to date is what an uninterrupted run made
        assert locked[name] == reference[name], name
    after = outputs(path, stage_outs(path))
    lost = [name for name in before if name not in started and after[name] != before[name]]
    assert not lost, f"stages that never started lost or changed outputs: {lost}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, and a copy of its project with a code dependency of the training stages edited."""
    path, env, dvc = dvc_project(tmp_path_factory.mktemp("reference"), tiny_params())
    run_executor(path, env, *TARGETS, cpus=1)
    copy = tmp_path_factory.mktemp("stopped") / "lip"
    shutil.copytree(path, copy, symlinks=True)
    env = {**env, "PYTHONPATH": str(copy)}  # the copy's own stages
    for stage in ("dense_fit", "imp_round"):  # the training stages' own code: six stages out of date
        with (copy / "stages" / f"{stage}.py").open("a") as f:
            f.write("# edited: the stage out of date, its outputs the same bytes\n")
    return path, copy, env, dvc, locked_outs(path)


# name: (the output line to act on; what to do then). "in the write": the driver itself signals inside its dvc.lock
# write; "worker": SIGKILL to the worker running a stage; a signal: sent to the driver.
STOPS = {
    "SIGKILL to the worker mid-stage": (r"started dense_fit", "worker"),
    "SIGTERM to the driver mid-stage": (r"started ", signal.SIGTERM),
    "SIGINT to the driver after a stage is recorded": (r"done in ", signal.SIGINT),
    "SIGTERM inside the dvc.lock write": ("in the write", signal.SIGTERM),
    "SIGKILL inside the dvc.lock write": ("in the write", signal.SIGKILL),
    "the disk full inside the dvc.lock write": ("in the write", "ENOSPC"),
    "SIGKILL to the driver mid-stage": (r"started ", signal.SIGKILL),
}


def test_every_stop_leaves_what_a_rerun_finishes_byte_identically(reference):
    path, copy, env, dvc, locked = reference
    for name, (when, action) in STOPS.items():
        before = outputs(copy, stage_outs(copy))
        if when == "in the write":
            code = IN_LOCK_WRITE.format(fault=FAULTS[action], argv=EXECUTOR[3:])
            status, out = stop_at(copy, env, [sys.executable, "-c", code], "", None)
        elif action == "worker":
            status, out = stop_at(copy, env, EXECUTOR, when, kill_worker(copy))
        else:
            status, out = stop_at(copy, env, EXECUTOR, when, lambda driver, sig=action: driver.send_signal(sig))
        started = re.findall(r"started (\S+)", out)
        assert started and status != 0, f"{name}: the run was not stopped\n{out}"
        assert "Traceback" not in out and "Stack trace" not in out, f"{name}:\n{out}"
        if action in (signal.SIGTERM, signal.SIGINT):  # one line, and the shell's status for that signal
            assert status == 128 + action, f"{name}: exit status {status}\n{out}"
            assert re.search(rf"ERROR: stopped by {action.name}: \d+ stages recorded", out), f"{name}:\n{out}"
        if action == "ENOSPC":
            assert status == 1 and "No space left on device; free disk space" in out, f"{name}:\n{out}"
        check_after_stop(copy, env, dvc, locked, before, started, killed=action == signal.SIGKILL)
    out = run_executor(copy, env, *TARGETS, cpus=1)
    assert locked_outs(copy) == locked, out
    assert "Updating lock file 'dvc.lock'" in out, out  # DVC's line names dvc.lock, not the copy written first
    assert run_command([dvc, "status", "--json", "--with-deps", *TARGETS], copy, env, stdout_only=True).strip() == "{}"
    assert not list(copy.glob(".dvc.lock.*.tmp")), "a copy of dvc.lock left behind"


@pytest.fixture(scope="module")
def unbuilt(tmp_path_factory):
    return dvc_project(tmp_path_factory.mktemp("unbuilt"), tiny_params())


def _hold_the_repo(path: Path, env: dict):
    """DVC's repo lock, held as `dvc repro` holds it while it records a stage."""
    from dvc.repo import Repo

    return Repo(str(path)).lock


def _a_running_dvc_repro(path: Path, env: dict):
    """DVC's per-output lock as `dvc repro` leaves it while a stage's command runs (it lets go of the repo lock
    then): this test process stands in for it."""
    import contextlib
    import os

    rwlock = path / ".dvc" / "tmp" / "rwlock"
    rwlock.parent.mkdir(parents=True, exist_ok=True)
    out = str(path / "outs" / "degrade" / "f16-denoise")
    rwlock.write_text(json.dumps({"write": {out: {"pid": os.getpid(), "cmd": "dvc repro degrade"}}, "read": {}}))

    @contextlib.contextmanager
    def held():
        try:
            yield
        finally:
            rwlock.unlink()

    return held()


def _a_broken_lockfile(path: Path, env: dict):
    import contextlib

    @contextlib.contextmanager
    def broken():
        (path / "dvc.lock").write_text("schema: '2.0'\nstages: [\n")
        try:
            yield
        finally:
            (path / "dvc.lock").unlink()

    return broken()


def _nothing(path: Path, env: dict):
    import contextlib

    return contextlib.nullcontext()


REFUSALS = {
    "a second executor (DVC's repo lock held)": (_hold_the_repo, ["degrade"], r"Unable to acquire lock.*wait for it"),
    "dvc repro running a stage": (
        _a_running_dvc_repro,
        ["degrade"],
        r"another DVC process runs a stage here \(PID \d+: dvc repro degrade\); wait",
    ),
    "an unparseable dvc.lock": (_a_broken_lockfile, ["degrade"], r"'dvc.lock'.*corrupted.*git checkout dvc.lock"),
    "an unknown stage": (_nothing, ["no_such_stage"], r"Stage 'no_such_stage' not found.*dvc stage list"),
}


@pytest.mark.parametrize("state, targets, message", REFUSALS.values(), ids=REFUSALS.keys())
def test_what_dvc_refuses_is_one_line_saying_what_to_do(unbuilt, state, targets, message):
    path, env, _ = unbuilt
    with state(path, env):
        out = run_command([sys.executable, "-m", "stages.executor", "--num-cpus", "1", *targets], path, env, ok=False)
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    assert re.search(f"^ERROR: .*{message}", out.strip()), out
    assert not (path / "dvc.lock").exists() and not (path / "outs").exists()  # and nothing was run
