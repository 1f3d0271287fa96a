"""``dfp-ray stream``'s service against a real broker (Tansu on loopback), real Ray, real MLflow.

One warm pipeline writes one stream run for the module, as a long-running service would: a
stream of training then inference messages writes the detections a batch run of the same
messages writes (visible while the stream runs, and on the Kafka sink too); invalid messages
go to the dead-letter topic with their reasons; payload and streaming messages interleaved in
one topic run in arrival order, each inference scoring with the models the messages before it
registered.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfp_ray.runner import run
from dfp_ray.streaming.publisher import publish_files

try:
    from tests.kafka_broker import committed_offset, kafka_broker, read_topic  # noqa: F401 - fixture
    from tests.stream_helpers import (
        live_pipeline,
        make_cfg,
        make_data,
        message,
        read_detections,
        stream,
        write_doc,
    )
except ImportError:
    from kafka_broker import committed_offset, kafka_broker, read_topic  # noqa: F401 - fixture
    from stream_helpers import live_pipeline, make_cfg, make_data, message, read_detections, stream, write_doc

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def docs(data, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("docs")
    train, infer = str(data / "duo" / "training" / "*.json"), str(data / "duo" / "inference" / "*.json")
    bad = tmp / "bad.json"
    bad.write_text('{"inputs": [{"tasks": [{"type": "load", ')  # a truncated upload
    return {
        "train": write_doc(tmp / "train.json", message(train, "training")),
        "infer": write_doc(tmp / "infer.json", message(infer, "inference")),
        "bad": bad,
        "nofiles": write_doc(tmp / "nofiles.json", message(str(tmp / "nope" / "*.json"), "inference")),
        "stream_train": write_doc(tmp / "stream_train.json", message(train, "training", "streaming")),
        "stream_infer": write_doc(tmp / "stream_infer.json", message(infer, "inference", "streaming")),
    }


@pytest.fixture(scope="module")
def live(ray_session, kafka_broker, tmp_path_factory):
    """One warm pipeline for the module (as a service has), writing one stream run."""
    cfg = make_cfg(tmp_path_factory.mktemp("stream"), kafka_broker.bootstrap, **{
        "kafka.group_id": "dfp-test", "kafka_sink.topic": "detections"})
    pipe = live_pipeline(cfg)
    yield cfg, pipe
    pipe.shutdown()


def test_a_stream_writes_the_batch_runs_detections_as_it_goes_and_dead_letters_bad_messages(
        live, kafka_broker, docs):
    cfg, pipe = live
    published = pipe.live_paths()["detections"]
    run_file = Path(pipe.live_paths()["run_folder"]) / "dfp_detections_duo.csv"
    seen: dict[str, int] = {}

    def on_result(res, origin):  # the stream is still running: the rows must already be visible
        if res.kind == "inference" and res.rejection is None:
            seen["visible"] = len(pd.read_csv(published)) if Path(published).stat().st_size else 0
            seen["written"] = res.detections

    publish_files(kafka_broker.bootstrap, "control", [docs["train"], docs["bad"], docs["nofiles"], docs["infer"]],
                  validate=False)
    assert stream(cfg, pipe, "control", 4, on_result=on_result) == 0
    got = read_detections(published)
    assert seen["visible"] == seen["written"] == len(got) > 0
    assert Path(published).samefile(run_file)
    assert committed_offset(kafka_broker.bootstrap, "dfp-test", "control") == 4

    # the Kafka sink got the same rows (read before the batch run below publishes its own)
    sent = read_topic(kafka_broker.bootstrap, "detections")
    assert sorted(dict(r.headers)["event_id"].decode() for r in sent) == got["event_id"].tolist()
    assert {r.key.decode() for r in sent} == set(got["username"])
    assert json.loads(sent[0].value)["event_id"] == dict(sent[0].headers)["event_id"].decode()

    # The batch run (`dfp-ray run`) of the same messages on the same warm pipeline trains the
    # same models again (same rows, same seeds) and writes the same detections.
    batch = run(cfg, [str(docs["train"]), str(docs["infer"])], pipeline=pipe, progress=False)
    assert batch.ok, batch.rejections
    reference = read_detections(Path(batch.run_folder) / "dfp_detections_duo.csv")
    assert got["event_id"].tolist() == reference["event_id"].tolist()
    np.testing.assert_allclose(got["mean_abs_z"], reference["mean_abs_z"], rtol=1e-6)

    dead = read_topic(kafka_broker.bootstrap, "control.dlq")
    headers = [{k: v.decode() for k, v in r.headers} for r in dead]
    assert [(h["dfp.dlq.stage"], h["dfp.dlq.offset"]) for h in headers] == [("parse", "1"), ("pipeline", "2")]
    assert "invalid JSON" in headers[0]["dfp.dlq.reason"]
    assert "no files matched" in headers[1]["dfp.dlq.reason"] and headers[1]["dfp.dlq.field"].endswith(".files")



def test_payload_and_streaming_messages_in_one_topic_run_in_arrival_order(live, kafka_broker, docs):
    cfg, pipe = live
    results, written = [], []
    # the stream run's own file (the batch run of the test before published its own results since)
    published = Path(pipe.live_paths()["run_folder"]) / "dfp_detections_duo.csv"

    def on_result(res, origin) -> None:  # rows in the stream run's detections file after each message
        results.append((res, origin))
        written.append(len(read_detections(published)) if published.stat().st_size else 0)

    publish_files(kafka_broker.bootstrap, "mixed", [docs["infer"], docs["stream_train"], docs["stream_infer"]])
    assert stream(cfg, pipe, "mixed", 3, on_result=on_result) == 0
    assert [(r.kind, r.data_type, o.offset) for r, o in results] == [
        ("inference", "payload", 0), ("training", "streaming", 1), ("inference", "streaming", 2)]
    first, training, second = (r for r, _ in results)
    # The first inference scores with the models of the earlier payload trainings (version 2:
    # the stream's, then the batch run's) ...
    assert {r.model_version.rsplit(":", 1)[1] for r in first.inferred if r.model_version} == {"2"}
    # ... the streaming training counts every row once through the windows and retrains whoever is due ...
    users = {r.user for r in training.trained if not r.generic}
    assert users, [r.reason for r in training.skipped_users]
    added = sum(r.window_added for r in training.trained + training.skipped_users if not r.generic)
    assert added == training.rows and all(r.window_duplicates == 0 for r in training.trained + training.skipped_users)
    # ... and the inference after it scores those users with their new versions.
    # (a busy user's window can be due on more than one day of the message: one version each)
    fits = {u: sum(1 for r in training.trained if r.user == u) for u in users}
    versions = {r.user: r.model_version for r in second.inferred}
    assert all(versions[u].endswith(f":{2 + fits[u]}") for u in users if u in versions), (versions, fits)
    # The same events again: a row already in the stream run's file is not written again; only
    # events the new versions flag and the old ones did not are added.
    assert read_detections(published)["event_id"].is_unique
    assert second.detections == written[2] - written[1]
