"""DFP scoring pieces that need no Ray or registry: the source config, coalescing, top features,
counter periods. The service itself is tested over HTTP in tests/test_serve_dfp.py."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfp_ray.serve.config import ConfigError, load_serve_config, resolved
from dfp_ray.serve.dfp_ingress import Coalescer
from dfp_ray.serve.dfp_scorer import model_id, parse_model_id
from dfp_ray.serve.dfp_scoring import period_start, period_starts, top_features

ROOT = Path(__file__).resolve().parents[1]


def test_a_source_is_resolved_where_the_app_is_built(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolved(load_serve_config(None, {"auth": {"token_env": None}, "fingerprint": {"key_env": None}, "dfp": {
        "sources": {"duo": {"pipeline_config": str(ROOT / "configs" / "duo.yaml")},
                    "azure": {"pipeline": {"state_dir": "rel/state", "detection": {"threshold": 3.5}}},
                    "custom": {"schema": str(ROOT / "dfp_ray" / "schemas" / "duo.yaml"),
                               "tracking_uri": "http://127.0.0.1:5999"}}}}))
    duo, azure, custom = (cfg.dfp.sources[n].pipeline for n in ("duo", "azure", "custom"))
    assert duo["source"] == "duo" and duo["schema"] == "duo"
    assert duo["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path / '.dfp_ray' / 'mlflow.db'}"
    assert azure["source"] == "azure" and azure["state_dir"] == str(tmp_path / "rel" / "state")
    assert azure["detection"]["threshold"] == 3.5
    assert custom["source"] == "custom" and os.path.isabs(custom["schema"])
    assert custom["mlflow"]["tracking_uri"] == "http://127.0.0.1:5999"
    assert all(s.pipeline_config is None for s in cfg.dfp.sources.values())  # replicas read no file
    again = resolved(cfg)
    assert again.dfp.sources["azure"].pipeline == azure


@pytest.mark.parametrize(("dfp", "message"), [
    ({"sources": {"du/o": {}}}, "may hold only letters"),
    ({"sources": {"duo": {"pipeline_config": "/nonexistent/duo.yaml"}}}, "cannot read configuration file"),
    ({"sources": {"duo": {"schema": "okta"}}}, "unknown schema 'okta'"),
    ({"sources": {"duo": {"pipeline": {"detection": {"treshold": 3}}}}}, "dfp.sources.duo"),
    ({"max_models_per_replica": 0}, "max_models_per_replica"),
])
def test_source_config_errors_name_the_source_and_field(dfp, message):
    with pytest.raises(ConfigError, match=message):
        resolved(load_serve_config(None, {"auth": {"token_env": None}, "fingerprint": {"key_env": None}, "dfp": dfp}))


def test_model_ids_round_trip_any_user_name():
    for user in ("alice", "a:b:c", "José ☃", "x/y", " "):
        assert parse_model_id(model_id("duo", user)) == ("duo", user)
    with pytest.raises(ValueError):
        parse_model_id("duo:alice")


def test_requests_that_arrive_while_a_call_runs_are_coalesced_into_the_next():
    calls: list[list[list[int]]] = []

    async def work(batch: list[list[int]]) -> list[list[int]]:
        calls.append(batch)
        await asyncio.sleep(0.05)
        if any(-1 in recs for recs in batch):
            raise RuntimeError("boom")
        return [[r * 10 for r in recs] for recs in batch]

    async def main():
        co = Coalescer(work, max_records=100, max_in_flight=1)
        alone = await co.submit([1])
        running = asyncio.create_task(co.submit([100]))
        await asyncio.sleep(0.02)  # its call is running now
        results = await asyncio.gather(*(co.submit([i, i]) for i in range(5)))
        assert await running == [1000]
        failing = await asyncio.gather(co.submit([2]), co.submit([-1]), return_exceptions=True)
        big = await asyncio.gather(*(co.submit(list(range(60))) for _ in range(2)))
        return co, alone, results, failing, big

    co, alone, results, failing, big = asyncio.run(main())
    assert alone == [10]
    assert results == [[i * 10, i * 10] for i in range(5)]
    assert [len(c) for c in calls[:3]] == [1, 1, 5]  # the five that arrived during a call went into the next one
    assert all(isinstance(f, RuntimeError) for f in failing)  # a failed call fails the requests it carried
    assert [len(b) for b in calls[-2:]] == [1, 1]  # 60 + 60 records > max_records: one call each
    assert big[0] == [r * 10 for r in range(60)] and co.calls == len(calls)


def test_top_features_are_the_largest_z_or_the_pipelines_own_explanation():
    scored = pd.DataFrame({
        "a": ["x", "y"], "a_pred": ["x", "z"], "a_z_loss": [0.1, 5.0],
        "b": [1.0, 2.0], "b_pred": [1.1, 0.5], "b_z_loss": [3.0, np.nan],
        "c": [True, False], "c_z_loss": [2.0, 1.0],
    })
    first, second = top_features(scored, ["a", "b", "c"], 2)
    assert first["feature"].tolist() == ["b", "a"] and first["z"].tolist() == [3.0, 5.0]
    assert first["value"].tolist() == [1.0, "y"] and first["expected"].tolist() == [1.1, "z"]
    assert second["feature"].tolist() == ["c", "c"]  # NaN ranks last
    scored["driver_1"], scored["driver_1_z"] = ["hour_of_day", ""], [7.5, np.nan]
    scored["driver_1_value"], scored["driver_1_expected"] = ["03:12", ""], ["14:05", ""]
    first, _ = top_features(scored, ["a", "b", "c"], 2)
    assert first["feature"].tolist() == ["hour_of_day", "a"]  # the pipeline's words where it wrote some
    assert first["z"].tolist() == [7.5, 5.0] and first["value"].tolist() == ["03:12", "y"]
    assert top_features(scored, ["a"], 0) == []


def test_counter_periods_start_where_data_prep_starts_them():
    times = pd.Series(pd.to_datetime(["2022-08-30T23:59:59Z", "2022-08-31T00:00:00Z", "2022-08-31T13:00:00Z"]))
    assert period_starts(times, "D").dt.day.tolist() == [30, 31, 31]
    assert period_start(times.iloc[2], "h") == pd.Timestamp("2022-08-31T13:00:00Z")
    assert period_start(times.iloc[2], "W") == pd.Timestamp("2022-08-29T00:00:00Z")  # weeks start on Monday


def test_in_ingress_scoring_binds_no_scorer_and_needs_one_ingress_replica():
    from dfp_ray.serve.deployment import application

    base = {"auth": {"token_env": None}, "fingerprint": {"key_env": None},
            "dfp": {"sources": {"duo": {"pipeline": {"state_dir": "/tmp/unused-state"}}}}}
    bound = application(load_serve_config(None, base))._bound_deployment.init_args
    assert bound[1] is not None  # the scorer deployment, by default
    base["dfp"]["scorer"] = {"in_ingress": True}
    bound = application(load_serve_config(None, base))._bound_deployment.init_args
    assert bound[1] is None  # the ingress scores itself (LocalBackend)
    with pytest.raises(ValueError, match="num_replicas 1"):
        application(load_serve_config(None, {**base, "deployment": {"num_replicas": 2}}))
