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
