"""One-sided z-scores for counters: fewer events than the model expects is not an anomaly.

A per-day counter (events so far today, distinct locations so far today) below the model's
prediction means a quieter day; a two-sided z scores it like a burst. Each test fails if the
one-sided rule, its persistence or its schema default is lost.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder
from dfp_ray.schemas import load_schema
from dfp_ray.schemas.model import SourceSchema

SMALL = dict(encoder_layers=[32, 16], decoder_layers=[32], eval_batch_size=64, seed=5, device="cpu")


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "browser": rng.choice(["chrome", "edge"], size=n, p=[0.7, 0.3]).astype(object),
        "logcount": rng.integers(2, 9, size=n).astype(float),
        "result": rng.random(n) > 0.05,
    })


def fit(above_only: list[str] | None) -> DFPAutoencoder:
    model = DFPAutoencoder(["browser"], ["logcount"], ["result"], AutoencoderParams(**SMALL),
                           numeric_scale={"logcount": 1.0}, above_only=above_only)
    model.fit(frame(300, seed=1))
    return model


@pytest.fixture(scope="module")
def models() -> tuple[DFPAutoencoder, DFPAutoencoder]:
    return fit(["logcount"]), fit(None)


def probe() -> pd.DataFrame:
    rows = frame(40, seed=2)
    rows.loc[:9, "logcount"] = 0.0  # far below anything seen: a quiet day
    rows.loc[10:19, "logcount"] = 30.0  # a burst
    return rows


def test_below_the_prediction_scores_zero_above_it_scores_as_before(models):
    one_sided, two_sided = models
    a, b = one_sided.score(probe()), two_sided.score(probe())
    # the rule changes scoring only: the same seed trains the same network
    np.testing.assert_array_equal(a["logcount_pred"], b["logcount_pred"])
    np.testing.assert_array_equal(a["logcount_loss"], b["logcount_loss"])
    below = probe()["logcount"].to_numpy() < a["logcount_pred"].to_numpy()
    assert below[:10].all() and not below[10:20].any()
    assert (a.loc[below, "logcount_z_loss"] == 0).all()
    assert (b.loc[below[:10].nonzero()[0], "logcount_z_loss"] > 1).all()  # two-sided: a quiet day alarms
    np.testing.assert_array_equal(a.loc[~below, "logcount_z_loss"], b.loc[~below, "logcount_z_loss"])
    assert (a.loc[10:19, "logcount_z_loss"] > 5).all()  # a burst still does
    # the other features are untouched and the row scores follow the features
    np.testing.assert_array_equal(a["browser_z_loss"], b["browser_z_loss"])
    z = a[["logcount_z_loss", "result_z_loss", "browser_z_loss"]].to_numpy()
    np.testing.assert_allclose(a["mean_abs_z"], z.mean(axis=1))
    np.testing.assert_allclose(a["max_abs_z"], z.max(axis=1))


def test_calibration_scores_held_out_rows_with_the_same_rule(models):
    """The threshold is a quantile of held-out scores; those must be one-sided too, or the
    threshold would sit above what the rule can score."""
    one_sided, two_sided = models
    own = np.asarray(one_sided.calibration.holdout)
    both = np.asarray(two_sided.calibration.holdout)
    assert len(own) == len(both) > 0
    assert (own <= both + 1e-12).all() and (own < both - 1e-9).any()


def test_the_rule_is_saved_with_the_model_and_older_models_stay_two_sided(models, tmp_path):
    one_sided, _ = models
    one_sided.save(tmp_path / "m")
    again = DFPAutoencoder.load(tmp_path / "m", device="cpu")
    assert again.above_only == ["logcount"]
    pd.testing.assert_frame_equal(again.score(probe()), one_sided.score(probe()))
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["features"]["above_only"]  # as written before the rule existed
    meta_path.write_text(json.dumps(meta))
    old = DFPAutoencoder.load(tmp_path / "m", device="cpu").score(probe())
    assert (old.loc[:9, "logcount_z_loss"] > 1).all()


def test_a_name_that_is_not_numeric_is_refused():
    with pytest.raises(ValueError, match="above_only names \\['browser'\\]"):
        DFPAutoencoder(["browser"], ["logcount"], ["result"], above_only=["browser"])


def test_schemas_default_to_their_counters_and_can_opt_out():
    assert load_schema("duo").above_only_features() == ["locincrement", "logcount"]
    assert load_schema("azure").above_only_features() == ["appincrement", "locincrement", "logcount"]
    assert load_schema("lanl").above_only_features() == ["logcount", "dstincrement", "srcincrement"]
    raw = load_schema("duo").model_dump()
    raw["features"]["above_only"] = []
    assert SourceSchema.model_validate(raw).above_only_features() == []
    raw["features"]["above_only"] = ["application"]
    with pytest.raises(ValueError, match="features.above_only names \\['application'\\]"):
        SourceSchema.model_validate(raw)
