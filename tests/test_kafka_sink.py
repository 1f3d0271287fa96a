"""The Kafka detection sink against a real broker: one JSON message per row, keyed by user,
event id in a header, durable when ``publish`` returns, the same key and id when published again."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dfp_ray.streaming import KafkaDetectionSink, KafkaSinkConfig, SinkPublishError

try:
    from tests.kafka_broker import kafka_broker, read_topic, running_broker  # noqa: F401 - fixture
except ImportError:
    from kafka_broker import kafka_broker, read_topic, running_broker  # noqa: F401 - fixture

pytestmark = pytest.mark.kafka


def detections() -> pd.DataFrame:
    return pd.DataFrame({
        "event_id": ["e1", "e2", "e3"],
        "username": ["alice", "bob", "alice"],
        "timestamp": pd.to_datetime(["2022-08-30T01:02:03Z", "2022-08-30T04:05:06Z", "2022-08-31T00:00:00Z"]),
        "mean_abs_z": [2.5, 3.25, np.nan],
        "reason": ["new device", "new city", None],
    })


def test_rows_are_published_as_json_keyed_by_user_with_the_event_id_header(kafka_broker):
    sink = KafkaDetectionSink(kafka_broker.bootstrap, "detections", source="duo")
    with sink:
        assert sink.publish(detections()) == 3
        assert sink.publish(detections().iloc[:0]) == 0
        assert sink.publish(detections().iloc[[0]]) == 1  # published again (a redelivered message)

    records = read_topic(kafka_broker.bootstrap, "detections")
    assert len(records) == 4
    assert [r.key for r in records] == [b"alice", b"bob", b"alice", b"alice"]
    headers = [dict(r.headers) for r in records]
    assert [h["event_id"] for h in headers] == [b"e1", b"e2", b"e3", b"e1"]
    assert all(h["dfp.source"] == b"duo" and h["content-type"] == b"application/json" for h in headers)
    rows = [json.loads(r.value) for r in records]
    assert rows[0] == {"event_id": "e1", "username": "alice", "timestamp": "2022-08-30T01:02:03.000000Z",
                       "mean_abs_z": 2.5, "reason": "new device"}
    assert rows[2]["mean_abs_z"] is None and rows[2]["reason"] is None
    # The repeat is recognisable: same key, same event id, same row.
    assert (records[3].key, headers[3]["event_id"], rows[3]) == (records[0].key, headers[0]["event_id"], rows[0])
    # Consumers that keep one row per event id see each detection once.
    assert len({h["event_id"] for h in headers}) == 3


def test_rows_without_an_event_id_get_a_content_hash_that_is_stable(kafka_broker):
    rows = detections().drop(columns=["event_id"])
    sink = KafkaDetectionSink.from_config(KafkaSinkConfig(topic="detections-noid", bootstrap_servers=kafka_broker.bootstrap))
    with sink:
        sink.publish(rows)
        sink.publish(rows)
    ids = [dict(r.headers)["event_id"] for r in read_topic(kafka_broker.bootstrap, "detections-noid")]
    assert len(ids) == 6 and all(i.startswith(b"sha256:") for i in ids)
    assert ids[:3] == ids[3:] and len(set(ids[:3])) == 3


def test_publish_raises_when_the_broker_does_not_acknowledge():
    with running_broker() as broker:
        sink = KafkaDetectionSink(broker.bootstrap, "detections", flush_timeout_s=2.0)
        assert sink.publish(detections()) == 3
        broker.kill()
        with pytest.raises(SinkPublishError, match="not acknowledged|publishing 3 detection"):
            sink.publish(detections())
        sink.close()
