"""The population check (``detection.population_share``): the generic model's opinion of the
events of users who have a model of their own (no Ray; models trained here in-process).

A user whose own history holds a value often does not find it new; the generic model, trained
on users who never had it, does. Such an event is a detection of the check alone, explained by
the generic model's drivers; the two models split the alert rate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder
from dfp_ray.config import DetectionConfig
from dfp_ray.pipeline.inference import ScoringGroup, score_groups

SMALL = dict(encoder_layers=[16], decoder_layers=[16], epochs=6, seed=5, device="cpu")
CITIES = ["Dublin", "Cork", "Galway"]


def rows(n: int, seed: int, cities: list[str], user: str) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "location": rng.choice(cities, size=n).astype(object),
        "accessdevicebrowser": rng.choice(["Chrome", "Edge"], size=n).astype(object),
        "logcount": rng.integers(0, 6, size=n).astype(float),
        "result": rng.random(n) > 0.1,
        "username": user,
        "timestamp": pd.Timestamp("2024-01-02", tz="UTC") + pd.to_timedelta(rng.integers(0, 86_000, size=n), unit="s"),
    })


def fit(frame: pd.DataFrame) -> DFPAutoencoder:
    model = DFPAutoencoder(["location", "accessdevicebrowser"], ["logcount"], ["result"], AutoencoderParams(**SMALL),
                           numeric_scale={"logcount": 1.0})
    model.fit(frame.drop(columns=["username", "timestamp"]))
    return model


def schema():
    from dfp_ray.schemas import load_schema

    return load_schema("duo").model_copy(update={"time_features": []})


def scenario():
    """A traveller whose own history is a third Lagos, and a generic model of 20 users who never
    left Ireland (trained before the traveller joined)."""
    others = pd.concat([rows(120, 10 + i, CITIES, f"u{i}") for i in range(20)], ignore_index=True)
    traveller = rows(300, 99, [*CITIES, "Lagos", "Lagos", "Lagos"], "traveller")
    generic = fit(others)
    own = fit(traveller)
    today = rows(40, 7, CITIES, "traveller")
    today.loc[5, "location"] = "Lagos"
    newcomer = rows(10, 8, CITIES, "newcomer")  # no model of their own: the generic model scores them
    part = pd.concat([today, newcomer], ignore_index=True)
    groups = [ScoringGroup(own, "DFP-duo-traveller:1", np.arange(40)),
              ScoringGroup(generic, "DFP-duo-generic_user:1", np.arange(40, 50), generic=True)]
    return own, generic, part, groups


def test_the_generic_model_flags_what_is_new_for_everyone_and_says_why():
    own, generic, part, groups = scenario()
    det = DetectionConfig(alert_rate=0.003)  # the default split: a third to the check
    scored = score_groups(part, schema(), groups, detection=det, population_model=generic)
    mine = scored[scored["username"] == "traveller"]
    # each side at its share of the alert rate, and the score an event's larger one
    assert np.allclose(mine["alert_threshold"], own.threshold(0.002).value)
    assert np.allclose(mine["population_threshold"], generic.threshold(0.001, generic=True).value)
    own_only = score_groups(part, schema(), groups, detection=det.model_copy(update={"population_share": 0.0}),
                            population_model=generic)
    own_score = own_only[own_only["username"] == "traveller"]["anomaly_score"].to_numpy()
    rescaled = own_score * own.threshold(0.003).value / own.threshold(0.002).value
    np.testing.assert_allclose(mine["anomaly_score"], np.fmax(rescaled, mine["population_score"]), rtol=1e-9)
    # Lagos is the traveller's habit: not new for their own model, new for the population
    lagos = mine[mine["location"] == "Lagos"].iloc[0]
    assert own_only.loc[own_only["location"] == "Lagos", "anomaly_score"].iloc[0] <= 1.0
    assert lagos["anomaly_score"] > 1.0 and lagos["detected_by"] == "population"
    assert lagos["driver_1"] == "location" and lagos["driver_1_value"] == "Lagos"
    assert lagos["explanation"].startswith("new for the population: location=Lagos")
    # every other event of the day is normal for both; the newcomer's rows are the generic model's own
    assert (mine.drop(lagos.name)["detected_by"] == "").all()
    newcomer = scored[scored["username"] == "newcomer"]
    assert newcomer["population_score"].isna().all()
    assert np.allclose(newcomer["alert_threshold"], generic.threshold(0.003, generic=True).value)
    assert "detected_by" not in own_only.columns  # share 0: no check, Morpheus's columns


def test_without_a_generic_model_or_with_the_fixed_rule_the_own_model_gets_the_whole_rate():
    own, generic, part, groups = scenario()
    alone = score_groups(part.iloc[:40], schema(), groups[:1], detection=DetectionConfig(), population_model=None)
    assert np.allclose(alone["alert_threshold"], own.threshold(0.003).value)
    assert "population_score" not in alone.columns
    fixed = score_groups(part, schema(), groups, detection=DetectionConfig(rule="fixed"), population_model=generic)
    assert "population_score" not in fixed.columns
    assert (fixed["anomaly_score"] == fixed["mean_abs_z"] / 2.0).all()


def test_a_generic_model_of_another_schema_is_no_check_and_no_crash():
    own, _, part, groups = scenario()
    other = DFPAutoencoder(["location", "reason"], ["logcount"], ["result"], AutoencoderParams(**SMALL))
    other.fit(part.assign(reason="user_approved").drop(columns=["username", "timestamp"]))
    scored = score_groups(part.iloc[:40], schema(), groups[:1], detection=DetectionConfig(), population_model=other)
    assert len(scored) == 40 and "population_score" not in scored.columns
    assert np.allclose(scored["alert_threshold"], own.threshold(0.003).value)
