"""Crashes and outages of the streaming service, on real components: nothing lost, nothing twice.

- a user actor killed mid-stream is restarted by Ray and restores its users' rolling windows
  from their checkpoints: the windows end as if nothing happened, and the same message sent
  again counts no row twice;
- the whole ``dfp-ray stream`` process, SIGKILLed after a message's outputs are durable but
  before its offset is committed (twice: after a streaming training, after an inference), and
  started again, resumes its run and its committed offset: the detections file ends with the
  batch run's rows, each once, and no window row or model is counted twice;
- the broker stopped and started again while a message is in flight (topics and offsets kept
  in an S3-protocol server): the message is retried until its detections reach the Kafka sink,
  then committed, and the stream goes on.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import yaml

from dfp_ray.messages import parse_control_messages
from dfp_ray.pipeline.file_batcher import plan_batches
from dfp_ray.pipeline.file_to_df import load_files
from dfp_ray.pipeline.rolling_window import RollingWindow
from dfp_ray.registry import ModelRegistry
from dfp_ray.row_keys import fill_event_ids
from dfp_ray.runner import Pipeline, run
from dfp_ray.schemas import load_schema, map_fields
from dfp_ray.streaming.publisher import publish_files
from dfp_ray.streaming.service import FAULT_ENV, resume_or_start, state_path

try:
    from tests.kafka_broker import Broker, committed_offset, kafka_broker, read_topic  # noqa: F401 - fixture
    from tests.s3_server import running_s3_server
    from tests.stream_helpers import make_cfg, make_data, message, read_detections, write_doc
except ImportError:
    from kafka_broker import Broker, committed_offset, kafka_broker, read_topic  # noqa: F401 - fixture
    from s3_server import running_s3_server
    from stream_helpers import make_cfg, make_data, message, read_detections, write_doc

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))


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


def test_a_killed_user_actor_restores_its_windows_and_counts_nothing_twice(ray_session, docs, tmp_path):
    cfg = make_cfg(tmp_path)
    expected = expected_windows(cfg, docs["stream_train"])
    pipe = Pipeline(cfg)
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
    try:
        first = run(cfg, [str(docs["stream_train"])], pipeline=pipe, progress=False)
        thread.join(5)
        assert killed, "the actor was never killed"
        assert ray.get(pipe.user_actors[victim].pid.remote()) != pids[victim]  # restarted by Ray
        again = run(cfg, [str(docs["stream_train"])], pipeline=pipe, progress=False)  # the same rows once more
    finally:
        pipe.shutdown()
    assert first.ok and again.ok, (first.rejections, again.rejections)
    registry = ModelRegistry.from_config(cfg)
    for user, want in expected.items():
        got = checkpoint(cfg, user)
        assert sorted(got.rows["event_id"]) == sorted(want.rows["event_id"]), user
        assert (got.new_since_emit, got.emits) == (want.new_since_emit, want.emits), (user, killed)
        assert len(registry.versions("duo", user)) == want.emits, (user, killed)  # no model trained twice
    second = [r for d in again.messages_detail for r in d.trained + d.skipped_users if not r.generic]
    assert second and all(r.window_added == 0 and not r.trained for r in second)


# ------------------------------------------------------------------------ the whole process
class StreamProcess:
    """``dfp-ray stream`` in a process group of its own, stopped by PID."""

    def __init__(self, cfg_path: Path, bootstrap: str, log: Path, *extra: str, fault: int = 0):
        # It joins the test's Ray cluster, as a `ray job submit` entrypoint joins its cluster.
        env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0",
                   RAY_ADDRESS=ray.get_runtime_context().gcs_address)
        env.pop(FAULT_ENV, None)
        if fault:
            env[FAULT_ENV] = str(fault)
        self.log = log
        command = [sys.executable, "-m", "dfp_ray.cli", "stream", "--config", str(cfg_path), "--bootstrap-servers",
                   bootstrap, "--input-topic", "ctl", "--group-id", "killed", "--poll-interval", "200ms", *extra]
        with open(log, "ab") as out:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the stream did not exit within {timeout:.0f}s:\n{self.log.read_text()[-3000:]}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def test_sigkill_between_output_and_commit_then_restart_loses_and_duplicates_nothing(
        ray_session, kafka_broker, docs, tmp_path):
    reference = run(make_cfg(tmp_path / "batch"), [str(docs["stream_train"]), str(docs["infer"])], progress=False)
    assert reference.ok, reference.rejections
    want = read_detections(reference.detections_path)

    cfg = make_cfg(tmp_path / "stream")
    cfg_path = tmp_path / "stream.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True, exclude={"kafka", "kafka_sink"})))
    publish_files(kafka_broker.bootstrap, "ctl", [docs["stream_train"], docs["infer"]])
    log = tmp_path / "stream.log"

    # 1: killed once the streaming training is durable (windows saved, models registered), before its commit
    assert StreamProcess(cfg_path, kafka_broker.bootstrap, log, fault=1).wait() == -signal.SIGKILL
    assert committed_offset(kafka_broker.bootstrap, "killed", "ctl") is None
    run_id = json.loads(state_path(cfg.state_path, "duo", "killed").read_text())["run_id"]
    users = sorted(want["username"].unique())
    windows = {u: checkpoint(cfg, u) for u in users}
    registry = ModelRegistry.from_config(cfg)
    versions = {u: len(registry.versions("duo", u)) for u in users}

    # 2: the training comes again (nothing counted twice), then the inference; killed before its commit
    assert StreamProcess(cfg_path, kafka_broker.bootstrap, log, fault=2).wait() == -signal.SIGKILL
    assert committed_offset(kafka_broker.bootstrap, "killed", "ctl") == 1
    for u in users:
        again = checkpoint(cfg, u)
        assert (sorted(again.rows["event_id"]), again.new_since_emit) == (
            sorted(windows[u].rows["event_id"]), windows[u].new_since_emit), u
        assert len(registry.versions("duo", u)) == versions[u], u
    published = Path(cfg.output.directory) / "dfp_detections_duo.csv"
    written = read_detections(published)
    assert len(written) == len(want) and written["event_id"].is_unique

    # 3: a clean restart: the inference comes again and writes nothing twice
    assert StreamProcess(cfg_path, kafka_broker.bootstrap, log, "--stop-after", "1").wait() == 0
    assert committed_offset(kafka_broker.bootstrap, "killed", "ctl") == 2
    final = read_detections(published)
    assert final["event_id"].tolist() == want["event_id"].tolist(), log.read_text()[-3000:]
    pd.testing.assert_series_equal(final["mean_abs_z"], want["mean_abs_z"], rtol=1e-6)
    assert json.loads(state_path(cfg.state_path, "duo", "killed").read_text())["run_id"] == run_id  # one run
    assert (Path(cfg.output.directory) / "runs" / run_id / "dfp_detections_duo.csv").samefile(published)


@pytest.mark.kafka
@pytest.mark.s3
def test_a_broker_restart_mid_message_delays_the_commit_until_the_kafka_sink_has_every_row(
        ray_session, docs, tmp_path):
    from dfp_ray.streaming.service import run_stream

    with running_s3_server() as endpoint:
        broker = Broker(s3_endpoint=endpoint).start()
        try:
            cfg = make_cfg(tmp_path, broker.bootstrap, **{
                "kafka.input_topics": ["live"], "kafka.group_id": "outage", "kafka.stop_after": 2,
                "kafka.handler_attempts": 20, "kafka_sink.topic": "found", "kafka_sink.flush_timeout": "3s"})
            state, _ = resume_or_start(cfg)
            pipe = Pipeline(cfg, live_run_id=state.run_id)
            sources, codes = [], []
            thread = threading.Thread(target=lambda: codes.append(run_stream(
                cfg, pipeline=pipe, handle_signals=False, on_start=sources.append)), daemon=True)
            try:
                publish_files(broker.bootstrap, "live", [docs["train"], docs["infer"]])
                thread.start()
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline and not (sources and (sources[0].stats.in_flight or "").endswith("@1")):
                    time.sleep(0.05)
                assert sources and sources[0].stats.in_flight, "the inference message never started"
                broker.kill()  # mid-message: its detections cannot reach the Kafka sink
                time.sleep(3.0)
                broker.start()
                thread.join(180)
                assert not thread.is_alive(), "the stream did not finish after the broker came back"
                assert codes == [0]
                assert committed_offset(broker.bootstrap, "outage", "live") == 2
                files = read_detections(pipe.live_paths()["detections"])
                sent = {dict(r.headers)["event_id"].decode() for r in read_topic(broker.bootstrap, "found")}
            finally:
                for source in sources:
                    source.stop("test over")
                thread.join(30)
                pipe.shutdown()
        finally:
            broker.close()
    assert len(files) and files["event_id"].is_unique
    assert sent == set(files["event_id"])  # every detection reached the topic (repeats allowed, none lost)
