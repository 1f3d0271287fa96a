"""Scores an analyst can trust: robust z-scores, calibrated thresholds, explanations (no Ray).

Small models on hand-built frames; each test fails if the property it names is lost.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder
from dfp_ray.autoencoder.calibration import Calibration, pool, tail_quantile, threshold_for
from dfp_ray.config import DetectionConfig
from dfp_ray.pipeline.data_prep import prepare_features
from dfp_ray.pipeline.filter_detections import filter_detections
from dfp_ray.pipeline.inference import ScoringGroup, score_groups
from dfp_ray.schemas import load_schema

SMALL = dict(encoder_layers=[32, 16], decoder_layers=[32], eval_batch_size=256, seed=3, device="cpu")


def habits_frame(n: int, seed: int) -> pd.DataFrame:
    """One user's habits: two browsers, one OS, a counter that is ALWAYS 1, mostly successes."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "browser": rng.choice(["chrome", "edge"], size=n, p=[0.8, 0.2]).astype(object),
        "os": np.full(n, "windows", dtype=object),
        "locincrement": np.ones(n),
        "logcount": rng.integers(0, 6, size=n).astype(float),
        "result": rng.random(n) > 0.05,
    })


def fit(frame: pd.DataFrame, **overrides) -> DFPAutoencoder:
    params = AutoencoderParams(**{**SMALL, **overrides})
    model = DFPAutoencoder(["browser", "os"], ["locincrement", "logcount"], ["result"], params,
                           numeric_scale={"locincrement": 1.0, "logcount": 1.0})
    model.fit(frame)
    return model


@pytest.fixture(scope="module")
def user_model() -> DFPAutoencoder:
    return fit(habits_frame(400, seed=1))


def test_a_feature_constant_in_training_cannot_blow_up_the_score(user_model):
    """The counter was 1 on every training row; a second location (2) is one unit of change.

    Morpheus's z (plain std of a loss that never varied) puts such a row in the hundreds; the
    default scale keeps it below a small bound, and the z of that feature stays bounded too."""
    row = habits_frame(1, seed=9).assign(locincrement=2.0, browser="chrome", result=True)
    scored = user_model.score(row)
    assert scored["mean_abs_z"].iloc[0] < 3.0
    stats = user_model.loss_stats["locincrement"]
    plain = abs(scored["locincrement_loss"].iloc[0] - stats["mean"]) / stats["std"]
    assert plain > 50 * scored["locincrement_z_loss"].iloc[0]  # the guard is what makes the difference
    assert scored["locincrement_z_loss"].iloc[0] < 20


def test_morpheus_recipe_is_still_available():
    """loss_std_floor=0 and SGD with one batch per epoch are Morpheus's z-scores and training."""
    params = AutoencoderParams(optimizer="sgd", min_batches_per_epoch=1, loss_std_floor=0.0, epochs=2, **SMALL)
    model = DFPAutoencoder(["browser"], ["logcount"], ["result"], params)
    model.fit(habits_frame(100, seed=2))
    for stats in model.loss_stats.values():
        assert stats["scale"] == stats["std"]


def test_small_frames_get_several_steps_per_epoch():
    from dfp_ray.autoencoder.trainer import effective_batch_size

    assert effective_batch_size(150, AutoencoderParams()) == 19  # 8 steps of <= 19 rows
    assert effective_batch_size(100_000, AutoencoderParams()) == 512
    assert effective_batch_size(150, AutoencoderParams(min_batches_per_epoch=1)) == 512


# ---------------------------------------------------------------------------- calibration


def test_calibrated_threshold_flags_about_the_configured_share_of_held_out_normal_rows():
    """A model's threshold at rate a, applied to normal rows it never saw, flags about a of them."""
    rows = habits_frame(6000, seed=4)
    model = fit(rows.iloc[:3000], epochs=6)
    fresh = rows.iloc[3000:]  # same habits, not trained on
    for rate in (0.01, 0.05):
        threshold = model.threshold(rate, generic=True)
        assert threshold is not None and threshold.source == "own"
        flagged = float((model.score(fresh)["mean_abs_z"] > threshold.value).mean())
        assert rate / 3 <= flagged <= rate * 3, (rate, flagged, threshold)


def test_users_with_little_history_take_the_population_threshold():
    rng = np.random.default_rng(0)
    small = [Calibration.from_scores(rng.exponential(1.0, 15)) for _ in range(200)]
    population = pool(small)
    assert population is not None and population.holdout_rows == 3000
    t = threshold_for(small[0], 0.003, population)
    assert t.source == "population"
    assert t.value == pytest.approx(-np.log(0.003), rel=0.25)  # exponential(1): q = -ln(a) ~ 5.8
    big = Calibration.from_scores(rng.exponential(2.0, 5000))  # a user with a lot of history
    blended = threshold_for(big, 0.003, population)
    assert blended.source == "blend"
    assert tail_quantile(big.holdout, 0.997) * 0.8 < blended.value < tail_quantile(big.holdout, 0.997)


def test_tail_quantile_extrapolates_past_the_data():
    rng = np.random.default_rng(1)
    sample = np.sort(rng.exponential(1.0, 200))
    estimate = tail_quantile(sample, 0.999)  # 0.2 rows of 200 lie above it: beyond the data
    assert estimate > np.quantile(sample, 0.99)
    assert estimate == pytest.approx(-np.log(0.001), rel=0.35)  # exponential(1): -ln(0.001) = 6.9


def test_calibration_is_saved_with_the_model(user_model, tmp_path):
    user_model.save(tmp_path / "m")
    again = DFPAutoencoder.load(tmp_path / "m", device="cpu")
    assert again.calibration == user_model.calibration
    assert again.threshold(0.01) == user_model.threshold(0.01)
    row = habits_frame(5, seed=3)
    pd.testing.assert_frame_equal(again.score(row), user_model.score(row))


def test_fixed_rule_is_morpheus(user_model):
    frame = habits_frame(50, seed=6)
    scored = score_groups(frame.assign(username="u", timestamp=pd.Timestamp("2024-01-01", tz="UTC")),
                          load_schema("duo").model_copy(update={"time_features": []}),
                          [ScoringGroup(user_model, "DFP-duo-u:1", np.arange(50))],
                          detection=DetectionConfig(rule="fixed", threshold=0.5))
    assert (scored["alert_threshold"] == 0.5).all() and (scored["threshold_source"] == "fixed").all()
    kept = filter_detections(scored, DetectionConfig(rule="fixed", threshold=0.5))
    assert (kept["mean_abs_z"] > 0.5).all() and len(kept) == int((scored["mean_abs_z"] > 0.5).sum())


# ---------------------------------------------------------------------------- explanations


@pytest.mark.parametrize(
    ("change", "feature", "value"),
    [
        ({"browser": "netscape"}, "browser", "netscape"),
        ({"logcount": 60.0}, "logcount", "60"),
        ({"result": False, "browser": "chrome"}, "result", "False"),
    ],
)
def test_each_explanation_names_the_changed_feature(user_model, change, feature, value):
    from dfp_ray.pipeline.post_processing import explain

    row = habits_frame(1, seed=12).assign(browser="chrome", result=True, logcount=2.0).assign(**change)
    scored = pd.concat([row.reset_index(drop=True), user_model.score(row).reset_index(drop=True)], axis=1)
    drivers = explain(scored, top=3)
    assert drivers["driver_1"].iloc[0] == feature
    assert drivers["driver_1_value"].iloc[0] == value
    assert drivers["driver_1_z"].iloc[0] == pytest.approx(scored[f"{feature}_z_loss"].iloc[0])
    assert drivers["driver_1_expected"].iloc[0] != value
    assert drivers["explanation"].iloc[0].startswith(f"{feature}={value} (expected ")


def test_hour_of_day_is_explained_as_one_driver_with_clock_times():
    """A user who signs in 08:00-18:00 UTC, then at 03:10: the driver is the hour, shown as times."""
    schema = load_schema("duo")
    rng = np.random.default_rng(5)
    n = 600
    start = pd.Timestamp("2024-03-04", tz="UTC")
    days = rng.integers(0, 28, n)
    hours = rng.uniform(8, 18, n)
    times = start + pd.to_timedelta(days, unit="D") + pd.to_timedelta(hours, unit="h")
    base = {"username": "u", "accessdevicebrowser": "Chrome", "accessdeviceos": "Windows", "authdevicename": "phone",
            "reason": "user_approved", "application": "VPN", "location": "Lisbon, Lisboa, PT", "result": True}
    frame = pd.DataFrame({**base, "timestamp": times}).sort_values("timestamp", ignore_index=True)
    prepared = prepare_features(frame, schema)
    model = DFPAutoencoder(schema.features.categorical, schema.features.numeric, schema.features.binary,
                           AutoencoderParams(**{**SMALL, "epochs": 12}), numeric_scale=schema.numeric_scales())
    model.fit(prepared)
    night = pd.DataFrame({**base, "timestamp": [start + pd.Timedelta(days=29, hours=3, minutes=10)]})
    scored = score_groups(prepare_features(night, schema), schema, [ScoringGroup(model, "DFP-duo-u:1", np.arange(1))],
                          detection=DetectionConfig(alert_rate=0.01))
    row = scored.iloc[0]
    assert row["anomaly_score"] > 1, row[["mean_abs_z", "alert_threshold"]]
    assert row["driver_1"] == "hour_of_day"
    assert row["driver_1_value"] == "03:10"
    expected_hour = int(row["driver_1_expected"][:2])
    assert 7 <= expected_hour <= 19
    assert row["driver_1_z"] == pytest.approx(row["hour_of_day_sin_z_loss"] + row["hour_of_day_cos_z_loss"])


def test_quality_table_reports_the_fpr_of_ordinary_events_apart_from_rare_but_normal_ones():
    """A data set's rare-but-normal events (a new phone) count as normal in the FPR; the table
    also gives the FPR without them, so a reader sees which of the two a rule's alerts are."""
    from dfp_ray.tools.quality import format_table, measure

    ids = [f"e{i}" for i in range(10)]
    scored = pd.DataFrame({"event_id": ids, "username": ["u1"] * 5 + ["u2"] * 5})
    truth = pd.DataFrame({"event_id": ["e0", "e1"], "kind": ["new_location", "new_location"]})
    rare = pd.DataFrame({"event_id": ["e2", "e3"], "kind": ["new_phone", "new_phone"]})
    detected = np.array([True, True, True, True, True, False, False, False, False, False])
    q = measure(scored, truth, score=detected.astype(float), detected=detected, name="s", rule="r", rare=rare)
    assert q.fpr == pytest.approx(3 / 8)  # e2, e3, e4 of the eight normal events
    assert q.fpr_ordinary == pytest.approx(1 / 6)  # e4 of the six that are not rare-but-normal
    assert q.rare_fpr == {"new_phone": (2, 1.0)}
    assert q.precision == pytest.approx(2 / 5) and q.recall == 1.0
    assert "FPR ord" in format_table([q]) and "0.1667" in format_table([q])
    plain = measure(scored, truth, score=detected.astype(float), detected=detected, name="s", rule="r")
    assert plain.fpr_ordinary == plain.fpr
