"""Brokers unavailable at start and mid-stream: the source waits with backoff and resumes, losing nothing.

The broker keeps its topics and committed offsets in an S3-protocol server (moto on loopback),
so stopping and starting it again is a real broker restart, not a fresh broker.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from dfp_ray.streaming import HandleResult, KafkaConfig, KafkaControlSource
from dfp_ray.streaming.publisher import publish_files

try:
    from tests.kafka_broker import Broker, committed_offset
    from tests.s3_server import running_s3_server
except ImportError:
    from kafka_broker import Broker, committed_offset
    from s3_server import running_s3_server

pytestmark = [pytest.mark.kafka, pytest.mark.s3]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_source_waits_for_the_brokers_and_resumes_after_a_restart(tmp_path, caplog):
    seen: list[str] = []

    def handler(messages, origin):
        seen.append(origin.id)
        return HandleResult(events=1)

    def publish(*names: str) -> None:
        paths = []
        for name in names:
            path = tmp_path / f"{name}.json"
            path.write_text(json.dumps({"inputs": [{"tasks": [
                {"type": "load", "properties": {"files": [f"data/{name}/*.json"]}},
                {"type": "inference", "properties": {}}]}]}))
            paths.append(path)
        publish_files(broker.bootstrap, "live", paths, timeout_s=10)

    caplog.set_level(logging.INFO, logger="dfp_ray.streaming")
    with running_s3_server() as endpoint:
        broker = Broker(s3_endpoint=endpoint)  # not started yet: unavailable at start
        cfg = KafkaConfig(bootstrap_servers=broker.bootstrap, input_topics=["live"], group_id="g-live",
                          poll_interval="200ms", retry_backoff_initial="100ms", retry_backoff_max="1s",
                          request_timeout="2s")
        source = KafkaControlSource(cfg, handler, handle_signals=False)
        results = []
        thread = threading.Thread(target=lambda: results.append(source.run()), daemon=True)
        try:
            cpu_start = time.process_time()
            thread.start()
            time.sleep(1.0)
            assert source.stats.state == "connecting" and not seen
            broker.start()
            publish("m0", "m1")
            wait_for(lambda: source.stats.committed == 2, 30, "the first two messages")

            broker.kill()
            wait_for(lambda: source.stats.state == "reconnecting", 20, "the source to notice the broker is gone")
            time.sleep(3.0)  # down for a while: the source must wait, not spin
            cpu_outage = time.process_time() - cpu_start
            broker.start()
            publish("m2", "m3")
            wait_for(lambda: source.stats.committed == 4, 60, "the messages published after the restart")
            assert committed_offset(broker.bootstrap, "g-live", "live") == 4
        finally:
            source.stop()
            thread.join(timeout=30)
            broker.close()

    assert not thread.is_alive()
    stats = results[0]
    assert seen == ["kafka:live/0@0", "kafka:live/0@1", "kafka:live/0@2", "kafka:live/0@3"]
    assert (stats.committed, stats.outages, stats.exit_code) == (4, 1, 0)
    # About 5 s of waiting for brokers (1 s before the first start, 3+ s down): backoff, not a busy loop.
    assert cpu_outage < 2.0, f"{cpu_outage:.2f}s of CPU while the brokers were down"
    lines = [r.getMessage() for r in caplog.records if r.name == "dfp_ray.streaming"]
    for prefix in ("kafka unreachable", "kafka connected", "kafka lost", "kafka back"):
        assert sum(line.startswith(prefix) for line in lines) == 1, (prefix, lines)
