"""The Ray pipeline end to end against a real ``mlflow server`` on loopback: models are
registered over HTTP, their artifacts uploaded to the server, and inference finds and
downloads them there (no local registry or artifact store is written)."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow_server import MlflowServer

from dfp_ray.config import load_config
from dfp_ray.registry import ModelRegistry, registered_model_name
from dfp_ray.runner import Pipeline, run
from dfp_ray.tools.datagen import DatagenConfig, generate

pytestmark = [pytest.mark.mlflow_server, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("mlflow_server")) as srv:
        yield srv


def test_train_and_infer_through_a_tracking_server(ray_session, server, tmp_path):
    data = tmp_path / "data"
    generate(DatagenConfig(out=str(data), sources=["duo"], users=4, train_days=4, infer_days=1,
                           events_per_user_per_day=6, seed=8), progress=False)
    cfg = load_config(None, {
        "source": "duo", "state_dir": str(tmp_path / "state"), "output.directory": str(tmp_path / "out"),
        "output.write_all_scores": True, "min_train_rows": 5, "ray.num_user_actors": 2,
        "ray.message_timeout_s": 300, "mlflow.tracking_uri": server.uri, "input.data_roots": [str(tmp_path)],
        "autoencoder.encoder_layers": [32, 16], "autoencoder.decoder_layers": [32], "autoencoder.epochs": 3,
    })
    msgs = data / "control_messages"
    pipe = Pipeline(cfg)
    try:
        train = run(cfg, [str(msgs / "duo_payload_training.json")], pipeline=pipe, progress=False)
        infer = run(cfg, [str(msgs / "duo_payload_inference.json")], pipeline=pipe, progress=False)
    finally:
        pipe.shutdown()
    assert train.ok and infer.ok, (train.rejections, infer.rejections)
    assert train.users_trained == 5  # 4 users + generic

    registry = ModelRegistry.from_config(cfg)
    users = set(pd.read_csv(data / "duo" / "ground_truth.csv")["username"])
    for user in [*users, None]:  # None: the generic model
        ref = registry.latest("duo", user)
        assert ref is not None and ref.name == registered_model_name("duo", user)
        assert registry.client.get_model_version_download_uri(ref.name, ref.version).startswith("mlflow-artifacts:")
    assert not (tmp_path / "state" / "mlartifacts").exists() and not (tmp_path / "state" / "mlflow.db").exists()

    scores = pd.read_csv(infer.scores_path)
    assert len(scores) == infer.rows_scored > 0
    expected = scores["username"].map(lambda u: registered_model_name("duo", u) + ":1")
    assert (scores["model_version"] == expected).all()  # every user scored by its own server-held model
