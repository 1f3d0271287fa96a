"""Dead-letter topic: rejected control messages, with why and where they came from in headers.

One dead-letter message per rejection. Its value is the rejected input alone, as a document
that can be fixed and published again (``{"inputs": [<the input>]}``), or the original value
when the whole payload was rejected (bad JSON, not a document); a payload over the size limit
is not copied (its offset in the headers finds it). Its key is the original message's key.

Headers (UTF-8 text):

- ``dfp.dlq.reason``: why it was rejected, in words a person can act on;
- ``dfp.dlq.field``: the field at fault (``inputs[1].tasks[0].type``), when known;
- ``dfp.dlq.message_id``: the rejected message (``kafka:topic/0@42#inputs[1]``);
- ``dfp.dlq.topic``, ``dfp.dlq.partition``, ``dfp.dlq.offset``, ``dfp.dlq.timestamp`` (ms):
  where the original message is;
- ``dfp.dlq.stage``: ``parse`` (an invalid message), ``pipeline`` (the pipeline refused it) or
  ``handler`` (processing kept failing);
- ``dfp.dlq.payload``: ``input`` (the value is the rejected input), ``original`` or ``omitted``;
- ``dfp.dlq.at``: when it was dead-lettered (ISO-8601 UTC).

A send returns only once the broker has acknowledged it (``acks=all``). A crash after the
dead-letter send and before the commit sends it again on redelivery: the same message id and
original offset in the headers identify such a repeat.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

from dfp_ray.messages import Rejection

if TYPE_CHECKING:
    from kafka import KafkaProducer

    from dfp_ray.streaming.source import MessageOrigin

REASON_LIMIT = 8192
Stage = Literal["parse", "pipeline", "handler"]


def dead_letter_headers(
    rejection: Rejection, origin: MessageOrigin, *, stage: Stage, payload: str
) -> list[tuple[str, bytes]]:
    """The headers of one dead-letter message (see the module docstring)."""
    reason = rejection.reason if len(rejection.reason) <= REASON_LIMIT else rejection.reason[:REASON_LIMIT] + "..."
    headers = [
        ("dfp.dlq.reason", reason),
        ("dfp.dlq.message_id", rejection.message_id),
        ("dfp.dlq.topic", origin.topic),
        ("dfp.dlq.partition", str(origin.partition)),
        ("dfp.dlq.offset", str(origin.offset)),
        ("dfp.dlq.timestamp", "" if origin.timestamp_ms is None else str(origin.timestamp_ms)),
        ("dfp.dlq.stage", stage),
        ("dfp.dlq.payload", payload),
        ("dfp.dlq.at", datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")),
    ]
    if rejection.field:
        headers.insert(1, ("dfp.dlq.field", rejection.field))
    return [(name, value.encode()) for name, value in headers]


class KafkaDeadLetters:
    """Sends rejections to ``<topic>.dlq`` (or the configured name), synchronously."""

    def __init__(self, producer: KafkaProducer, topic_for: dict[str, str] | None, template: str,
                 timeout_s: float, max_value_bytes: int):
        self.producer = producer
        self.template = template
        self.timeout_s = timeout_s
        self.max_value_bytes = max_value_bytes
        self._topics = dict(topic_for or {})
        self.sent = 0

    def topic_for(self, topic: str) -> str:
        if topic not in self._topics:
            self._topics[topic] = self.template.replace("{topic}", topic)
        return self._topics[topic]

    def send(self, rejections: list[Rejection], origin: MessageOrigin, value: bytes | None, *,
             stage: Stage) -> int:
        """Send one dead letter per rejection; returns once all are acknowledged (raises otherwise).

        A dead letter the broker refuses for good (e.g. too large for it) is sent again without
        its value (``dfp.dlq.payload: omitted``): the reason and the original offset still arrive."""
        from kafka.errors import KafkaError

        from dfp_ray.streaming.validation import rejected_input

        topic = self.topic_for(origin.topic)
        pending = []
        for rejection in rejections:
            single = rejected_input(value, rejection, origin.id) if value is not None else None
            if single is not None:
                body, payload = single, "input"
            elif value is not None and len(value) <= self.max_value_bytes:
                body, payload = value, "original"
            else:
                body, payload = None, "omitted"
            future = self.producer.send(topic, value=body, key=origin.key,
                                        headers=dead_letter_headers(rejection, origin, stage=stage, payload=payload))
            pending.append((rejection, body, future))
        for rejection, body, future in pending:
            try:
                future.get(timeout=self.timeout_s)
            except KafkaError as exc:
                if exc.retriable or body is None:
                    raise
                headers = dead_letter_headers(rejection, origin, stage=stage, payload="omitted")
                self.producer.send(topic, value=None, key=origin.key, headers=headers).get(timeout=self.timeout_s)
        self.sent += len(pending)
        return len(pending)
