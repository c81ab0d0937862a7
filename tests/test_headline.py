"""stages.reporting.headline: metrics/headline.json from hand-made evaluate summaries and a GAN record."""

import pytest

from stages.reporting import headline


def _summary(point, effective, **psnr):
    methods = {m: {f"{point}_psnr": {"mean": v, "std": 0.1}} for m, v in psnr.items()}
    return {"shown_point": point, "headline": {"effective_sparsity": effective, "methods": methods}}


def test_the_headline_averages_over_image_tasks_at_each_reported_point_with_the_stronger_random():
    summaries = {
        "a-denoise": _summary("es", 0.48, dense=30.0, lip=31.0, random_global=29.0, random_layer=30.5, snip=28.0),
        # the paper protocol reports the oracle best; no SNIP and no decoder were fitted here
        "b-inpaint": _summary("oracle_best", 0.50, dense=27.0, lip=26.5, random_global=26.0),
    }
    out = headline.headline(summaries, None)
    assert out["effective_sparsity"] == pytest.approx(0.49)
    assert out["psnr"] == {"dense": 28.5, "lip": 28.75, "random": 28.25, "snip": 28.0, "decoder": None}
    assert out["gain"] == {"lip-dense": pytest.approx(0.25), "lip-random": pytest.approx(0.5)}  # (0.5 + 0.5) / 2
    assert out["lip-dense"] == {"a-denoise": 1.0, "b-inpaint": -0.5}
    assert "gan_mse" not in out


def test_the_gan_numbers_are_the_largest_m_at_the_last_scored_round():
    def mse(v):
        return {"all": {"mse": {"mean": v}}}

    gan = {
        "rounds": [{"round": 0}, {"round": 4}],
        "m": {
            "200": {"methods": {"dense": mse(0.5), "lip@4": mse(0.4), "random@4": mse(0.6)}},
            "3000": {"methods": {"dense": mse(0.012345678), "lip@4": mse(0.01), "random@4": mse(0.03)}},
        },
    }
    assert headline.headline({"a-denoise": _summary("es", 0.5, dense=1.0, lip=1.0)}, gan)["gan_mse"] == {
        "dense": 0.0123,  # kept to DIGITS decimals
        "lip": 0.01,
        "random": 0.03,
    }
