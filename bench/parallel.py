"""Wall time of the whole pipeline from scratch: plain `dvc repro` against the Ray executor (stages/executor).

Each run gets its own fresh clone of this repository's HEAD (no outputs, no DVC cache, no run cache, so every
stage runs), with the params file given, and the runs go in the order given, so that runs of different kinds can
be interleaved on a noisy machine. Every run's dvc.lock is compared with the first's, output by output.

    python bench/parallel.py                                 # repro, then ray with 2 one-core workers
    python bench/parallel.py --runs ray:2 repro ray:1        # ray:N = a local Ray cluster of N cores
    python bench/parallel.py --runs repro ray:2 --targets evaluate@f16-denoise

Writes bench/out/parallel.json and prints a markdown table. Run nothing else meanwhile: the runs use every core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.executor.ledger import locked_outs  # noqa: E402


def command(kind: str, targets: list[str]) -> list[str]:
    if kind == "repro":
        return [str(Path(sys.executable).parent / "dvc"), "repro", *targets]
    if kind.startswith("ray:"):
        return [sys.executable, "-m", "stages.executor", "--num-cpus", kind.split(":")[1], *targets]
    raise SystemExit(f"--runs: {kind!r} is neither 'repro' nor 'ray:N'")


def one_run(kind: str, params: Path, targets: list[str], scratch: Path, index: int) -> dict:
    clone = scratch / f"{index}-{kind.replace(':', '')}"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    shutil.copy(params, clone / "params.yaml")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(clone),
        "DVC_NO_ANALYTICS": "1",
    }
    log = scratch / f"{clone.name}.log"
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(command(kind, targets), cwd=clone, env=env, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{kind} failed (exit {proc.returncode}); its log: {log}")
    status = subprocess.run(
        [env["PATH"].split(os.pathsep)[0] + "/dvc", "status", *targets],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    return {
        "kind": kind,
        "seconds": round(seconds, 1),
        "clean": "up to date" in status,
        "outs": locked_outs(clone / "dvc.lock"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=["repro", "ray:2"])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--targets", nargs="*", default=[])
    ap.add_argument("--keep", action="store_true", help="keep the clones (printed) for inspection")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="lip-bench-parallel-"))
    results = []
    try:
        for index, kind in enumerate(args.runs):
            print(f"running {kind} ...", flush=True)
            results.append(one_run(kind, args.params.resolve(), args.targets, scratch, index))
            print(f"  {results[-1]['seconds']:.0f} s", flush=True)
    finally:
        if args.keep:
            print(f"clones kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    first = results[0]
    for r in results:
        r["stages"] = len(r["outs"])
        r["differs_from_first"] = sorted(
            f"{stage}:{path}"
            for stage, files in r["outs"].items()
            for path, md5 in files.items()
            if first["outs"].get(stage, {}).get(path) != md5
        )
    repro = [r["seconds"] for r in results if r["kind"] == "repro"]
    record = {
        "machine": {"cores": os.cpu_count(), "torch_capability": _capability()},
        "params": str(args.params),
        "targets": args.targets,
        "runs": [{k: v for k, v in r.items() if k != "outs"} for r in results],
    }
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "parallel.json").write_text(json.dumps(record, indent=1))
    print("\n| run | wall time | vs dvc repro | stages | dvc status clean | outputs differing from the first run |")
    print("|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{repro[0] / r['seconds']:.2f}x" if repro else "-"
        print(
            f"| {r['kind']} | {r['seconds']:.0f} s | {ratio} | {r['stages']} | {r['clean']} | "
            f"{len(r['differs_from_first'])} {r['differs_from_first'][:4]} |"
        )


def _capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


if __name__ == "__main__":
    main()
