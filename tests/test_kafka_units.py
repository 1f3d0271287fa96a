"""The Kafka layer's pieces that need no broker: options, payload checks, splitting, progress, backoff."""

from __future__ import annotations

import argparse
import io
import json
import logging

import pytest
from pydantic import ValidationError

from dfp_ray.streaming import KafkaConfig, add_kafka_source_arguments, kafka_config_from_args, split_document
from dfp_ray.streaming.backoff import Backoff, BrokerState
from dfp_ray.streaming.progress import ProgressDisplay, StreamStats
from dfp_ray.streaming.validation import check_value


def message(kind: str, glob: str = "data/*.json", data_type: str = "payload") -> dict:
    return {"tasks": [{"type": "load", "properties": {"files": [glob]}}, {"type": kind, "properties": {}}],
            "metadata": {"data_type": data_type}}


def doc(*inputs: dict) -> bytes:
    return json.dumps({"inputs": list(inputs)}).encode()


def check(value: bytes | None, **kw):
    kw.setdefault("max_bytes", 4096)
    kw.setdefault("max_depth", 16)
    return check_value(value, "kafka:t/0@7", **kw)


def test_command_line_options_override_the_config_file_and_unset_ones_leave_it():
    parser = argparse.ArgumentParser()
    add_kafka_source_arguments(parser)
    base = KafkaConfig(bootstrap_servers="broker:9092", input_topics=["from-file"], group_id="file-group",
                       accept_kinds=["training"])
    args = parser.parse_args(["--input-topic", "a", "--input-topic", "b", "--poll-interval", "500ms",
                              "--disable-commit", "--disable-pre-filtering"])
    cfg = kafka_config_from_args(args, base)
    assert cfg.input_topics == ["a", "b"] and cfg.poll_interval_s == 0.5
    assert (cfg.bootstrap_servers, cfg.group_id) == ("broker:9092", "file-group")
    assert cfg.disable_commit and cfg.filter_sets() == (None, None)
    assert kafka_config_from_args(parser.parse_args([]), base).filter_sets() == ({"training"}, None)
    with pytest.raises(ValidationError, match="not a duration"):
        kafka_config_from_args(parser.parse_args(["--poll-interval", "1 fortnight"]), base)


@pytest.mark.parametrize("field,value,words", [
    ("bootstrap_servers", "localhost", "HOST:PORT"),
    ("input_topics", ["bad topic"], "not a Kafka topic name"),
    ("input_topics", ["a", "a"], "listed twice"),
    ("dead_letter_topic", "t", "is an input topic"),
    ("retry_backoff_max", "10ms", "must not exceed"),
    ("fetch_max_wait_ms", 20_000, "below request_timeout"),
])
def test_config_errors_say_what_is_wrong(field, value, words):
    data = {"input_topics": ["t"], field: value}
    with pytest.raises(ValidationError, match=words):
        KafkaConfig(**data)


def test_dead_letter_topic_names_follow_the_template():
    assert KafkaConfig(input_topics=["ctl"]).dead_letter_topic_for("ctl") == "ctl.dlq"
    assert KafkaConfig(input_topics=["ctl"], dead_letter_topic="dead-{topic}").dead_letter_topic_for("ctl") == "dead-ctl"
    assert KafkaConfig(input_topics=["a", "b"], dead_letter_topic="all-dead").dead_letter_topic_for("b") == "all-dead"


def test_payload_checks_reject_with_reasons_and_keep_the_valid_inputs():
    ok = check(doc(message("training"), message("inference")))
    assert [m.message_id for m in ok.messages] == ["kafka:t/0@7#inputs[0]", "kafka:t/0@7#inputs[1]"]
    assert not ok.rejections

    assert "over the limit of 4,096" in check(b"{" + b" " * 5000 + b"}").rejections[0].reason
    deep = check(b'{"inputs": ' + b"[" * 30 + b"]" * 30 + b"}")
    assert deep.whole_document and "nests 31 levels deep" in deep.rejections[0].reason
    hostile = check(b"[" * 100_000 + b"]" * 100_000, max_bytes=1_000_000)
    assert "nests too deeply" in hostile.rejections[0].reason or "levels deep" in hostile.rejections[0].reason
    assert "empty message" in check(None).rejections[0].reason
    assert "invalid JSON" in check(b"{'single': 'quotes'}").rejections[0].reason
    assert "not UTF-8" in check(b'{"inputs": ["\xff"]}').rejections[0].reason

    partly = check(doc(message("training"), {"tasks": [{"type": "load", "properties": {"files": []}}]}))
    assert [m.message_id for m in partly.messages] == ["kafka:t/0@7#inputs[0]"]
    assert [r.message_id for r in partly.rejections] == ["kafka:t/0@7#inputs[1]"]
    assert not partly.whole_document


def test_pre_filtering_keeps_the_accepted_kinds_and_data_types():
    value = doc(message("training"), message("inference"), message("inference", data_type="streaming"))
    kept = check(value, kinds={"inference"}, data_types={"payload"})
    assert [m.message_id for m in kept.messages] == ["kafka:t/0@7#inputs[1]"]
    assert [m.message_id for m in kept.skipped] == ["kafka:t/0@7#inputs[0]", "kafka:t/0@7#inputs[2]"]
    kinds, data_types = KafkaConfig(accept_kinds=["inference"], disable_pre_filtering=True).filter_sets()
    assert len(check(value, kinds=kinds, data_types=data_types).messages) == 3


def test_documents_split_into_one_document_per_input():
    a, b = message("training", "a/*"), message("inference", "b/*")
    assert [json.loads(p) for p in split_document(doc(a, b))] == [{"inputs": [a]}, {"inputs": [b]}]
    assert [json.loads(p) for p in split_document(json.dumps(a).encode())] == [{"inputs": [a]}]
    assert [json.loads(p) for p in split_document(json.dumps([a, b]).encode())] == [{"inputs": [a]}, {"inputs": [b]}]
    assert split_document(b"{not json") is None
    assert split_document(json.dumps({"inputs": []}).encode()) is None


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_live_line_on_a_terminal_and_key_value_lines_otherwise(caplog):
    stats = StreamStats(consumed=12, committed=11, dead_lettered=1, lag=3, events=4800, detections=7,
                        state="connected", in_flight="kafka:t/0@11")
    terminal = FakeTerminal()
    live = ProgressDisplay(stream=terminal)
    live.update(stats, force=True)
    line = terminal.getvalue()
    assert line.startswith("\r\x1b[K") and "\n" not in line
    for part in ("kafka connected", "consumed 12 committed 11", "dlq 1", "lag 3", "detections 7",
                 "in flight kafka:t/0@11"):
        assert part in line

    with caplog.at_level(logging.INFO, logger="dfp_ray.streaming"):
        plain = ProgressDisplay(stream=io.StringIO(), interval_s=0.0)
        plain.update(stats)
        plain.close(StreamStats(consumed=2, committed=2, stop_reason="signal"))
    progress, stopped = [r.getMessage() for r in caplog.records]
    fields = dict(item.split("=", 1) for item in progress.removeprefix("stream progress ").split())
    assert fields["consumed"] == "12" and fields["committed"] == "11" and fields["lag"] == "3"
    assert fields["detections"] == "7" and fields["in_flight"] == "kafka:t/0@11" and "events_per_s" in fields
    assert stopped.startswith("stream stopped") and "reason=signal" in stopped and "committed=2" in stopped


def test_exit_code_is_0_only_for_a_clean_stop_with_everything_committed():
    assert StreamStats(stop_reason="signal").exit_code == 0
    assert StreamStats(stop_reason="stop_after").exit_code == 0
    assert StreamStats(stop_reason="signal", uncommitted="kafka:t/0@3").exit_code == 1
    assert StreamStats(stop_reason="handler_failed").exit_code == 1


def test_broker_state_logs_one_line_per_change(caplog):
    state = BrokerState("127.0.0.1:9")
    with caplog.at_level(logging.INFO, logger="dfp_ray.streaming"):
        for _ in range(5):
            state.failed("connection refused", 30)
        state.ok()
        state.ok()
        for _ in range(5):
            state.failed("connection refused", 30)
        state.ok()
    lines = [r.getMessage().split(":")[0] for r in caplog.records]
    assert lines == ["kafka unreachable", "kafka connected", "kafka lost", "kafka back"]
    assert state.outages == 1
    backoff = Backoff(0.1, 1.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
