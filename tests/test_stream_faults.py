"""Faults of the streaming service on real components (Ray, MLflow, a Tansu broker whose topics
and offsets live in an S3-protocol server): nothing lost, nothing twice. One warm pipeline.

- a user actor killed mid-stream is restarted by Ray and restores its users' rolling windows
  from their checkpoints: the windows end as if nothing happened, and the same message sent
  again counts no row twice;
- the broker stopped and started again while a message is in flight: the message is retried
  until its detections reach the Kafka sink, then committed, and the stream goes on.

(The whole ``dfp-ray stream`` process killed: tests/test_stream_kill.py.)
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
import ray

from dfp_ray.messages import parse_control_messages
from dfp_ray.pipeline.file_batcher import plan_batches
from dfp_ray.pipeline.file_to_df import load_files
from dfp_ray.pipeline.rolling_window import RollingWindow
from dfp_ray.registry import ModelRegistry
from dfp_ray.row_keys import fill_event_ids
from dfp_ray.runner import run
from dfp_ray.schemas import load_schema, map_fields
from dfp_ray.streaming.publisher import publish_files

try:
    from tests.kafka_broker import Broker, committed_offset, read_topic
    from tests.s3_server import running_s3_server
    from tests.stream_helpers import live_pipeline, make_cfg, make_data, message, read_detections, write_doc
except ImportError:
    from kafka_broker import Broker, committed_offset, read_topic
    from s3_server import running_s3_server
    from stream_helpers import live_pipeline, make_cfg, make_data, message, read_detections, write_doc

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.s3]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def broker():
    """A broker that keeps its topics and committed offsets across a restart (in moto's S3)."""
    with running_s3_server() as endpoint:
        server = Broker(s3_endpoint=endpoint).start()
        try:
            yield server
        finally:
            server.close()


@pytest.fixture(scope="module")
def live(ray_session, broker, tmp_path_factory):
    cfg = make_cfg(tmp_path_factory.mktemp("faults"), broker.bootstrap, **{
        "kafka.group_id": "outage", "kafka.handler_attempts": 20, "kafka_sink.topic": "found",
        "kafka_sink.flush_timeout": "3s"})
    pipe = live_pipeline(cfg)
    yield cfg, pipe
    pipe.shutdown()


@pytest.fixture(scope="module")
def docs(data, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("docs")
    train, infer = str(data / "duo" / "training" / "*.json"), str(data / "duo" / "inference" / "*.json")
    return {
        "train": write_doc(tmp / "train.json", message(train, "training")),
        "infer": write_doc(tmp / "infer.json", message(infer, "inference")),
        "stream_train": write_doc(tmp / "stream_train.json", message(train, "training", "streaming")),
    }


def expected_windows(cfg, doc: Path) -> dict[str, RollingWindow]:
    """Each user's training window after the streaming message, computed without Ray: the same
    batches (file batcher), mapped rows and keys, appended in order."""
    schema = load_schema("duo")
    (msg,) = parse_control_messages(doc).messages
    windows: dict[str, RollingWindow] = {}
    for i, batch in enumerate(plan_batches(msg, {}, roots=cfg.input.roots())):
        frame, _ = map_fields(load_files([f.url for f in batch.files]).frame, schema)
        frame = fill_event_ids(frame, "event_id")
        for user, rows in frame.groupby("username"):
            win = windows.setdefault(user, RollingWindow(cfg.window, "timestamp", "event_id"))
            win.append(rows.reset_index(drop=True), work=str(i))
    return windows


def checkpoint(cfg, user: str) -> RollingWindow:
    from dfp_ray.registry.names import safe_user_name

    win = RollingWindow.load(f"{cfg.windows_dir}/duo/{safe_user_name(user)}.parquet", cfg.window, "timestamp", "event_id")
    assert win is not None, user
    return win


def test_a_killed_user_actor_restores_its_windows_and_counts_nothing_twice(live, docs):
    cfg, pipe = live
    expected = expected_windows(cfg, docs["stream_train"])
    pids = [ray.get(a.pid.remote()) for a in pipe.user_actors]
    rng = random.Random(20221202)
    victim, after = rng.randrange(len(pids)), rng.randrange(2, 6)
    killed: list[str] = []

    def killer() -> None:  # SIGKILL one pool actor once `after` users were handled in the stream's batches
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            try:
                state = ray.get(pipe.router.progress.remote(), timeout=5)
            except Exception:  # noqa: BLE001 - busy; ask again
                continue
            if state.kind == "training" and state.users_done >= after:
                os.kill(pids[victim], signal.SIGKILL)
                killed.append(f"actor {victim} after {state.users_done}")
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    first = run(cfg, [str(docs["stream_train"])], pipeline=pipe, progress=False)
    thread.join(5)
    assert killed, "the actor was never killed"
    assert ray.get(pipe.user_actors[victim].pid.remote()) != pids[victim]  # restarted by Ray
    again = run(cfg, [str(docs["stream_train"])], pipeline=pipe, progress=False)  # the same rows once more
    assert first.ok and again.ok, (first.rejections, again.rejections)
    registry = ModelRegistry.from_config(cfg)
    for user, want in expected.items():
        got = checkpoint(cfg, user)
        assert sorted(got.rows["event_id"]) == sorted(want.rows["event_id"]), user
        assert (got.new_since_emit, got.emits) == (want.new_since_emit, want.emits), (user, killed)
        assert len(registry.versions("duo", user)) == want.emits, (user, killed)  # no model trained twice
    second = [r for d in again.messages_detail for r in d.trained + d.skipped_users if not r.generic]
    assert second and all(r.window_added == 0 and not r.trained for r in second)


def test_a_broker_restart_mid_message_delays_the_commit_until_the_kafka_sink_has_every_row(live, broker, docs):
    from dfp_ray.streaming.service import run_stream

    cfg, pipe = live
    cfg = cfg.model_copy(deep=True)
    cfg.kafka = cfg.kafka.model_copy(update={"input_topics": ["live"], "stop_after": 2})
    sources, codes = [], []
    thread = threading.Thread(target=lambda: codes.append(run_stream(
        cfg, pipeline=pipe, handle_signals=False, on_start=sources.append)), daemon=True)
    publish_files(broker.bootstrap, "live", [docs["train"], docs["infer"]])
    thread.start()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (sources and (sources[0].stats.in_flight or "").endswith("@1")):
            time.sleep(0.05)
        assert sources and sources[0].stats.in_flight, "the inference message never started"
        broker.kill()  # mid-message: its detections cannot reach the Kafka sink
        time.sleep(3.0)
        broker.start()
        thread.join(180)
        assert not thread.is_alive(), "the stream did not finish after the broker came back"
    finally:
        for source in sources:
            source.stop("test over")
        thread.join(30)
    assert codes == [0]
    assert sources[0].stats.outages >= 1  # the source saw the broker go and come back
    assert committed_offset(broker.bootstrap, "outage", "live") == 2
    files = read_detections(pipe.live_paths()["detections"])
    sent = {dict(r.headers)["event_id"].decode() for r in read_topic(broker.bootstrap, "found")}
    assert len(files) and files["event_id"].is_unique
    assert sent == set(files["event_id"])  # every detection reached the topic (repeats allowed, none lost)
