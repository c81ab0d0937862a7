"""A setting run a few images (or seeds) at a time, across sessions whose machines keep only what git holds.

A setting too big for one sitting (params.transfer-single.yaml: ~29 core-hours) runs as shards: each a subset of
its images, and of its seeds if need be, run with the executor like any setting, then exported into the repository
(evaluate's folders and the transfer matrix of its problems: a few hundred kB per problem) to be committed. When
every image is in with every seed, merge builds the setting's report from the committed shards, the same report.md,
figure for figure, that one run of the whole setting writes: every seed is derived from names (lipcore.seeding)
and every seed's fits are apart from the other seeds', so a problem's results do not depend on which other images
or seeds ran beside it, and a problem run seed by seed is stitched into the records of one run (stitch.py).

    python -m stages.shards run params.transfer-single.yaml --images kate zebra   # in a clone; rerun to resume
    git add report/transfer-single-shards && git commit
    python -m stages.shards run params.transfer-single.yaml --images butterfly bird   # the next session
    python -m stages.shards run params.transfer-single-long.yaml --images kate --seeds 0   # one image, one seed
    python -m stages.shards status params.transfer-single.yaml    # images (and seeds) in and left, run-length check
    python -m stages.shards status params.transfer-single.yaml --images kate   # the check over kate alone
    python -m stages.shards merge params.transfer-single.yaml     # all in: report/transfer-single/
    python -m stages.shards merge params.transfer-single.yaml --so-far   # before: report/transfer-single-so-far/

`run` writes the shard's params over params.yaml (refused unless params.yaml is the setting, a shard of it or
the committed params.yaml, which git restores), reproduces the shard's evaluate and transfer stages (and, in the
shard holding the GAN study's ticket, its image and seed, the GAN study) with `python -m stages.executor`, and
exports. Only settings whose problems do not meet across images shard: no multi-image groups, and transfer only
across tasks of one image. A shard of one seed is the unit that fits a session where one image of all seeds does
not (params.transfer-single-long.yaml: ~1 h 20 min of the 2-core Zen 4 per image and seed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from lipcore import io
from lipcore.imp import headline_round

from .. import report, transfer
from ..plumbing import artifacts, layout
from ..plumbing.params import Params, load_params, read_params_yaml
from ..reporting import claims
from . import stitch

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the names of a shard's files
# Here, not in plumbing/layout.py: that folder is a code dependency of every stage, and no stage reads these.


def shards_dir(setting: str) -> Path:
    """Where a setting run image by image keeps its finished parts, beside (not inside) the report it merges into:
    the report stage replaces its folder as a whole."""
    return layout.REPORT / f"{setting}-shards"


SHARD = "shard.json"  # inside a shard: what it holds and which params made it
SHARD_EVALUATE = "evaluate"  # inside a shard: evaluate's folders for its problems (and the GAN study's, in one shard)
SHARD_TRANSFER = "transfer"  # inside a shard: its transfer matrix
SHARD_PARAMS_HEADER = (
    "# shard of {setting_file}: images {images}, seeds {seeds} (python -m stages.shards; not a setting to edit)"
)
SHARD_OUT = layout.OutputDir("shards export", SHARD, (SHARD, SHARD_EVALUATE, SHARD_TRANSFER))
SHARDS_HEADLINE = "headline.json"  # inside shards_dir: the merged report's headline numbers
SO_FAR = "-so-far"  # the folder of a setting's report over the images in so far: report/<setting>-so-far


# ---------------------------------------------------------------- what a shard is


def digest(setting_file: Path) -> str:
    """The setting's identity, images aside: shards merge only when every other number is the same."""
    data = read_params_yaml(setting_file)
    rest = {k: v for k, v in data.items() if k != "images"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:16]


def check_shardable(params: Params, setting_file: Path) -> None:
    """Refuse a setting whose results depend on several images at once (they would differ shard by shard)."""
    if params.multi.groups:
        raise ValueError(
            f"{setting_file}: multi.groups {sorted(params.multi.groups)} fit several images together; "
            "a setting with multi-image groups cannot run image by image (run it whole)"
        )
    if params.transfer.pairs != "across_tasks" and len(params.images) > 1:
        raise ValueError(
            f"{setting_file}: transfer.pairs is {params.transfer.pairs!r}, which retrains masks across images; "
            "set it to across_tasks to run this setting image by image (or run it whole)"
        )


def ticket_image(params: Params) -> str:
    """The image whose shard runs the GAN study (its DIP baseline uses that problem's LIP ticket)."""
    problem, _ = params.gan_ticket()
    return next(i for i in params.images for t in params.tasks if layout.pair_id(i, t) == problem)


def holds_ticket(params: Params, images: list[str], seeds: list[int]) -> bool:
    """Whether the shard of `images` x `seeds` holds the GAN study's ticket (its image and its seed)."""
    return ticket_image(params) in images and params.gan_ticket()[1] in seeds


def shard_name(params: Params, images: list[str], seeds: list[int]) -> str:
    """`kate+zebra`, or `kate+zebra@s0` for a shard of some of the setting's seeds."""
    name = "+".join(images)
    return name if list(seeds) == list(params.seeds) else f"{name}@" + "+".join(f"s{s}" for s in seeds)


def shard_images(params: Params, images: list[str], setting_file: Path) -> list[str]:
    """`images` in the setting's order, each one of its images, once."""
    return _subset("images", images, list(params.images), setting_file)


def shard_seeds(params: Params, seeds: list[int] | None, setting_file: Path) -> list[int]:
    """`seeds` in the setting's order, each one of its seeds, once; None: all of them."""
    return list(params.seeds) if seeds is None else _subset("seeds", seeds, list(params.seeds), setting_file)


def _subset(key: str, given: list, setting: list, setting_file: Path) -> list:
    """`given` in the order of `setting` (the setting's `key`), each one of them, once; refused otherwise."""
    unknown = [x for x in given if x not in setting]
    if unknown or not given or len(set(given)) != len(given):
        raise ValueError(
            f"--{key} {given}: give distinct {key} of {setting_file}'s {key} {setting}"
            + (f" ({unknown} are not)" if unknown else "")
        )
    return [x for x in setting if x in given]


def shard_params(setting_file: Path, params: Params, images: list[str], seeds: list[int]) -> dict[str, Any]:
    """The setting with its images cut to `images` and its seeds to `seeds`; a GAN ticket the shard does not hold
    is dropped (the shard runs no GAN stage, and the params check would refuse a ticket or a ticket seed that is
    not one of its problems or seeds)."""
    data = read_params_yaml(setting_file)
    data["images"] = list(images)
    data["seeds"] = list(seeds)
    dip = data.get("gan", {}).get("dip", {})
    if not holds_ticket(params, images, seeds):
        for key in ("ticket", "seed"):
            if dip.get(key) is not None:
                dip[key] = None
    return data


def targets(params: Params, images: list[str], seeds: list[int]) -> list[str]:
    """The stages a shard reproduces (with everything upstream): its problems' evaluate, the transfer matrix, and
    the GAN study in the ticket's shard. Not the report: merge writes it once every shard is in."""
    wanted = [f"evaluate@{layout.pair_id(i, t)}" for i in images for t in params.tasks] + ["transfer"]
    return wanted + (["gan_evaluate"] if holds_ticket(params, images, seeds) else [])


# ---------------------------------------------------------------- the shards on disk


def existing(setting: str) -> dict[str, dict[str, Any]]:
    """Every exported shard of `setting`: its folder name -> its shard.json."""
    root = shards_dir(setting)
    found = {}
    for entry in sorted(root.iterdir()) if root.is_dir() else ():
        if (entry / SHARD).is_file():
            found[entry.name] = artifacts.read_record(entry / SHARD, ("setting", "digest", "images"))
    return found


def write_shard_params(
    setting_file: Path, params: Params, images: list[str], seeds: list[int], path: Path = Path("params.yaml")
) -> None:
    """Write the shard's params over `path`, only where that loses nothing: `path` absent, a copy of the setting,
    a shard of it written here, or the version git holds (a fresh clone's default params.yaml)."""
    header = SHARD_PARAMS_HEADER.format(setting_file=setting_file.name, images=images, seeds=seeds)
    if path.exists():
        text = path.read_text()
        ours = text.startswith(SHARD_PARAMS_HEADER.split("{")[0] + setting_file.name + ":")
        if text not in (setting_file.read_text(), _committed(path)) and not ours:
            raise ValueError(
                f"{path} is neither {setting_file}, a shard of it nor the committed {path}; refusing to replace it "
                "(commit or move it, and run shards in a clone of their own)"
            )
    body = yaml.safe_dump(shard_params(setting_file, params, images, seeds), sort_keys=False)
    with io.atomic_path(path) as tmp:
        tmp.write_text(f"{header}\n{body}")


def export(
    params: Params, setting_file: Path, images: list[str], seeds: list[int], evaluate: Path, transfer_dir: Path
) -> Path:
    """Copy the finished shard into shards_dir: evaluate's folders of its problems (and the GAN study's),
    its transfer matrix, and shard.json. Refused if a problem has not been evaluated."""
    ids = [layout.pair_id(i, t) for i in images for t in params.tasks]
    with_gan = holds_ticket(params, images, seeds)
    sources = [evaluate / i for i in ids] + ([evaluate / layout.GAN_EVALUATE.name] if with_gan else [])
    missing = [str(p) for p in sources if not (p / layout.RESULTS).is_file()]
    missing += [] if (transfer_dir / layout.MATRIX).is_file() else [str(transfer_dir / layout.MATRIX)]
    if missing:
        raise ValueError(f"shard {images} is not finished: {missing} missing; run its stages first (stages.shards run)")
    out = shards_dir(params.setting) / shard_name(params, images, seeds)
    with SHARD_OUT.write(out) as tmp:
        for src in sources:
            shutil.copytree(src, tmp / SHARD_EVALUATE / src.name)
        (tmp / SHARD_TRANSFER).mkdir()
        shutil.copy(transfer_dir / layout.MATRIX, tmp / SHARD_TRANSFER / layout.MATRIX)
        record = {"setting": params.setting, "digest": digest(setting_file), "images": images, "seeds": seeds}
        record["gan"] = with_gan
        io.write_json(tmp / SHARD, {**record, "commit": _commit()})
    return out


def _committed(path: Path) -> str | None:
    """`path` as the checkout's HEAD holds it (None if git holds no such file, or outside a git checkout)."""
    try:
        done = subprocess.run(["git", "show", f"HEAD:./{path}"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout


def _commit() -> str | None:
    """The code's git commit, for the record (None outside a git checkout)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def seeds_of(params: Params, shard: dict[str, Any]) -> list[int]:
    """The seeds a shard holds: its shard.json's, or all of the setting's (a shard.json written before shards split
    by seed has none)."""
    return list(shard.get("seeds", params.seeds))


def covered(params: Params, setting_file: Path) -> tuple[dict[str, dict], dict[tuple[str, int], str]]:
    """The setting's shards (refused if one is of other params, or two hold the same image and seed), and which
    shard holds each (image, seed) in so far. A shard.json without seeds (written before shards split by seed)
    holds all of the setting's seeds."""
    shards = existing(params.setting)
    want, seen = digest(setting_file), {}
    for name, shard in shards.items():
        if shard["digest"] != want:
            raise ValueError(
                f"{shards_dir(params.setting) / name} was made with other params than {setting_file} "
                "(they differ in more than images and seeds); remove it and run that shard again"
            )
        for cell in ((i, s) for i in shard["images"] for s in seeds_of(params, shard)):
            if cell in seen:
                raise ValueError(f"image {cell[0]} seed {cell[1]} is in two shards ({seen[cell]}, {name}); remove one")
            seen[cell] = name
    return shards, seen


def left(params: Params, setting_file: Path) -> tuple[dict[str, dict], list[str]]:
    """The setting's shards, and the images left: those with a seed in no shard yet."""
    shards, seen = covered(params, setting_file)
    return shards, [i for i in params.images if any((i, s) not in seen for s in params.seeds)]


def seeds_left(params: Params, setting_file: Path) -> dict[str, list[int]]:
    """Each image with a seed in no shard yet -> those seeds."""
    _, seen = covered(params, setting_file)
    todo = {i: [s for s in params.seeds if (i, s) not in seen] for i in params.images}
    return {i: seeds for i, seeds in todo.items() if seeds}


def parts(params: Params, shards: dict[str, dict]) -> dict[str, list[tuple[Path, list[int]]]]:
    """Each folder name of the shards' evaluate (a problem, or the GAN study's) -> the shard folders holding it
    and the seeds each holds."""
    root, found = shards_dir(params.setting), {}
    for name, shard in shards.items():
        for entry in sorted((root / name / SHARD_EVALUATE).iterdir()):
            found.setdefault(entry.name, []).append((entry, seeds_of(params, shard)))
    return found


def problem_results(params: Params, held: list[tuple[Path, list[int]]]) -> dict[str, Any]:
    """One problem's results.json over the seeds its shards hold: one shard's as it is, several stitched."""
    keys = ("summary", "per_seed")
    records = [(artifacts.read_record(folder / layout.RESULTS, keys), seeds) for folder, seeds in held]
    return records[0][0] if len(records) == 1 else stitch.results(params, records)


def run_length_so_far(params: Params, shards: dict[str, dict], images: list[str] | None = None) -> list[str]:
    """The report's run-length check over the problems of the shards in so far (of `images` alone, if given), over
    the seeds in so far: a run length that fails on the first images is worth knowing before the rest of the
    setting is run with it."""
    held = parts(params, shards)
    ids = [layout.pair_id(image, task) for image in images or params.images for task in params.tasks]
    records = {pid: problem_results(params, held[pid]) for pid in ids if pid in held}
    return claims.run_length_lines(records) if records else []


# ---------------------------------------------------------------- merge


def merged_matrix(params: Params, matrices: list[tuple[dict[str, Any], list[int]]]) -> dict[str, Any]:
    """The transfer matrix of the whole setting from its shards' (each with the seeds it ran): every cell's
    per-seed scores joined in the setting's seed order (transfer is within an image, so a cell's seeds lie in the
    shards of its image), or the note the whole setting's transfer stage writes."""
    head = headline_round(params.sparsity, params.imp)
    pairs = [(image, task) for image in params.images for task in params.tasks]
    for m, _ in matrices:
        if m["round"] != head:
            raise ValueError(f"a shard's transfer matrix is of round {m['round']}, the setting's headline is {head}")
    nothing = transfer.nothing_to_transfer(head, pairs, params.transfer)
    return stitch.matrix(params, matrices, [layout.pair_id(*p) for p in pairs], nothing)


def gather_evaluate(params: Params, shards: dict[str, dict], images: list[str], evaluate: Path) -> None:
    """evaluate's folder of every problem of `images` (all their seeds in) and the GAN study's, in `evaluate`: a
    link to the one shard's folder that holds all of a problem's seeds, or the folder stitched from its shards
    (results.json over all seeds; the images, which are the first seed's, from the shard holding it)."""
    wanted = {layout.pair_id(i, t) for i in images for t in params.tasks} | {layout.GAN_EVALUATE.name}
    for name, held in parts(params, shards).items():
        if name not in wanted:
            continue
        if len(held) == 1:
            (evaluate / name).symlink_to(held[0][0].resolve(), target_is_directory=True)
            continue
        first = next(folder for folder, seeds in held if params.seeds[0] in seeds)
        shutil.copytree(first, evaluate / name, ignore=shutil.ignore_patterns(layout.RESULTS))
        io.write_json(evaluate / name / layout.RESULTS, problem_results(params, held))


def merge(setting_file: Path, out: Path | None = None, so_far: bool = False) -> Path:
    """Build the setting's report from its shards (all images in); returns the report folder. With `so_far`, the
    report of the images in so far (all their seeds), in a folder of its own (report/<setting>-so-far): the report
    a run of the setting cut to those images writes, under a line that names the images left."""
    params = load_params(setting_file)
    check_shardable(params, setting_file)
    shards, missing = left(params, setting_file)
    if missing and not so_far:
        raise ValueError(
            f"images {missing} of {setting_file} are in no shard yet (or not all their seeds); run "
            f"`python -m stages.shards run {setting_file} --images {' '.join(missing)}` (or a few of them) first, "
            "or add --so-far for the report of the images in so far"
        )
    if not shards:
        raise ValueError(f"{setting_file} has no shard in {shards_dir(params.setting)} yet; nothing to merge")
    root = shards_dir(params.setting)
    partial = bool(missing)
    images_in = [i for i in params.images if i not in missing]
    if not images_in:
        raise ValueError(f"no image of {setting_file} has all its seeds in a shard yet; nothing to merge")
    out = out or layout.report_dir(f"{params.setting}{SO_FAR if partial else ''}")
    with tempfile.TemporaryDirectory(prefix="lip-shards-") as scratch:
        evaluate, transfer_dir = Path(scratch) / "evaluate", Path(scratch) / "transfer"
        evaluate.mkdir()
        transfer_dir.mkdir()
        params_file, headline_file = setting_file, root / SHARDS_HEADLINE
        if partial:  # the setting cut to the images in; its headline numbers are not the setting's: not kept
            params_file, headline_file = Path(scratch) / "params.yaml", Path(scratch) / SHARDS_HEADLINE
            cut = shard_params(setting_file, params, images_in, list(params.seeds))
            params_file.write_text(yaml.safe_dump(cut, sort_keys=False))
            params = load_params(params_file)
        gather_evaluate(params, shards, images_in, evaluate)
        matrices = []
        for name, shard in shards.items():
            path = root / name / SHARD_TRANSFER / layout.MATRIX
            record = artifacts.read_record(path, ("round", "point", "psnr", "full", "per_seed"))
            matrices.append((record, seeds_of(params, shard)))
        io.write_json(transfer_dir / layout.MATRIX, merged_matrix(params, matrices))
        report.main(
            [
                *("--params", str(params_file), "--evaluate", str(evaluate), "--transfer", str(transfer_dir)),
                *("--out", str(out), "--headline", str(headline_file)),
            ]
        )
    if partial:
        mark_so_far(out / layout.REPORT_MD, setting_file, len(images_in), missing)
    return out


def mark_so_far(report_md: Path, setting_file: Path, n_in: int, missing: list[str]) -> None:
    """Say under the report's title that it holds only some of the setting's images, and which are left."""
    title, rest = report_md.read_text().split("\n", 1)
    mark = (
        f"**So far: {n_in} of {n_in + len(missing)} images of {setting_file.name}; {missing} are not in yet.** "
        f"Every claim below is over the images in; `python -m stages.shards merge {setting_file.name} --so-far` "
        "wrote this, and `merge` without --so-far writes the setting's report once every image is in."
    )
    with io.atomic_path(report_md) as tmp:
        tmp.write_text(f"{title}\n\n{mark}\n{rest}")


# ---------------------------------------------------------------- the command


def run(setting_file: Path, images: list[str], executor_args: list[str], seeds: list[int] | None = None) -> Path:
    """Write the shard's params, reproduce its stages with the executor, export it; returns the shard folder."""
    params = load_params(setting_file)
    check_shardable(params, setting_file)
    images = shard_images(params, images, setting_file)
    seeds = shard_seeds(params, seeds, setting_file)
    shards, seen = covered(params, setting_file)
    if done := [f"{i} seed {s}" for i in images for s in seeds if (i, s) in seen]:
        raise ValueError(f"{done} are already in a shard of {params.setting} ({sorted(shards)}); leave them out")
    write_shard_params(setting_file, params, images, seeds)
    command = [sys.executable, "-m", "stages.executor", *executor_args, *targets(params, images, seeds)]
    log.info("shard %s: %s", shard_name(params, images, seeds), " ".join(command))
    if run_child(command) != 0:
        raise ValueError(f"the executor stopped before shard {images} was done; rerun the same command to resume")
    return export(params, setting_file, images, seeds, layout.EVALUATE, layout.TRANSFER)


def run_child(command: list[str]) -> int:
    """Run `command` and return its exit status, passing on a SIGINT or SIGTERM sent to this process: the
    executor then stops as it does when stopped itself (its stages recorded, dvc.lock written). subprocess.run
    does not: a SIGTERM to this process alone ended it and left the executor running, orphaned, and a Ctrl-C
    SIGKILLed the executor a quarter of a second into its graceful stop."""
    child = subprocess.Popen(command)

    def pass_on(signum: int, frame) -> None:
        child.send_signal(signum)  # a Ctrl-C reaches the child from the terminal too: the executor takes it twice

    previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, what in (
        ("run", "run a shard's stages with the executor and export it"),
        ("status", "which images are in a shard, which are left, and the run-length check so far"),
        ("merge", "build the setting's report from its shards"),
    ):
        cmd = sub.add_parser(name, help=what)
        cmd.add_argument("setting", type=Path, help="the setting's params file, e.g. params.transfer-single.yaml")
        if name == "run":
            cmd.add_argument("--images", nargs="+", required=True, help="the shard's images (of the setting's)")
            cmd.add_argument("--seeds", nargs="+", type=int, help="the shard's seeds (of the setting's; default all)")
            cmd.add_argument("--workers", type=int, help="passed to the executor")
        if name == "status":
            cmd.add_argument("--images", nargs="+", help="the run-length check over these images alone")
        if name == "merge":
            cmd.add_argument("--so-far", action="store_true", help="the report of the images in so far")
    args = ap.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command == "run":
        print(run(args.setting, args.images, ["--workers", str(args.workers)] if args.workers else [], args.seeds))
    elif args.command == "status":
        params = load_params(args.setting)
        shards, missing = left(params, args.setting)
        for name, shard in shards.items():
            seeds = f", seeds {shard['seeds']}" if "seeds" in shard else ""
            print(f"{name}: {shard['images']}{seeds} (commit {shard.get('commit')})")
        todo = seeds_left(params, args.setting)
        todo = [i if s == list(params.seeds) else f"{i} (seeds {s})" for i, s in todo.items()]
        print(f"left: {todo}" if todo else "all images are in: merge")
        images = args.images
        if images:
            held = [i for i in params.images if i not in missing]  # from left(), as merge counts them
            if absent := [i for i in images if i not in held]:
                raise ValueError(f"images {absent} are in no shard of {args.setting} (in: {held})")
        check = run_length_so_far(params, shards, images)
        if check:
            over = f"images {images}" if images else f"the {len(shards)} shard(s) in so far"
            print(f"\nThe run-length check over {over}:\n")
            print("\n".join(check))
    else:
        print(merge(args.setting, so_far=args.so_far))
