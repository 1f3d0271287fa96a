"""The registry against a real ``mlflow server`` on loopback (HTTP API + served artifacts)."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow_server import MlflowServer
from test_registry import DOTTED, SCHEMA, duo_records, mlflow_uri, register, train

from dfp_ray.config import DFPConfig
from dfp_ray.pipeline.data_prep import frame_from_records
from dfp_ray.registry import ModelCache, ModelRegistry, registered_model_name
from dfp_ray.registry.signature import score_raw_frame

pytestmark = [pytest.mark.mlflow_server, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("mlflow_server")) as srv:
        yield srv


def test_register_lookup_load_and_pyfunc_through_a_server(server, tmp_path):
    cfg = DFPConfig(state_dir=str(tmp_path / "state"), mlflow={"tracking_uri": server.uri})
    registry = ModelRegistry.from_config(cfg)
    assert registry.tracking_uri == server.uri and registry.artifact_location is None  # server stores artifacts
    trained_a, trained_b = train(seed=3), train(seed=4)

    v1 = register(registry, DOTTED, trained_a)
    v2 = register(registry, DOTTED, trained_b)
    assert (v1.version, v2.version) == ("1", "2")
    assert v2.name == registered_model_name("duo", DOTTED)
    assert registry.latest("duo", DOTTED) == v2
    assert registry.latest("duo", "nobody") is None
    assert registry.latest_many("duo", [DOTTED, "nobody"]) == {DOTTED: v2, "nobody": None}  # name IN (...)
    run = registry.client.get_run(v2.run_id)
    assert run.data.params["row_count"] == str(trained_b[1].rows) and run.data.tags["user"] == DOTTED
    location = registry.client.get_model_version_download_uri(v2.name, v2.version)
    assert location.startswith("mlflow-artifacts:")  # uploaded to, and downloaded from, the server
    assert not (tmp_path / "state").exists()  # nothing written locally

    loaded = registry.load(v2, device="cpu")
    frame = trained_b[2]
    pd.testing.assert_frame_equal(loaded.score(frame), trained_b[0].score(frame))
    cached = ModelCache(registry, refresh_seconds=0).get("duo", DOTTED)
    assert cached is not None and cached[1] == v2

    records = duo_records(n=50, users=(DOTTED,), seed=5)
    direct = score_raw_frame(loaded, SCHEMA, records)
    with mlflow_uri(server.uri):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{v2.name}/latest")
        scored = pyfunc.predict(pd.DataFrame(records))
    pd.testing.assert_frame_equal(scored, direct)
    mapped, _ = frame_from_records(records, SCHEMA)
    assert len(scored) == len(mapped) == 50
