"""The population check (``detection.population_share``): the generic model's opinion of the
events of users who have a model of their own (no Ray; models trained here in-process).

The two models split the alert rate; an event either flags is a detection, one flagged by the
check alone is explained by the generic model's drivers; and a feature counts for the check
only where it is unusual for the user too (a value new for everyone but this user's habit is
not flagged).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder
from dfp_ray.config import DetectionConfig
from dfp_ray.pipeline.inference import ScoringGroup, score_groups
from dfp_ray.pipeline.population_check import POPULATION_GATE_Z, _gated

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


def test_the_rates_split_and_the_check_flags_and_explains_with_the_generic_models_drivers():
    own, generic, part, groups = scenario()
    # a high alert rate, most of it the check's, so it flags rows of this small day
    det = DetectionConfig(alert_rate=0.4, population_share=0.9)
    scored = score_groups(part, schema(), groups, detection=det, population_model=generic)
    mine = scored[scored["username"] == "traveller"]
    assert np.allclose(mine["alert_threshold"], own.threshold(0.04).value)
    assert np.allclose(mine["population_threshold"], generic.threshold(0.36, generic=True).value)
    own_only = score_groups(part, schema(), groups, detection=det.model_copy(update={"population_share": 0.0}),
                            population_model=generic)
    own_score = own_only[own_only["username"] == "traveller"]["anomaly_score"].to_numpy()
    rescaled = own_score * own.threshold(0.4).value / own.threshold(0.04).value
    np.testing.assert_allclose(mine["anomaly_score"], np.fmax(rescaled, mine["population_score"]), rtol=1e-9)
    by = mine["detected_by"]
    assert ((mine["anomaly_score"] > 1) == (by != "")).all()
    only = mine[by == "population"]
    assert len(only) and (only["population_score"] > 1).all() and (rescaled[(by == "population").to_numpy()] <= 1).all()
    for _, row in only.iterrows():  # explained by the generic model, by a feature unusual for the user too
        assert row["explanation"].startswith("new for the population: ")
        assert row[f"{row['driver_1']}_z_loss"] >= POPULATION_GATE_Z
    # the newcomer has no model of their own: the generic model scores them at the whole rate
    newcomer = scored[scored["username"] == "newcomer"]
    assert newcomer["population_score"].isna().all()
    assert np.allclose(newcomer["alert_threshold"], generic.threshold(0.4, generic=True).value)
    assert "detected_by" not in own_only.columns  # share 0: no check, Morpheus's columns


def test_what_is_new_for_everyone_but_the_users_habit_is_not_flagged():
    """Lagos is a third of the traveller's history and new to the generic model: the check
    leaves it out (the traveller's model finds it usual), so its score is the gated one."""
    own, generic, part, groups = scenario()
    scored = score_groups(part, schema(), groups, detection=DetectionConfig(), population_model=generic)
    lagos = scored[scored["location"] == "Lagos"].iloc[0]
    assert lagos["location_z_loss"] < POPULATION_GATE_Z and lagos["detected_by"] == ""
    ungated = generic.score(part.loc[part["location"] == "Lagos"], alert_rate=0.001, generic=True).iloc[0]
    assert ungated["location_z_loss"] > 5 and ungated["anomaly_score"] > 1  # new for everyone else
    assert lagos["population_score"] < ungated["anomaly_score"] / 2


def test_the_gate_keeps_a_generic_z_only_where_the_user_model_finds_the_feature_unusual():
    opinion = {"a_z_loss": np.array([5.0, 5.0, 2.0]), "b_z_loss": np.array([1.0, 3.0, 0.5]),
               "alert_threshold": np.array([2.0, 2.0, 2.0]), "mean_abs_z": np.zeros(3), "max_abs_z": np.zeros(3),
               "anomaly_score": np.zeros(3)}
    results = {"a_z_loss": np.array([0.2, 4.0, 9.0, 1.0]), "b_z_loss": np.array([9.0, 9.0, 0.1, 0.0])}
    checked = np.array([False, True, True, True])  # row 0 was not checked (the generic model's own row)
    gated = _gated(opinion, results, checked)
    np.testing.assert_array_equal(gated["a_z_loss"], [5.0, 5.0, 2.0])  # user z 4, 9, 1: all unusual
    np.testing.assert_array_equal(gated["b_z_loss"], [1.0, 0.0, 0.0])  # user z 9, 0.1, 0: usual twice
    np.testing.assert_allclose(gated["mean_abs_z"], [3.0, 2.5, 1.0])
    np.testing.assert_allclose(gated["max_abs_z"], [5.0, 5.0, 2.0])
    np.testing.assert_allclose(gated["anomaly_score"], [1.5, 1.25, 0.5])


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
