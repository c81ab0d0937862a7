import pytest

from lipcore.config import DegradationConfig, FitConfig, NetConfig, PruneConfig, from_dict


def test_from_dict_rejects_unknown_keys_and_names_them():
    with pytest.raises(ValueError, match="chanels"):
        from_dict(NetConfig, {"chanels": 3})


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
        PruneConfig(fraction=1.5)
    with pytest.raises(ValueError, match="rewind_iteration"):
        FitConfig(iterations=10, rewind_iteration=11)


def test_search_config_defaults_to_the_evaluation_fit_and_checks_its_knobs():
    from lipcore.config import SearchConfig

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
