"""stages.plumbing.artifacts: the round records a stage reads are checked and refused by name, on hand-made files."""

import json

import pytest

from stages.plumbing import artifacts, layout


def _metrics(**changes):
    point = {"psnr": 30.0, "ssim": 0.9, "iteration": 100}
    record = {
        "round": 2,
        "output": "ema",
        "sparsity": {"nominal": 0.36, "effective": 0.36, "kept": 64, "total": 100},
        **{p: dict(point) for p in artifacts.SCORED_POINTS},
        "es_detected": None,
    }
    record.update(changes)
    return record


def _write(tmp_path, name, record):
    (tmp_path / name).write_text(json.dumps(record))
    return tmp_path


def test_a_round_record_is_read_when_whole_and_refused_naming_the_key_when_not(tmp_path):
    assert artifacts.read_fit_metrics(_write(tmp_path, layout.FIT_METRICS, _metrics()), 2)["round"] == 2
    cases = [
        (_metrics(round=2.5), r"round is 2.5, not an integer"),
        (_metrics(output="avg"), r"output is 'avg', not one of \['ema', 'raw'\]"),
        (_metrics(es={"psnr": "30", "ssim": 0.9, "iteration": 1}), r"es.psnr is '30', not a number"),
        (_metrics(last={"psnr": 30.0, "ssim": 0.9}), r"last: missing \['iteration'\]"),
        (_metrics(sparsity={"nominal": 0.3, "effective": 0.3, "kept": 6.5}), r"sparsity.kept is 6.5, not an integer"),
    ]
    for record, message in cases:
        with pytest.raises(ValueError, match=message):
            artifacts.read_fit_metrics(_write(tmp_path, layout.FIT_METRICS, record))
    with pytest.raises(ValueError, match=r"holds round 2, expected round 3"):
        artifacts.read_fit_metrics(_write(tmp_path, layout.FIT_METRICS, _metrics()), 3)
    record = _metrics()
    del record["oracle_best"]
    with pytest.raises(ValueError, match="oracle_best"):
        artifacts.read_fit_metrics(_write(tmp_path, layout.FIT_METRICS, record))


def test_a_history_is_equal_length_lists_of_numbers_or_null(tmp_path):
    good = {"iteration": [0, 10], "loss": [1.0, 0.5], "psnr_out": [None, 20.0], "psnr_ema": [None, 21.0]}
    assert artifacts.read_history(_write(tmp_path, layout.HISTORY, good))["psnr_out"] == [None, 20.0]
    for bad, message in (
        ({**good, "loss": [1.0]}, r"loss has 1 entries but iteration has 2"),
        ({**good, "iteration": [0, None]}, r"iteration\[1\] is None, not a number"),
        ({**good, "loss": "0.5"}, r"loss is '0.5', not a list of numbers"),
    ):
        with pytest.raises(ValueError, match=message):
            artifacts.read_history(_write(tmp_path, layout.HISTORY, bad))


def test_a_small_csv_keeps_its_columns_and_leaves_missing_values_empty(tmp_path):
    path = tmp_path / "plot.csv"
    artifacts.write_csv(path, [{"x": 0.5, "y": 1 / 3}, {"x": 1.0}], ["x", "y"])
    assert path.read_text().splitlines() == ["x,y", "0.5,0.333333", "1,"]
