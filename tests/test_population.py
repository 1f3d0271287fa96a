"""The source's population (pooled user-model held-out scores) lives in the registry, so a
user's threshold does not depend on who else is scored beside it (no Ray; sqlite registry)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder
from dfp_ray.autoencoder.calibration import Calibration
from dfp_ray.pipeline.inference import ScoringGroup, score_groups
from dfp_ray.registry import ModelCache, ModelRegistry
from dfp_ray.registry.population import Population, merge_population

SMALL = dict(encoder_layers=[16], decoder_layers=[16], epochs=3, seed=5, device="cpu")


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"browser": rng.choice(["chrome", "edge", "safari"], size=n).astype(object),
                         "logcount": rng.integers(0, 6, size=n).astype(float), "result": rng.random(n) > 0.1})


def fit(seed: int, n: int = 200) -> DFPAutoencoder:
    model = DFPAutoencoder(["browser"], ["logcount"], ["result"], AutoencoderParams(**SMALL),
                           numeric_scale={"logcount": 1.0})
    model.fit(frame(n, seed))
    return model


def test_population_round_trips_through_the_registry_and_merges(tmp_path):
    registry = ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert registry.population("duo") is None  # nothing trained yet
    a = Calibration(holdout=list(np.linspace(0.5, 3.0, 40)), holdout_rows=40)
    b = Calibration(holdout=list(np.linspace(0.2, 1.0, 10)), holdout_rows=10)
    first = merge_population(None, [a, b])
    assert first.models == 2 and first.calibration.holdout_rows == 50
    registry.set_population("duo", first)
    back = registry.population("duo")
    assert back.models == 2 and back.calibration.holdout_rows == 50
    np.testing.assert_allclose(back.calibration.holdout, first.calibration.holdout, rtol=1e-5)
    # one of two models retrained: the stored pool keeps half its weight
    second = merge_population(back, [b])
    assert second.models == 2 and second.calibration.holdout_rows == 10 + 25
    # a cache reads it once per refresh interval, and a generic invalidation drops it
    cache = ModelCache(registry, refresh_seconds=3600)
    assert cache.population("duo").models == 2
    registry.set_population("duo", second)
    assert cache.population("duo").calibration.holdout_rows == 50  # still the one read
    cache.invalidate("duo", None)
    assert cache.population("duo").calibration.holdout_rows == 35
    assert isinstance(Population.decode(second.encode()), Population)


def test_a_users_threshold_is_the_same_alone_or_beside_other_users():
    models = [fit(seed) for seed in range(4)]
    rows = pd.concat([frame(30, 100 + i).assign(username=f"u{i}") for i in range(4)], ignore_index=True)
    rows["timestamp"] = pd.Timestamp("2024-01-01", tz="UTC")

    population = merge_population(None, [m.calibration for m in models]).calibration

    def thresholds(users: list[int], pop: Calibration | None) -> pd.Series:
        part = rows[rows["username"].isin([f"u{i}" for i in users])].reset_index(drop=True)
        groups = [ScoringGroup(models[i], f"m{i}", np.flatnonzero(part["username"].to_numpy() == f"u{i}"))
                  for i in users]
        scored = score_groups(part, _schema(), groups, population=pop)
        return scored.groupby("username")["alert_threshold"].first()

    together, alone = thresholds([0, 1, 2, 3], population), thresholds([0], population)
    assert together["u0"] == alone["u0"]
    # without the stored population the threshold depends on the company a user keeps
    assert thresholds([0, 1, 2, 3], None)["u0"] != thresholds([0], None)["u0"]


def _schema():
    from dfp_ray.schemas import load_schema

    return load_schema("duo").model_copy(update={"time_features": []})
