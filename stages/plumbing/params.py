"""The schema of params.yaml: one frozen dataclass tree, loaded and checked once per stage.

Sections are lipcore's configs (net, fit, imp, each task's degradation); the pipeline adds the top-level
keys, task_defs and evaluate. Unknown keys and wrong types are refused at every level with the key's path.
Every field records its params key when read (lipcore.schema.recording_reads): tests/test_params_deps.py
checks that each DVC stage lists exactly the keys its code reads.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from lipcore.config import ChannelsConfig, DegradationConfig, FitConfig, ImpConfig, NetConfig, OesConfig, round_chain
from lipcore.csgm import CsgmConfig
from lipcore.fista import FistaConfig
from lipcore.gan_prune import DistillConfig
from lipcore.imp import headline_round
from lipcore.multi import Mode
from lipcore.physics import task_class
from lipcore.runtime import resolve_device
from lipcore.schema import Section, from_dict, shown, unrecorded, with_keys
from lipcore.trials import ProtocolName

from . import layout


@dataclass(frozen=True)
class TaskDef(Section):
    """One task: its degradation and the overrides of the `fit` section it publishes (e.g. reg-noise, EMA)."""

    degradation: DegradationConfig
    fit: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class EvaluateConfig(Section):
    decoder_layers: int = 6  # deep-decoder baseline; its width is chosen to match LIP's weight count
    curve_methods: tuple[str, ...] = ()  # baselines also fitted at every round's sparsity (for the curves)
    baselines: tuple[str, ...] = ("random_global", "random_layer", "snip", "snip_layer")  # at the headline
    oes: OesConfig = dataclasses.field(default_factory=OesConfig)  # the OES baseline's mask search (lipcore.oes)
    long_run: int = 0  # > 0: also fit the long-run methods this many times the run length (plumbing.long_run)
    channels: ChannelsConfig = dataclasses.field(default_factory=ChannelsConfig)  # channel tickets (structured)

    def __post_init__(self) -> None:
        from lipcore import methods

        for key in ("curve_methods", "baselines"):
            methods.refuse_unknown(key, getattr(self, key), curve=key == "curve_methods")  # names the registered
        if self.decoder_layers < 1:
            raise ValueError(f"decoder_layers must be >= 1, got {self.decoder_layers}")
        if self.long_run < 0:
            raise ValueError(f"long_run must be >= 0 (0: no long runs; k: k times the run length), got {self.long_run}")


def refuse_repeats(key: str, values: tuple) -> None:
    """Refuse a list that names a value twice (each value names outputs of its own)."""
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{key}: {repeated} listed more than once (each names outputs of its own)")


# Image, task, group, setting and face names: dvc.yaml puts them into shell commands and output paths
# (`--name ${item.image}`, outs/multi/${item.group}, report/${setting}) and task and group names into params keys
# (task_defs.${item.task}.fit), so a name is letters, digits, '_', '+' and '-', not starting with '-' or '+' (an
# argparse option): no shell syntax, no space, no quote, no '/', no '.'.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_+-]{0,63}")
NAME_RULE = (
    "a name is 1-64 letters, digits, '_', '+' or '-', not starting with '-' or '+' (names go into file names, "
    "params keys and the shell commands of dvc.yaml)"
)


def refuse_non_names(key: str, names) -> None:
    """Refuse values that are not names (NAME_RULE): strings only (a YAML int or bool key is refused too)."""
    for name in names:
        if not (isinstance(name, str) and NAME.fullmatch(name)):
            raise ValueError(f"{key}: {shown(name)} is not a name: {NAME_RULE}")


TransferPairs = Literal["all", "across_tasks", "across_images"]
TRANSFER_PAIRS: tuple[str, ...] = get_args(TransferPairs)


@dataclass(frozen=True)
class TransferConfig(Section):
    """Which (source, target) problems the transfer stage measures: every ordered pair, or only those that differ
    in the task alone (same image) or in the image alone (same task); each pair costs one fit per seed."""

    pairs: TransferPairs = "all"

    def measures(self, source: tuple[str, str], target: tuple[str, str]) -> bool:
        """Whether the mask of problem `source` (image, task) is retrained on `target`."""
        if source == target:
            return False
        if self.pairs == "across_tasks":
            return source[0] == target[0]
        if self.pairs == "across_images":
            return source[1] == target[1]
        return True


@dataclass(frozen=True)
class GroupDef(Section):
    """A multi-image group: the images its masks are searched on, and the unseen images they are scored on."""

    train: tuple[str, ...]
    heldout: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.train) < 2:
            raise ValueError(f"train: {list(self.train)}; a multi-image group needs at least 2 training images")
        if not self.heldout:
            raise ValueError("heldout: the list is empty; give at least one image the group's masks are scored on")
        both = sorted(set(self.train) & set(self.heldout))
        if both:
            raise ValueError(f"{both} are both training and held-out images; held-out images must be unseen")
        for key in ("train", "heldout"):
            refuse_repeats(key, getattr(self, key))


@dataclass(frozen=True)
class MultiConfig(Section):
    """Multi-image LIP (lipcore.multi): IMP on groups of images at once, scored on held-out images."""

    task: str = "denoise"  # a key of task_defs: the task the groups' masks are searched and scored on
    modes: tuple[Mode, ...] = ("shared",)  # lipcore.multi
    rounds: tuple[int, ...] | None = None  # rounds scored on the held-out images; null: every round
    groups: dict[str, GroupDef] = dataclasses.field(default_factory=dict)
    # images of the groups fitted one by one on `task` only (not on every task, as `images` are): e.g. a face
    # group's faces, whose single-image rounds the group's masks are compared with
    images: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        refuse_non_names("groups", tuple(self.groups))
        refuse_non_names("multi.images", self.images)
        refuse_repeats("multi.images", self.images)
        if not self.modes:
            raise ValueError("modes: the list is empty; give shared, average or both")
        refuse_repeats("modes", self.modes)

    def group(self, name: str) -> GroupDef:
        """groups[name]; an error naming the defined groups if there is none (a stage handed a wrong --group)."""
        if name not in self.groups:
            raise ValueError(
                f"--group {name!r} is not a key of multi.groups in params.yaml (have {sorted(self.groups)})"
            )
        return self.groups[name]


@dataclass(frozen=True)
class GanDipConfig(Section):
    """The DIP baselines of the GAN study: the untrained skip net (params net) fitted to each test image's CS
    measurements, dense and with a LIP ticket of the single-image pipeline (transferred, not searched on CS)."""

    ticket: str | None = None  # <image>-<task> whose IMP round at the headline sparsity is the ticket; None: the first
    seed: int | None = None  # one of seeds (theta_0, z and the ticket's initialisation); None: the first
    fit: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"iterations": 300, "reg_noise_std": 0.03, "ema_weight": 0.0}
    )  # overrides of the `fit` section for these fits


@dataclass(frozen=True)
class GanConfig(Section):
    """The GAN compressive-sensing study (README: "GAN compressive sensing"): IMP rounds on the pretrained DCGAN
    face generator, retrained by distillation, scored by CSGM on in-range images and real faces."""

    fraction: float = 0.2  # of the remaining conv weights per round (the LIP GAN code's 20%)
    chain: tuple[tuple[int, int], ...] = ((1, 0), (2, 1), (3, 2))  # [round, parent], as imp.chain
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    cs: CsgmConfig = dataclasses.field(default_factory=CsgmConfig)
    in_range: int = 4  # test images the dense generator makes from an unused latent stream
    faces: tuple[str, ...] = ("baby", "woman", "face", "foreman", "lenna", "barbara")  # data/faces/<name>.png
    tune_face: str = "man"  # data/faces/<name>.png, not a test face: picks FISTA's lambda per m
    fista: FistaConfig = dataclasses.field(default_factory=FistaConfig)
    dip: GanDipConfig = dataclasses.field(default_factory=GanDipConfig)
    # the rounds whose generators compressive sensing scores (gan_cs, gan_evaluate); null: every round of the chain.
    # A latent search costs the same for every generator, so scoring only the last round cuts gan_cs by the rest.
    scored: tuple[int, ...] | None = None
    # Two parts the sparse-generator claim does not need, each a latent search per generator at full length: a
    # study on a budget can leave them out. rewind: score rewind@k (round k's mask on the pretrained weights, not
    # retrained) beside lip@k and random@k; robust: run gan_robust's outlier setting (4 searches at robust_m).
    rewind: bool = True
    robust: bool = True

    def __post_init__(self) -> None:
        refuse_non_names("faces", self.faces)
        refuse_non_names("tune_face", (self.tune_face,))
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {self.fraction}")
        object.__setattr__(self, "chain", round_chain(self.chain))
        if self.in_range < 0:
            raise ValueError(f"in_range: {self.in_range}; give a count >= 0")
        if self.in_range + len(self.faces) < 2:
            raise ValueError("in_range + faces: the study needs at least 2 test images (a paired interval)")
        refuse_repeats("faces", self.faces)
        if self.tune_face in self.faces:
            raise ValueError(f"tune_face: {self.tune_face!r} is a test face; pick FISTA's lambda on another image")
        refuse_repeats("cs.m", self.cs.m)
        if self.scored is not None:
            bad = sorted(set(self.scored) - set(self.rounds))
            if bad or not self.scored:
                raise ValueError(f"scored: {bad or '[]'} not rounds of gan.chain {list(self.rounds)}")
            refuse_repeats("scored", self.scored)

    @property
    def rounds(self) -> tuple[int, ...]:
        return tuple(k for k, _ in self.chain)

    @property
    def scored_rounds(self) -> tuple[int, ...]:
        """The rounds compressive sensing scores, in chain order."""
        return self.rounds if self.scored is None else tuple(k for k in self.rounds if k in self.scored)

    @property
    def pruned_kinds(self) -> tuple[str, ...]:
        """The pruned generators scored at each scored round (method names kind@k): LIP, its random control, and
        rewind unless gan.rewind is off."""
        return ("lip", "random", "rewind") if self.rewind else ("lip", "random")


@dataclass(frozen=True)
class ExecutorConfig(Section):
    """What each stage gets under the parallel executor (stages/executor/parallel.py, Ray): CPU cores (the stage's torch
    threads) and a share of a GPU (0.25: four stages share one). No stage reads it, so changing it reruns nothing."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.num_cpus) and self.num_cpus >= 1 and float(self.num_cpus).is_integer()):
            raise ValueError(f"num_cpus: {self.num_cpus}; give a whole number of cores, at least 1 (torch threads)")
        if not (math.isfinite(self.num_gpus) and 0 <= self.num_gpus and (self.num_gpus <= 1 or self.num_gpus % 1 == 0)):
            raise ValueError(f"num_gpus: {self.num_gpus}; give 0 (CPU), a fraction of one GPU, or a whole number")


@dataclass(frozen=True)
class Params(Section):
    """params.yaml."""

    sparsity: float  # target of the headline: the first IMP round whose nominal sparsity reaches it
    image_size: int  # centre crop, a multiple of the net's 2**scales
    images: tuple[str, ...]  # data/<name>.png
    tasks: tuple[str, ...]  # keys of task_defs
    task_defs: dict[str, TaskDef]
    setting: str = "default"  # names this setting's report folder, report/<setting>
    protocol: ProtocolName = "blind"  # lipcore.trials.search_problem
    device: str = "auto"  # auto: CUDA when present, else CPU
    seed: int = 0  # root seed; all others are derived from it and names
    seeds: tuple[int, ...] = (0,)  # initialisations: theta_0, z and reg-noise stream
    net: NetConfig = dataclasses.field(default_factory=NetConfig)
    fit: FitConfig = dataclasses.field(default_factory=FitConfig)
    imp: ImpConfig = dataclasses.field(default_factory=ImpConfig)
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
    transfer: TransferConfig = dataclasses.field(default_factory=TransferConfig)
    multi: MultiConfig = dataclasses.field(default_factory=MultiConfig)
    gan: GanConfig = dataclasses.field(default_factory=GanConfig)
    executor: ExecutorConfig = dataclasses.field(default_factory=ExecutorConfig)

    def __post_init__(self) -> None:
        refuse_non_names("images", self.images)  # first: no other message shows a name that is not one
        refuse_non_names("tasks", self.tasks)
        refuse_non_names("task_defs", tuple(self.task_defs))
        refuse_non_names("setting", (self.setting,))
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        missing = [t for t in self.tasks if t not in self.task_defs]
        if missing:
            raise ValueError(f"tasks {missing} are not defined under task_defs (have {sorted(self.task_defs)})")
        for key in ("images", "tasks", "seeds"):
            values = getattr(self, key)
            if not values:
                raise ValueError(f"{key}: the list is empty; give at least one")
            refuse_repeats(key, values)
        ids: dict[str, tuple[str, str]] = {}
        for pair in ((image, task) for image in self.images for task in self.tasks):
            other = ids.setdefault(layout.pair_id(*pair), pair)
            if other != pair:
                raise ValueError(
                    f"images/tasks: {other} and {pair} both name the outputs {layout.pair_id(*pair)!r}; rename one "
                    "(avoid '-' in names)"
                )
        with unrecorded():
            if self.net.out_channels != 3:
                raise ValueError(f"net.out_channels: {self.net.out_channels}; the pipeline fits RGB images: use 3")
            for task in self.task_defs:  # each task's fit overrides must make a valid fit
                self.fit_for(task)
            if self.evaluate.channels.rounds and self.net.kind != "skip":
                raise ValueError(
                    f"evaluate.channels.rounds: channel tickets are cut from the skip net; net.kind is "
                    f"{self.net.kind!r} (use skip, or rounds: 0)"
                )
        self._check_image_size()
        self._check_degradations()
        self._check_multi()
        self._check_gan()
        with unrecorded():
            headline_round(self.sparsity, self.imp)  # enough rounds in imp.chain: refused before any round runs
        try:
            resolve_device(self.device)
        except ValueError as err:
            raise ValueError(f"device: {err}") from None

    def _check_image_size(self) -> None:
        """image_size must be a positive multiple of what the skip net and the deep-decoder baseline halve to."""
        with unrecorded():
            decoder = NetConfig(kind="decoder", decoder_layers=self.evaluate.decoder_layers).downscale
            multiple = math.lcm(self.net.downscale, decoder)
        if self.image_size < 2 * multiple or self.image_size % multiple:
            raise ValueError(
                f"image_size: {self.image_size} is not a multiple of {multiple} of at least {2 * multiple} (the skip "
                f"net halves it net.scales={self.net.scales} times, the deep decoder of evaluate.decoder_layers="
                f"{self.evaluate.decoder_layers} {self.evaluate.decoder_layers - 1} times, and batch norm needs more "
                f"than one pixel at the coarsest scale); e.g. {multiple * max(2, self.image_size // multiple)}"
            )

    def _check_degradations(self) -> None:
        """What the listed tasks' degradations need of image_size (refused here, before degrade runs)."""
        for task in self.tasks:
            cfg = self.task_defs[task].degradation
            with unrecorded():
                try:  # the task's own rule (lipcore.physics); its message starts with the field at fault
                    task_class(cfg.task).check_shape(cfg, (3, self.image_size, self.image_size))
                except ValueError as err:
                    raise ValueError(f"task_defs.{task}.degradation.{err}") from None

    def _check_multi(self) -> None:
        """Each group's images are listed images (their single-image rounds are what the group is compared
        with) of a listed task, and its rounds exist."""
        with unrecorded():
            multi = self.multi
            if not multi.groups:
                return
            if multi.task not in self.tasks:
                raise ValueError(f"multi.task: {multi.task!r} is not one of tasks {list(self.tasks)}")
            both = [i for i in multi.images if i in self.images]
            if both:
                raise ValueError(
                    f"multi.images: {both} are in images too (fitted on every task already); list each image once"
                )
            members = (*self.images, *multi.images)
            problems = {layout.pair_id(i, t) for i in self.images for t in self.tasks}
            problems |= {layout.pair_id(i, multi.task) for i in multi.images}
            for name, group in multi.groups.items():
                missing = [i for i in (*group.train, *group.heldout) if i not in members]
                if missing:
                    raise ValueError(
                        f"multi.groups.{name}: {missing} not in images {list(self.images)} or multi.images "
                        f"{list(multi.images)}; a group's images are also fitted one by one (its masks are compared "
                        "with theirs): add them to images, or to multi.images to fit them on multi.task only"
                    )
                if layout.multi_id(name) in problems:
                    clash = layout.multi_id(name)
                    raise ValueError(f"multi.groups.{name}: its outputs {clash!r} collide with a problem's; rename it")
            if multi.rounds is not None:
                bad = sorted(set(multi.rounds) - set(self.imp.rounds))
                if bad or not multi.rounds:
                    raise ValueError(f"multi.rounds: {bad or '[]'} not rounds of imp.chain {list(self.imp.rounds)}")

    def _check_gan(self) -> None:
        """The GAN study's DIP baselines use a listed problem's ticket and a listed seed."""
        with unrecorded():
            dip = self.gan.dip
            pairs = [layout.pair_id(i, t) for i in self.images for t in self.tasks]
            if dip.ticket is not None and dip.ticket not in pairs:
                raise ValueError(f"gan.dip.ticket: {dip.ticket!r} is not one of the problems {pairs} (<image>-<task>)")
            if dip.seed is not None and dip.seed not in self.seeds:
                raise ValueError(f"gan.dip.seed: {dip.seed} is not one of seeds {list(self.seeds)}")
            self.gan_dip_fit()

    def gan_ticket(self) -> tuple[str, int]:
        """The problem and seed whose LIP ticket the GAN study's DIP baseline uses: gan.dip.ticket and gan.dip.seed,
        else the first problem and seed (reads images, tasks and seeds either way: the default follows them)."""
        dip, first = self.gan.dip, layout.pair_id(self.images[0], self.tasks[0])
        seeds = self.seeds
        return (first if dip.ticket is None else dip.ticket), (seeds[0] if dip.seed is None else dip.seed)

    def gan_dip_fit(self) -> FitConfig:
        """The `fit` section with gan.dip.fit on top: the GAN study's DIP fits."""
        return self._fit_with(self.gan.dip.fit, "gan.dip.fit")

    def multi_rounds(self) -> tuple[int, ...]:
        """The IMP rounds whose multi-image masks are scored on held-out images."""
        return self.multi.rounds if self.multi.rounds is not None else tuple(self.imp.rounds)

    def task(self, name: str) -> TaskDef:
        """task_defs[name]; an error naming the defined tasks if there is none."""
        defs = self.task_defs
        if name not in defs:
            raise ValueError(f"task {name!r} is not defined under task_defs in params.yaml (have {sorted(defs)})")
        return defs[name]

    def fit_for(self, task: str, **overrides: Any) -> FitConfig:
        """The `fit` section with task_defs.<task>.fit on top (and `overrides`, set by the stage's code)."""
        return self._fit_with(self.task(task).fit, f"task_defs.{task}.fit", overrides)

    def _fit_with(self, over: dict, key: str, code: dict | None = None) -> FitConfig:
        """The `fit` section with `over` (the params at `key`) on top, then `code` (values the stage's code sets);
        every field keeps the params key it came from, so that a stage records what it read (with_keys).
        rewind_iteration is the code's (from imp.rewind_iteration): refused in the params, at either level."""
        code = code or {}
        with unrecorded():
            for given, where in ((self.fit.rewind_iteration is not None, "fit"), ("rewind_iteration" in over, key)):
                if given:
                    raise ValueError(
                        f"{where}.rewind_iteration: the pipeline sets it from imp.rewind_iteration; remove it"
                    )
            cfg = from_dict(FitConfig, {**dataclasses.asdict(self.fit), **over, **code}, key)
        keys = {f.name: f"fit.{f.name}" for f in dataclasses.fields(FitConfig) if f.name not in code}
        keys.update({k: f"{key}.{k}" for k in over if k not in code})
        return with_keys(cfg, keys)


class _ParamsLoader(yaml.SafeLoader):
    """YAML's safe loader (tags such as !!python/object are refused, not run) that also refuses anchors and
    aliases: `&a [...]` and `*a` let a 2 KB file stand for gigabytes (a "billion laughs" alias bomb), and DVC
    hashes what it expands to."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise _Refused(
                f"line {event.start_mark.line + 1}, column {event.start_mark.column + 1}: "
                f"the YAML {'alias' if sign == '*' else 'anchor'} {sign}{event.anchor[:40]}; anchors and "
                "aliases are not allowed in a params file: write each value out"
            )
        return super().compose_node(parent, index)


class _Refused(ValueError):
    """A params file that YAML would read but lip refuses (an alias, a duplicate key)."""


def _refuse_duplicate_keys(loader: yaml.SafeLoader, node: yaml.Node, where: str = "") -> None:
    """Refuse a mapping that gives a key twice (YAML would keep the last silently; DVC refuses the file)."""
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(loader, item, f"{where}[{i}]")
    elif isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _Refused(f"line {line}: the YAML merge key '<<' is not allowed in a params file")
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a list or mapping as a key: the constructor refuses it (unhashable)
            key = loader.construct_object(key_node)
            dotted = f"{where}.{key}" if where else str(key)
            if key in seen:
                lines = f"line {line}" if seen[key] == line else f"lines {seen[key]} and {line}"
                raise _Refused(
                    f"{dotted[:200]} is given twice ({lines}); YAML would silently keep the last and DVC "
                    "refuses the file: delete one"
                )
            seen[key] = line
            _refuse_duplicate_keys(loader, value_node, dotted)


def read_params_yaml(path: Path) -> Any:
    """The plain data of a params file: safe YAML with no anchor, alias or duplicate key (refused naming where)."""
    loader = _ParamsLoader(path.read_text())
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(loader, node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


MESSAGE_CHARS = 1000  # the longest error load_params gives (a huge file must not make a huge message)


def _short(message: str) -> str:
    if len(message) <= MESSAGE_CHARS:
        return message
    return f"{message[: MESSAGE_CHARS - 60]} ... ({len(message) - MESSAGE_CHARS + 60} characters cut)"


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and check the whole params file; every error names the key, the value and what is allowed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the stage from the project root")
    try:
        data = read_params_yaml(path)
    except _Refused as err:
        raise ValueError(_short(f"{path}: {err}")) from None
    except yaml.YAMLError as err:
        raise ValueError(_short(f"{path} is not valid plain YAML: {err}")) from None
    try:
        params = from_dict(Params, data, key="")
    except ValueError as err:
        raise ValueError(_short(f"{path}: {err}")) from err
    return params
