import pytest

from lipcore.config import DegradationConfig, FitConfig, ImpConfig, NetConfig, SearchConfig
from lipcore.schema import derive, from_dict, recording_reads


def test_from_dict_rejects_unknown_keys_and_names_them():
    with pytest.raises(ValueError, match="chanels"):
        from_dict(NetConfig, {"chanels": 3})
    with pytest.raises(ValueError, match=r"imp.search: unknown key\(s\) \['imp.search.earlybird'\]"):
        from_dict(ImpConfig, {"search": {"earlybird": 0.1}}, "imp")


@pytest.mark.parametrize(
    "cls, data, message",
    [
        (FitConfig, {"iterations": "20"}, r"fit.iterations: expected an integer, got '20'"),
        (FitConfig, {"iterations": 20.5}, r"fit.iterations: expected an integer, got 20.5"),
        (FitConfig, {"lr": "0.01"}, r"fit.lr: expected a number, got '0.01'"),
        (FitConfig, {"lr": 0}, r"fit: lr must be > 0"),
        (FitConfig, {"es_stop": "yes"}, r"fit.es_stop: expected true or false"),
        (ImpConfig, {"search": {"iterations": 2.5}}, r"imp.search.iterations: expected an integer or null, got 2.5"),
        (ImpConfig, {"chain": [[1, 0], [3, 1]]}, r"imp: chain entry 2 is \[3, 1\]; expected \[2, 1\]"),
        (ImpConfig, {"chain": [1, 2]}, r"imp.chain\[0\]: expected a list"),
    ],
)
def test_from_dict_names_the_key_and_value_of_a_wrong_type(cls, data, message):
    section = "fit" if cls is FitConfig else "imp"
    with pytest.raises(ValueError, match=message):
        from_dict(cls, data, section)


def test_from_dict_converts_to_the_declared_types():
    cfg = from_dict(FitConfig, {"lr": 1, "iterations": 5}, "fit")
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0
    imp = from_dict(ImpConfig, {"chain": [[1, 0], [2, 1]]}, "imp")
    assert imp.chain == ((1, 0), (2, 1)) and imp.rounds == [1, 2] and imp.search == SearchConfig()


def test_sections_record_the_params_keys_read():
    imp = from_dict(ImpConfig, {"fraction": 0.3, "chain": [[1, 0]]}, "imp")
    with recording_reads() as reads:
        assert imp.fraction == 0.3
        assert imp.search.early_bird is None  # a default section is key-aware too
        _ = imp.search  # reading a nested section is not reading all of it
    assert reads == {"imp.fraction", "imp.search.early_bird"}
    with recording_reads() as reads:
        short = derive(from_dict(FitConfig, {}, "fit"), iterations=3)
        assert short.iterations == 3 and short.lr == 0.01
    assert reads == {"fit.lr"}  # the changed field is the caller's, not a params read
    with recording_reads() as reads:
        lrs = [FitConfig().lr, from_dict(FitConfig, {"lr": 0.1}).lr]  # not from a params file: nothing recorded
    assert reads == set() and lrs == [0.01, 0.1]


def test_per_scale_fields_broadcast_and_check_length():
    cfg = from_dict(NetConfig, {"scales": 3, "channels_down": 16, "channels_up": [8, 16, 32]})
    assert cfg.channels_down == (16, 16, 16) and cfg.channels_up == (8, 16, 32)
    with pytest.raises(ValueError, match="scales=3"):
        NetConfig(scales=3, channels_up=[8, 16])


def test_task_defaults_and_validation():
    assert DegradationConfig().noise_std == pytest.approx(25 / 255)
    assert DegradationConfig(task="sr").noise_std == 0.0
    with pytest.raises(ValueError, match="factor"):
        DegradationConfig(task="sr", factor=3)
    with pytest.raises(ValueError, match="task"):
        DegradationConfig(task="deblur")
    with pytest.raises(ValueError, match="fraction"):
        ImpConfig(fraction=1.5)
    with pytest.raises(ValueError, match="rewind_iteration"):
        FitConfig(iterations=10, rewind_iteration=11)


def test_search_config_defaults_to_the_evaluation_fit_and_checks_its_knobs():
    evaluation = FitConfig(iterations=300, rewind_iteration=20)
    assert SearchConfig().is_evaluation and SearchConfig().fit_cfg(evaluation) is evaluation
    short = SearchConfig(iterations=100).fit_cfg(evaluation)
    assert short.iterations == 100 and short.lr == evaluation.lr and short.rewind_iteration == 20
    assert not SearchConfig(early_bird=0.01).is_evaluation
    with pytest.raises(ValueError, match="beyond the search fit"):
        SearchConfig(iterations=10).fit_cfg(evaluation)
    with pytest.raises(ValueError, match="early_bird"):
        SearchConfig(early_bird=1.5)
    with pytest.raises(ValueError, match="search iterations"):
        SearchConfig(iterations=0)


def test_published_fit_settings_are_the_dip_papers():
    from lipcore.config import PUBLISHED_FIT

    table = {k: (c.iterations, round(c.reg_noise_std, 4), c.ema_weight) for k, c in PUBLISHED_FIT.items()}
    assert table == {
        "denoise": (3000, 0.0333, 0.99),
        "denoise_sigma50": (3000, 0.05, 0.99),
        "inpaint": (3000, 0.03, 0.0),
        "inpaint_text": (6000, 0.03, 0.0),
        "sr4": (2000, 0.03, 0.0),
        "sr8": (4000, 0.05, 0.0),
    }
    assert all(c.lr == 0.01 for c in PUBLISHED_FIT.values())


def test_the_paper_params_file_runs_each_task_at_its_published_fit_settings():
    """params.paper.yaml (the documented paper-scale configuration) gives each task the DIP paper's iterations,
    reg-noise and output averaging (lipcore.config.PUBLISHED_FIT, ../shared/REFERENCE.md's table). Before this
    test the file ran SR x4 for 3000 steps, the published 2000 being written only in PUBLISHED_FIT."""
    from lipcore.config import PUBLISHED_FIT
    from stages.plumbing.params import load_params
    from tests.conftest import ROOT

    params = load_params(ROOT / "params.paper.yaml")
    for task in params.tasks:
        got, published = params.fit_for(task), PUBLISHED_FIT[task]
        for key in ("iterations", "lr", "reg_noise_std", "ema_weight"):
            assert getattr(got, key) == getattr(published, key), (task, key, getattr(got, key))


def test_literal_fields_accept_only_their_values_naming_the_key():
    with pytest.raises(ValueError, match=r"net\.act: expected one of \['leaky_relu', 'relu', 'elu'\], got 'tanh'"):
        from_dict(NetConfig, {"act": "tanh"}, "net")
    with pytest.raises(ValueError, match=r"^factor: expected one of \[2, 4, 8\], got 3$"):
        DegradationConfig(task="sr", factor=3)  # built directly: the field's name
    with pytest.raises(ValueError, match=r"factor: expected one of \[2, 4, 8\], got True"):
        from_dict(DegradationConfig, {"factor": True})  # a bool is not the integer 1
    assert from_dict(FitConfig, {"precision": "bf16"}, "fit").precision == "bf16"


def test_a_literal_in_a_union_or_a_tuple_is_checked_too():
    from dataclasses import dataclass
    from typing import Literal

    from lipcore.schema import Section

    @dataclass(frozen=True)
    class Choice(Section):
        one: Literal["a", "b"] | None = None
        many: tuple[Literal[1, 2], ...] = ()

    assert from_dict(Choice, {"one": None, "many": [2, 1]}).many == (2, 1)
    with pytest.raises(ValueError, match=r"choice\.one: expected one of \['a', 'b'\] or null, got 'c'"):
        from_dict(Choice, {"one": "c"}, "choice")
    with pytest.raises(ValueError, match=r"^many\[1\]: expected one of \[1, 2\], got 3$"):
        Choice(many=(1, 3))


def test_mark_read_records_a_section_as_a_whole():
    from lipcore.schema import mark_read

    imp = from_dict(ImpConfig, {}, "imp")
    with recording_reads() as reads:
        mark_read(imp.search)
    assert reads == {"imp.search"}
    mark_read(SearchConfig())  # not recording: nothing to do
    with recording_reads(), pytest.raises(ValueError, match="not built from params"):
        mark_read(SearchConfig())
