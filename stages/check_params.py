"""Stage check_params: the pipeline's first stage, params.yaml checked whole before any other command runs.

python -m stages.check_params --out outs/params-checked.json

dvc.yaml puts params values into shell commands (`--name ${item.image}`, `--group ${item.group}`, `--m ${item.m}`,
report/${setting}): a name such as `x$(touch PWNED)` would run as shell code when DVC starts that stage's command,
before its Python could refuse it. degrade and gan_prepare depend on this stage's output, and every other stage on
theirs, so DVC runs this one first and stops when it fails. Its params are every value dvc.yaml interpolates into
a command or path, so a change to any of them reruns it; its output is the same file every time, so a run that
passes reruns nothing downstream.
"""

from __future__ import annotations

import logging

from lipcore import io

from .plumbing import entry
from .plumbing.params import Params, load_params

log = logging.getLogger("lip.check_params")

STAMP = {"checked": "params.yaml", "by": "stages.check_params"}  # the same bytes whatever params held


def interpolated(params: Params) -> dict[str, object]:
    """What dvc.yaml interpolates into commands and output paths (this stage's params list in dvc.yaml)."""
    multi, gan = params.multi, params.gan
    groups = multi.groups
    return {
        "setting": params.setting,
        "images": params.images,
        "tasks": params.tasks,
        "seeds": params.seeds,
        "imp.chain": params.imp.chain,
        "multi.task": multi.task,
        "multi.images": multi.images,
        "multi.modes": multi.modes,
        # a group's params are its images (reading one records multi.groups.<name>.train)
        "multi.groups": {name: (group.train, group.heldout) for name, group in groups.items()} if groups else {},
        "gan.chain": gan.chain,
        "gan.cs.m": gan.cs.m,
    }


def main(argv: list[str] | None = None) -> None:
    ap = entry.parser(__doc__)
    ap.add_argument("--out", type=entry.output_file(".json", tuple(STAMP)), required=True)
    args = entry.start(ap, argv)
    params = load_params(args.params)  # every check of the schema: names, types, ranges, keys
    names = interpolated(params)
    log.info("%s checked: %s", args.params, ", ".join(f"{k} {v!r}" for k, v in names.items() if k != "multi.groups"))
    io.write_json(args.out, STAMP)  # atomic


if __name__ == "__main__":
    entry.run(main)
