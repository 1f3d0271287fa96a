"""The Kafka control-message source against a real broker (Tansu on loopback).

Each test uses its own topic and consumer group on one broker per module. A source run ends
by ``stop_after`` (or a handler failure), with a timer that stops it after 60 s at worst.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from dfp_ray.messages import Rejection
from dfp_ray.streaming import HandleResult, KafkaConfig, KafkaControlSource, RejectMessage
from dfp_ray.streaming.clients import ensure_topics
from dfp_ray.streaming.publisher import publish_files

try:
    from tests.kafka_broker import committed_offset, kafka_broker, read_topic  # noqa: F401 - fixture
except ImportError:
    from kafka_broker import committed_offset, kafka_broker, read_topic  # noqa: F401 - fixture

pytestmark = pytest.mark.kafka


def message(kind: str, glob: str, data_type: str = "payload") -> dict:
    return {"tasks": [{"type": "load", "properties": {"files": [glob]}}, {"type": kind, "properties": {}}],
            "metadata": {"data_type": data_type}}


def write_doc(path: Path, *inputs: dict) -> Path:
    path.write_text(json.dumps({"inputs": list(inputs)}))
    return path


class Recorder:
    """A handler that records what it was given; ``plan`` maps an offset to what to do."""

    def __init__(self, plan: dict | None = None):
        self.calls: list[tuple[str, list[str], list[str], list[list[str]]]] = []
        self.plan = dict(plan or {})
        self.attempts: dict[int, int] = {}

    def handle(self, messages, origin):
        self.attempts[origin.offset] = self.attempts.get(origin.offset, 0) + 1
        action = self.plan.get(origin.offset)
        if callable(action):
            outcome = action(messages, self.attempts[origin.offset])
            if outcome is not None:
                return outcome
        self.calls.append((origin.id, [m.message_id for m in messages], [m.kind for m in messages],
                           [m.files for m in messages]))
        return HandleResult(events=100 * len(messages), detections=len(messages))


def run_source(cfg: KafkaConfig, handler, timeout: float = 60.0):
    source = KafkaControlSource(cfg, handler, handle_signals=False)
    guard = threading.Timer(timeout, source.stop, args=("test timeout",))
    guard.start()
    try:
        return source.run()
    finally:
        guard.cancel()


def config(broker, topic: str, group: str, **extra) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=broker.bootstrap, input_topics=[topic], group_id=group,
                       poll_interval="200ms", retry_backoff_initial="50ms", retry_backoff_max="200ms", **extra)


def test_messages_reach_the_handler_in_order_and_committed_ones_are_not_delivered_again(
        kafka_broker, tmp_path, caplog):
    first = write_doc(tmp_path / "a.json", message("training", "data/a/*.json"), message("inference", "data/b/*.json"))
    second = write_doc(tmp_path / "b.json", message("inference", "data/c/*.json"))
    sent = publish_files(kafka_broker.bootstrap, "orders", [first, second])
    assert [(p.index, p.offset) for p in sent] == [(0, 0), (1, 1), (0, 2)]

    handler = Recorder()
    with caplog.at_level(logging.INFO, logger="dfp_ray.streaming"):
        stats = run_source(config(kafka_broker, "orders", "g-orders", stop_after=3), handler)
    assert [c[0] for c in handler.calls] == ["kafka:orders/0@0", "kafka:orders/0@1", "kafka:orders/0@2"]
    assert [c[1] for c in handler.calls] == [["kafka:orders/0@0#inputs[0]"], ["kafka:orders/0@1#inputs[0]"],
                                             ["kafka:orders/0@2#inputs[0]"]]
    assert [c[2] for c in handler.calls] == [["training"], ["inference"], ["inference"]]
    assert [c[3] for c in handler.calls] == [[["data/a/*.json"]], [["data/b/*.json"]], [["data/c/*.json"]]]
    assert (stats.consumed, stats.committed, stats.events, stats.detections) == (3, 3, 300, 3)
    assert stats.exit_code == 0 and stats.stop_reason == "stop_after"
    assert committed_offset(kafka_broker.bootstrap, "g-orders", "orders") == 3
    lines = [r.getMessage() for r in caplog.records]
    assert sum(line.startswith("kafka connected") for line in lines) == 1
    assert any(line.startswith("stream stopped") and "committed=3" in line and "detections=3" in line
               for line in lines)

    # A restart of the same group starts after the last commit: only the new message.
    later = write_doc(tmp_path / "c.json", message("inference", "data/d/*.json"))
    publish_files(kafka_broker.bootstrap, "orders", [later])
    handler = Recorder()
    stats = run_source(config(kafka_broker, "orders", "g-orders", stop_after=1), handler)
    assert [c[0] for c in handler.calls] == ["kafka:orders/0@3"]
    assert committed_offset(kafka_broker.bootstrap, "g-orders", "orders") == 4


def test_a_message_whose_handler_failed_is_not_committed_and_is_delivered_again(kafka_broker, tmp_path):
    doc = write_doc(tmp_path / "m.json", *(message("inference", f"data/{i}/*.json") for i in range(3)))
    publish_files(kafka_broker.bootstrap, "crash", [doc])

    def crash(messages, attempt):
        raise RuntimeError("the cluster went away")

    handler = Recorder({1: crash})
    stats = run_source(config(kafka_broker, "crash", "g-crash", handler_attempts=1), handler)
    assert [c[0] for c in handler.calls] == ["kafka:crash/0@0"]
    assert stats.stop_reason == "handler_failed" and stats.exit_code == 1
    assert stats.uncommitted == "kafka:crash/0@1"
    assert committed_offset(kafka_broker.bootstrap, "g-crash", "crash") == 1
    assert read_topic(kafka_broker.bootstrap, "crash.dlq") == []  # stop policy: not dead-lettered

    # Started again: the uncommitted message comes first, then the rest; the committed one never.
    handler = Recorder()
    stats = run_source(config(kafka_broker, "crash", "g-crash", stop_after=2), handler)
    assert [c[0] for c in handler.calls] == ["kafka:crash/0@1", "kafka:crash/0@2"]
    assert stats.exit_code == 0
    assert committed_offset(kafka_broker.bootstrap, "g-crash", "crash") == 3


def headers(record) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


def test_invalid_messages_go_to_the_dead_letter_topic_with_reason_and_origin(kafka_broker):
    from kafka import KafkaProducer

    valid = message("training", "data/ok/*.json")
    mixed = {"tasks": [{"type": "load", "properties": {"files": ["x/*.json"]}}, {"type": "training"},
                       {"type": "inference"}]}
    payloads = [
        b"{not json",
        json.dumps({"inputs": [{"tasks": [{"type": "trainig"}]}]}).encode(),
        json.dumps({"inputs": [mixed]}).encode(),
        json.dumps({"inputs": [message("training", "x")]}).replace('["x"]', "[]").encode(),
        json.dumps({"inputs": [valid], "pad": "x" * 3000}).encode(),
        b"[" * 40 + b"]" * 40,
        None,
        json.dumps({"inputs": [valid, {"tasks": [{"type": "load", "properties": {"files": ["y"]}}],
                                       "metadata": {"data_type": "batch"}}]}).encode(),
        json.dumps({"inputs": [message("inference", "data/ok/*.json")]}).encode(),
    ]
    ensure_topics(kafka_broker.bootstrap, ["bad"], timeout_s=10)  # one partition (auto-created ones have more)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    try:
        for value in payloads:
            producer.send("bad", value=value, key=b"k1").get(timeout=10)
    finally:
        producer.close()

    handler = Recorder()
    stats = run_source(config(kafka_broker, "bad", "g-bad", stop_after=len(payloads), max_message_bytes=2048,
                              max_json_depth=16), handler)
    assert [c[1] for c in handler.calls] == [["kafka:bad/0@7#inputs[0]"], ["kafka:bad/0@8#inputs[0]"]]
    assert committed_offset(kafka_broker.bootstrap, "g-bad", "bad") == len(payloads)
    assert stats.dead_lettered == 8 and stats.exit_code == 0

    dead = read_topic(kafka_broker.bootstrap, "bad.dlq")
    found = {(h := headers(r))["dfp.dlq.message_id"]: (h, r) for r in dead}
    expected = {
        "kafka:bad/0@0": ("invalid JSON at line 1", "original"),
        "kafka:bad/0@1#inputs[0]": ("unknown task type 'trainig'", "input"),
        "kafka:bad/0@2#inputs[0]": ("must not mix training and inference", "input"),
        "kafka:bad/0@3#inputs[0]": ("no files", "input"),
        "kafka:bad/0@4": ("over the limit of 2,048", "omitted"),
        "kafka:bad/0@5": ("nests 40 levels deep", "original"),
        "kafka:bad/0@6": ("empty message", "omitted"),
        "kafka:bad/0@7#inputs[1]": ("'payload' or 'streaming'", "input"),
    }
    assert set(found) == set(expected)
    for message_id, (reason, payload) in expected.items():
        h, record = found[message_id]
        offset = message_id.split("@")[1].split("#")[0]
        assert reason in h["dfp.dlq.reason"], (message_id, h["dfp.dlq.reason"])
        assert (h["dfp.dlq.topic"], h["dfp.dlq.partition"], h["dfp.dlq.offset"]) == ("bad", "0", offset)
        assert h["dfp.dlq.stage"] == "parse" and h["dfp.dlq.payload"] == payload
        assert record.key == b"k1"
    assert found["kafka:bad/0@1#inputs[0]"][0]["dfp.dlq.field"] == "inputs[0].tasks[0].type"
    assert found["kafka:bad/0@0"][1].value == b"{not json"
    # A rejected input comes back alone, ready to be fixed and published again.
    assert json.loads(found["kafka:bad/0@7#inputs[1]"][1].value)["inputs"][0]["metadata"] == {"data_type": "batch"}


def test_handler_rejections_retries_and_failures(kafka_broker, tmp_path):
    doc = write_doc(tmp_path / "m.json", *(message("inference", f"data/{i}/*.json") for i in range(5)))
    publish_files(kafka_broker.bootstrap, "outcomes", [doc])

    def reject(messages, attempt):
        raise RejectMessage("no files match data/0/*.json", field="inputs[0].tasks[0].properties.files")

    def refuse(messages, attempt):
        return HandleResult(events=5, rejections=[Rejection.for_message(messages[0], "nothing to score")])

    def flaky(messages, attempt):
        if attempt < 3:
            raise ConnectionError(f"registry unreachable (attempt {attempt})")

    def broken(messages, attempt):
        raise RuntimeError("boom")

    handler = Recorder({0: reject, 1: refuse, 2: flaky, 3: broken})
    stats = run_source(config(kafka_broker, "outcomes", "g-outcomes", stop_after=5, handler_attempts=3,
                              on_handler_error="dead-letter"), handler)
    assert [c[0] for c in handler.calls] == ["kafka:outcomes/0@2", "kafka:outcomes/0@4"]
    assert handler.attempts == {0: 1, 1: 1, 2: 3, 3: 3, 4: 1}
    assert (stats.committed, stats.handler_errors, stats.dead_lettered, stats.exit_code) == (5, 5, 3, 0)
    assert committed_offset(kafka_broker.bootstrap, "g-outcomes", "outcomes") == 5

    dead = {headers(r)["dfp.dlq.offset"]: headers(r) for r in read_topic(kafka_broker.bootstrap, "outcomes.dlq")}
    assert set(dead) == {"0", "1", "3"}
    assert dead["0"]["dfp.dlq.stage"] == "pipeline" and "no files match" in dead["0"]["dfp.dlq.reason"]
    assert dead["0"]["dfp.dlq.field"] == "inputs[0].tasks[0].properties.files"
    assert dead["1"]["dfp.dlq.stage"] == "pipeline" and dead["1"]["dfp.dlq.reason"] == "nothing to score"
    assert dead["3"]["dfp.dlq.stage"] == "handler"
    assert dead["3"]["dfp.dlq.reason"] == "processing failed 3 time(s): RuntimeError: boom"


def test_pre_filtering_skips_messages_this_deployment_does_not_handle(kafka_broker, tmp_path):
    doc = write_doc(tmp_path / "m.json", message("training", "data/t/*.json"),
                    message("inference", "data/i/*.json"), message("inference", "data/s/*.json", "streaming"))
    publish_files(kafka_broker.bootstrap, "filtered", [doc])
    handler = Recorder()
    stats = run_source(config(kafka_broker, "filtered", "g-filtered", stop_after=3, accept_kinds=["inference"],
                              accept_data_types=["payload"]), handler)
    assert [c[0] for c in handler.calls] == ["kafka:filtered/0@1"]
    assert (stats.skipped, stats.committed, stats.dead_lettered) == (2, 3, 0)
    assert read_topic(kafka_broker.bootstrap, "filtered.dlq") == []
    assert committed_offset(kafka_broker.bootstrap, "g-filtered", "filtered") == 3


def test_a_message_longer_than_the_poll_interval_limit_keeps_the_consumer_in_its_group(kafka_broker, tmp_path,
                                                                                         caplog):
    doc = write_doc(tmp_path / "m.json", message("training", "data/a/*.json"), message("inference", "data/b/*.json"))
    publish_files(kafka_broker.bootstrap, "long", [doc])

    def slow(messages, attempt):
        threading.Event().wait(4.0)  # well past max_poll_interval_ms below

    handler = Recorder({0: slow})
    with caplog.at_level(logging.INFO, logger="dfp_ray.streaming"):
        stats = run_source(config(kafka_broker, "long", "g-long", stop_after=2, max_poll_interval_ms=1500), handler)
    assert handler.attempts == {0: 1, 1: 1}  # nothing delivered twice
    assert (stats.committed, stats.exit_code) == (2, 0)
    assert committed_offset(kafka_broker.bootstrap, "g-long", "long") == 2
    assert not any("could not commit" in r.getMessage() for r in caplog.records)


def test_a_running_stream_reads_a_published_message_within_a_fraction_of_a_second(kafka_broker, tmp_path):
    """Once the group has assigned the partition, a message waits for neither the poll interval (1 s
    here: how long an idle poll waits, not a delay for a message that is there) nor a long fetch."""
    topic, doc = "latency", write_doc(tmp_path / "d.json", message("inference", "data/a/*.json"))
    ensure_topics([kafka_broker.bootstrap], [topic], timeout_s=10)
    cfg = KafkaConfig(bootstrap_servers=kafka_broker.bootstrap, input_topics=[topic], group_id="latency",
                      poll_interval="1s", stop_after=4)
    waits: list[float] = []

    def handle(messages, origin):
        waits.append(time.time() - origin.timestamp_ms / 1000)

    source = KafkaControlSource(cfg, handle, handle_signals=False)

    def publish_when_assigned():
        if source.assigned.wait(30):
            publish_files(kafka_broker.bootstrap, topic, [doc, doc, doc, doc], interval_s=0.3)

    publisher = threading.Thread(target=publish_when_assigned, daemon=True)
    guard = threading.Timer(60, source.stop, args=("test timeout",))
    publisher.start()
    guard.start()
    try:
        stats = source.run()
    finally:
        guard.cancel()
    assert stats.committed == 4 and len(waits) == 4
    # ~0.03 s measured on an idle machine; 0.6 s leaves room for two shared cores
    assert max(waits) < 0.6, waits
    assert not source.assigned.is_set()  # revoked on close
