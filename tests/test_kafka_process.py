"""A real consumer process (``python -m dfp_ray.streaming``): SIGTERM and SIGKILL with a message in flight.

The process records each control message as a JSON line (fsync'd) after ``--work-seconds``,
then the source commits. SIGTERM must let the message in flight finish and be committed
(exit 0) and not start the next; SIGKILL loses the message in flight only until the restart,
which processes it again: each message ends up recorded exactly once, in order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dfp_ray.streaming.publisher import publish_files

try:
    from tests.kafka_broker import committed_offset, kafka_broker  # noqa: F401 - fixture
except ImportError:
    from kafka_broker import committed_offset, kafka_broker  # noqa: F401 - fixture

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[1]


def publish(broker, topic: str, tmp_path: Path, count: int) -> None:
    inputs = [{"tasks": [{"type": "load", "properties": {"files": [f"data/{i}/*.json"]}},
                         {"type": "inference", "properties": {}}]} for i in range(count)]
    path = tmp_path / f"{topic}.json"
    path.write_text(json.dumps({"inputs": inputs}))
    publish_files(broker.bootstrap, topic, [path])


class Consumer:
    """``python -m dfp_ray.streaming`` in its own process group, stderr to a file; stopped by PID."""

    def __init__(self, broker, topic: str, group: str, out: Path, log: Path, *extra: str):
        self.log = log
        command = [sys.executable, "-m", "dfp_ray.streaming", "--bootstrap-servers", broker.bootstrap,
                   "--input-topic", topic, "--group-id", group, "--poll-interval", "200ms", "--out", str(out),
                   *extra]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(log, "ab") as err:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged within {timeout:.0f}s; log:\n{self.log.read_text()[-3000:]}")

    def signal(self, sig: int) -> None:
        os.kill(self.process.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def recorded(out: Path) -> list[str]:
    if not out.exists():
        return []
    return [json.loads(line)["origin"] for line in out.read_text().splitlines() if line]


def test_sigterm_finishes_and_commits_the_message_in_flight_then_exits_0(kafka_broker, tmp_path):
    publish(kafka_broker, "term", tmp_path, 2)
    out, log = tmp_path / "out.jsonl", tmp_path / "consumer.log"
    consumer = Consumer(kafka_broker, "term", "g-term", out, log, "--work-seconds", "2")
    try:
        consumer.wait_for_log("handling kafka:term/0@0")
        consumer.signal(signal.SIGTERM)
        assert consumer.wait() == 0
    finally:
        consumer.close()
    text = log.read_text()
    assert "SIGTERM: finishing the message in flight" in text
    assert "stream stopped" in text and "reason=signal" in text
    assert recorded(out) == ["kafka:term/0@0"]  # finished, and the next one not started
    assert committed_offset(kafka_broker.bootstrap, "g-term", "term") == 1


def test_sigkill_in_flight_then_restart_processes_every_message_once(kafka_broker, tmp_path):
    publish(kafka_broker, "kill", tmp_path, 3)
    out, log = tmp_path / "out.jsonl", tmp_path / "consumer.log"
    first = Consumer(kafka_broker, "kill", "g-kill", out, log, "--work-seconds", "1.5")
    try:
        first.wait_for_log("handling kafka:kill/0@1")  # 0 is recorded and committed, 1 is in flight
        first.signal(signal.SIGKILL)
        first.wait()
    finally:
        first.close()
    assert recorded(out) == ["kafka:kill/0@0"]
    assert committed_offset(kafka_broker.bootstrap, "g-kill", "kill") == 1

    second = Consumer(kafka_broker, "kill", "g-kill", out, log, "--stop-after", "2")
    try:
        assert second.wait(timeout=60) == 0
    finally:
        second.close()
    assert recorded(out) == ["kafka:kill/0@0", "kafka:kill/0@1", "kafka:kill/0@2"]
    assert committed_offset(kafka_broker.bootstrap, "g-kill", "kill") == 3
