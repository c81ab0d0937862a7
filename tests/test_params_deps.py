"""Every DVC stage lists exactly the params keys its code reads: no stale cache from an unlisted key, no
needless rerun from a listed one. Each stage's own command runs in-process on tiny params while the params
tree records every key read (lipcore.schema.recording_reads); DVC resolves the stages and their lists."""

from collections import defaultdict

import pytest
from dvc.dependency.param import ParamsDependency

from lipcore.schema import recording_reads
from tests.conftest import dvc_stages, make_project, run_stage_in_process, tiny_params


def _settings() -> dict[str, dict]:
    """Settings that between them take every branch that reads a key: `plain` the defaults (early-bird search
    off, rewinding to theta_0, the blind protocol, fits that run to the end) on two tasks, so transfer crosses
    tasks; the others early-bird search, late rewinding, the paper protocol and fits that stop at ES-WMV, on
    three images with a multi-image group (inpainting), and on denoising, the task whose mask search the paper
    protocol changes (it sees the clean image)."""
    plain = tiny_params(images=["f16"], tasks=["denoise", "inpaint"])
    varied = _varied(images=["f16", "baby", "kate"], tasks=["inpaint"])
    varied["multi"] = {  # both modes, a subset of rounds scored
        "task": "inpaint",
        "modes": ["shared", "average"],
        "rounds": [2],
        "groups": {"g": {"train": ["f16", "baby"], "heldout": ["kate", "zebra"]}},
        "images": ["zebra"],  # a member fitted on multi.task only: the member_* stages
    }
    return {"plain": plain, "varied": varied, "varied-denoise": _varied(images=["f16"], tasks=["denoise"])}


def _varied(**overrides) -> dict:
    params = tiny_params(protocol="paper", **overrides)
    params["imp"] = {
        **params["imp"],
        "rewind_iteration": 2,
        "search": {"iterations": 8, "early_bird": 0.5, "early_bird_every": 2, "early_bird_patience": 1},
    }
    params["fit"] = {**params["fit"], "es_stop": True}
    return params


GAN_IN = "varied"  # the GAN study's settings are the same in every setting: its stages run in this one


def _covers(key: str, other: str) -> bool:
    """True if params key `key` is `other` or one of its parents."""
    return other == key or other.startswith(key + ".")


@pytest.fixture(scope="module")
def reads_and_lists(tmp_path_factory):
    reads: dict[str, set[str]] = defaultdict(set)
    listed: dict[str, set[str]] = {}
    monkeypatch = pytest.MonkeyPatch()
    try:
        for name, params in _settings().items():
            project = make_project(tmp_path_factory.mktemp(name), params)
            monkeypatch.chdir(project)
            for stage in dvc_stages(project):
                if name != GAN_IN and stage.addressing.startswith("gan_"):
                    continue
                keys = {p for d in stage.deps if isinstance(d, ParamsDependency) for p in d.params}
                listed[stage.addressing] = keys
                with recording_reads() as seen:
                    run_stage_in_process(stage)
                reads[stage.addressing] |= seen
    finally:
        monkeypatch.undo()
    return reads, listed


def test_every_stage_ran_and_read_params(reads_and_lists):
    reads, listed = reads_and_lists
    kinds = {a.split("@")[0] for a in listed}
    assert kinds == {
        *("check_params", "degrade", "dense_fit", "imp_round", "evaluate", "transfer", "report"),
        *("member_degrade", "member_dense_fit", "member_imp_round"),
        *("multi_dense_fit", "multi_imp_round", "multi_evaluate"),
        *("gan_prepare", "gan_imp_round", "gan_cs", "gan_robust", "gan_dip", "gan_evaluate"),
    }
    assert all(reads[a] for a in listed), [a for a in listed if not reads[a]]


def test_every_key_a_stage_reads_is_listed_in_dvc_yaml(reads_and_lists):
    reads, listed = reads_and_lists
    unlisted = {a: sorted(r for r in reads[a] if not any(_covers(k, r) for k in listed[a])) for a in listed}
    assert not {a: keys for a, keys in unlisted.items() if keys}, "read but not in the stage's params: list"


def test_every_key_dvc_yaml_lists_is_read(reads_and_lists):
    reads, listed = reads_and_lists
    unread = {a: sorted(k for k in listed[a] if not any(_covers(k, r) for r in reads[a])) for a in listed}
    assert not {a: keys for a, keys in unread.items() if keys}, "listed in dvc.yaml but never read"


def test_rounds_do_not_read_the_target_or_the_chain(reads_and_lists):
    """Changing `sparsity` or appending a round must rerun no existing round."""
    reads, _ = reads_and_lists
    for address, keys in reads.items():
        if address.startswith(("dense_fit", "imp_round", "multi_dense_fit", "multi_imp_round")):
            assert not {k for k in keys if k == "sparsity" or k.startswith("imp.chain")}, address
        if address.startswith(("gan_prepare", "gan_imp_round")):  # -S gan.cs.* reruns no GAN round
            assert not {k for k in keys if k.startswith(("gan.chain", "gan.cs", "gan.fista", "gan.dip"))}, address
