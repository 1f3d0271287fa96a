"""The whole ``dfp-ray stream`` process SIGKILLed between output and commit, then started again.

One Kafka message holds a streaming training and an inference. The first process handles it
completely (windows checkpointed, models registered, every score and detection written) and
is SIGKILLed before its commit. The restarted process (the same group, so the same stream run)
gets the message again: it counts no window row twice, trains no model twice, writes no row
twice, and, sent SIGTERM while the message is in flight, finishes it, commits and exits 0. Every scored row is kept (``output.write_all_scores``), so "nothing lost"
is checked against the inference files themselves: each event scored exactly once, and the
detections are exactly the scored rows past the threshold.

The processes join this module's Ray cluster, as a ``ray job submit`` entrypoint joins its
cluster (``RAY_ADDRESS``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import yaml

from dfp_ray.pipeline.rolling_window import RollingWindow
from dfp_ray.registry import ModelRegistry
from dfp_ray.registry.names import safe_user_name
from dfp_ray.streaming.service import FAULT_ENV, state_path

try:
    from tests.kafka_broker import committed_offset, kafka_broker  # noqa: F401 - fixture
    from tests.stream_helpers import make_cfg, make_data, message
except ImportError:
    from kafka_broker import committed_offset, kafka_broker  # noqa: F401 - fixture
    from stream_helpers import make_cfg, make_data, message

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


class StreamProcess:
    """``dfp-ray stream`` in a process group of its own, stopped by PID."""

    def __init__(self, cfg_path: Path, bootstrap: str, log: Path, *extra: str, fault: int = 0):
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

    def wait_for_log(self, text: str, *, after: int = 0, timeout: float = 400) -> None:
        """Until ``text`` is in the log more than ``after`` times (the process must stay up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.read_text(errors="replace").count(text) > after:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} in the stream's log:\n{self.log.read_text()[-3000:]}")

    def wait(self, timeout: float = 400) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the stream did not exit within {timeout:.0f}s:\n{self.log.read_text()[-3000:]}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def windows(cfg, users: list[str]) -> dict[str, tuple]:
    out = {}
    for user in users:
        win = RollingWindow.load(f"{cfg.windows_dir}/duo/{safe_user_name(user)}.parquet", cfg.window, "timestamp",
                                 "event_id")
        assert win is not None, user
        out[user] = (sorted(win.rows["event_id"]), win.new_since_emit, win.emits)
    return out


def test_sigkill_between_output_and_commit_then_restart_loses_and_duplicates_nothing(
        ray_session, kafka_broker, tmp_path):
    from kafka import KafkaProducer

    from dfp_ray.streaming.clients import ensure_topics

    data = make_data(tmp_path / "data")
    cfg = make_cfg(tmp_path / "stream", **{"output.write_all_scores": True})
    cfg_path = tmp_path / "stream.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True, exclude={"kafka", "kafka_sink"})))
    train, infer = str(data / "duo" / "training" / "*.json"), str(data / "duo" / "inference" / "*.json")
    ensure_topics([kafka_broker.bootstrap], ["ctl"], timeout_s=30)  # one partition: offsets are easy to check
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    doc = {"inputs": [message(train, "training", "streaming"), message(infer, "inference")]}
    producer.send("ctl", json.dumps(doc).encode()).get(timeout=30)  # one Kafka message, two control messages
    producer.close(timeout=10)
    log = tmp_path / "stream.log"

    first = StreamProcess(cfg_path, kafka_broker.bootstrap, log, fault=1)
    try:
        assert first.wait() == -signal.SIGKILL, log.read_text()[-3000:]
    finally:
        first.kill()
    assert committed_offset(kafka_broker.bootstrap, "killed", "ctl") is None
    run_id = json.loads(state_path(cfg.state_path, "duo", "killed").read_text())["run_id"]
    out = Path(cfg.output.directory)
    scores_before = pd.read_csv(out / "dfp_scores_duo.csv", dtype={"event_id": str})
    detections_before = pd.read_csv(out / "dfp_detections_duo.csv", dtype={"event_id": str})
    users = sorted(scores_before["username"].unique())
    windows_before = windows(cfg, users)
    registry = ModelRegistry.from_config(cfg)
    versions_before = {u: len(registry.versions("duo", u)) for u in [*users, None]}
    assert sum(w[2] for w in windows_before.values()) > 0  # some windows emitted (and trained)

    # The restart gets the message again; a SIGTERM while it is in flight lets it finish and commit.
    second = StreamProcess(cfg_path, kafka_broker.bootstrap, log)
    try:
        second.wait_for_log("handling kafka:ctl/0@0", after=log.read_text().count("handling kafka:ctl/0@0"))
        os.kill(second.process.pid, signal.SIGTERM)
        assert second.wait() == 0, log.read_text()[-3000:]
    finally:
        second.kill()
    assert "SIGTERM: finishing the message in flight" in log.read_text()
    assert committed_offset(kafka_broker.bootstrap, "killed", "ctl") == 1
    assert json.loads(state_path(cfg.state_path, "duo", "killed").read_text())["run_id"] == run_id  # one run
    assert windows(cfg, users) == windows_before  # no window row counted twice
    assert {u: len(registry.versions("duo", u)) for u in [*users, None]} == versions_before  # no model twice

    scores = pd.read_csv(out / "dfp_scores_duo.csv", dtype={"event_id": str})
    detections = pd.read_csv(out / "dfp_detections_duo.csv", dtype={"event_id": str})
    events = [r["txid"] for p in sorted((data / "duo" / "inference").glob("*.json")) for r in json.loads(p.read_text())]
    assert sorted(scores["event_id"]) == sorted(events)  # every event scored, once
    assert scores.equals(scores_before) and detections.equals(detections_before)  # nothing written again
    flagged = scores.loc[scores["anomaly_score"] > 1.0, "event_id"]  # past each row's own threshold
    assert sorted(detections["event_id"]) == sorted(flagged) and len(flagged) > 0
    assert (out / "runs" / run_id / "dfp_detections_duo.csv").samefile(out / "dfp_detections_duo.csv")
