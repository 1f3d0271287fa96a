"""Kafka detection sink: one JSON message per detection row, keyed by user, event id in a header.

Contract for consumers of the detections topic:

- value: the row as a JSON object (the same columns and ISO-8601 times as the detections file);
- key: the user (UTF-8), so one user's detections stay in one partition, in order;
- headers: ``event_id`` (the row's event id; when the rows have none, ``sha256:<hex>`` of the
  row's JSON, so an identical row still has the same id), ``dfp.source`` (the log source) and
  ``content-type: application/json``.

:meth:`KafkaDetectionSink.publish` returns only after every row was acknowledged by all
in-sync replicas (``acks=all``, then a flush, then every send checked); if any row fails, it
raises :class:`SinkPublishError` and the caller must not treat the rows as written. Because a
caller that retries (or a message redelivered after a crash) publishes the same rows again,
a row can appear more than once on the topic: always with the same key and ``event_id``
header. Consumers that need each detection once keep the first (or last) row per
``event_id``: that is the idempotence contract.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pandas as pd

from dfp_ray.streaming.config import KafkaConfig, KafkaSinkConfig

log = logging.getLogger("dfp_ray.streaming")


class SinkPublishError(RuntimeError):
    """Some rows were not acknowledged: nothing of this publish may be treated as durable."""


def render_rows(rows: pd.DataFrame) -> list[bytes]:
    """Each row as compact JSON (NaN as null, times ISO-8601), in order."""
    if rows.empty:
        return []
    text = rows.to_json(orient="records", lines=True, date_format="iso", date_unit="us", default_handler=str)
    lines = [line.encode() for line in text.split("\n") if line]
    if len(lines) != len(rows):  # pragma: no cover - JSON escapes newlines inside strings
        raise ValueError(f"rendered {len(lines)} JSON lines for {len(rows)} rows")
    return lines


class KafkaDetectionSink:
    """Publishes detection rows to ``topic``; see the module docstring for the message format."""

    def __init__(self, bootstrap_servers: str | list[str], topic: str, *, user_column: str = "username",
                 event_id_column: str | None = "event_id", source: str | None = None,
                 flush_timeout_s: float = 30.0, create_topic: bool = True, client_id: str | None = None):
        from dfp_ray.streaming.clients import ensure_topics, make_producer, quiet_client_logs

        quiet_client_logs()
        self.servers = bootstrap_servers.split(",") if isinstance(bootstrap_servers, str) else list(bootstrap_servers)
        self.topic = topic
        self.user_column = user_column
        self.event_id_column = event_id_column
        self.source = source
        self.flush_timeout_s = flush_timeout_s
        if create_topic:
            ensure_topics(self.servers, [topic], timeout_s=flush_timeout_s)
        self.producer = make_producer(self.servers, timeout_s=flush_timeout_s, client_id=client_id,
                                      linger_ms=5, batch_size=256 * 1024)
        self.rows_published = 0

    @classmethod
    def from_config(cls, sink: KafkaSinkConfig, *, kafka: KafkaConfig | None = None, user_column: str = "username",
                    event_id_column: str | None = "event_id", source: str | None = None) -> KafkaDetectionSink:
        """From the pipeline's config: ``sink.bootstrap_servers`` or else the source's brokers."""
        if not sink.topic:
            raise ValueError("kafka sink: no topic configured (kafka_sink.topic)")
        servers = sink.bootstrap_servers or (kafka.bootstrap_servers if kafka else None)
        if not servers:
            raise ValueError("kafka sink: no brokers configured (kafka_sink.bootstrap_servers)")
        return cls(servers, sink.topic, user_column=user_column, event_id_column=event_id_column, source=source,
                   flush_timeout_s=sink.flush_timeout_s, create_topic=sink.create_topic)

    def _keys_and_ids(self, rows: pd.DataFrame, values: list[bytes]) -> tuple[list[bytes | None], list[bytes]]:
        if self.user_column in rows.columns:
            users = rows[self.user_column].astype("string")
            keys = [None if pd.isna(u) else str(u).encode() for u in users.tolist()]
        else:
            keys = [None] * len(rows)
        if self.event_id_column and self.event_id_column in rows.columns:
            ids = rows[self.event_id_column].astype("string").fillna("").tolist()
            event_ids = [
                str(i).encode() if i else f"sha256:{hashlib.sha256(v).hexdigest()}".encode()
                for i, v in zip(ids, values, strict=True)
            ]
        else:
            event_ids = [f"sha256:{hashlib.sha256(v).hexdigest()}".encode() for v in values]
        return keys, event_ids

    def publish(self, rows: pd.DataFrame) -> int:
        """Publish every row; returns the number published once all are acknowledged."""
        values = render_rows(rows)
        if not values:
            return 0
        keys, event_ids = self._keys_and_ids(rows, values)
        common: list[tuple[str, bytes]] = [("content-type", b"application/json")]
        if self.source:
            common.append(("dfp.source", self.source.encode()))
        from kafka.errors import KafkaError

        try:
            futures = [
                self.producer.send(self.topic, value=value, key=key, headers=[("event_id", event_id), *common])
                for value, key, event_id in zip(values, keys, event_ids, strict=True)
            ]
            self.producer.flush(timeout=self.flush_timeout_s)
        except KafkaError as exc:
            raise SinkPublishError(f"publishing {len(values)} detection(s) to {self.topic}: {exc}") from exc
        failed: list[Any] = [f.exception for f in futures if not f.is_done or f.failed()]
        if failed:
            first = failed[0] or "not acknowledged in time"
            raise SinkPublishError(
                f"{len(failed)} of {len(values)} detection(s) not acknowledged by {self.topic}: {first}; "
                "publish them again (consumers dedupe by event_id)"
            )
        self.rows_published += len(values)
        return len(values)

    def close(self) -> None:
        from dfp_ray.streaming.clients import close_producer

        close_producer(self.producer, self.flush_timeout_s)

    def __enter__(self) -> KafkaDetectionSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
