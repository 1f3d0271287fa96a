"""Publishing control-message files to Kafka: one Kafka message per input, in file order.

A file holding ``{"inputs": [a, b]}`` becomes two Kafka messages, ``{"inputs": [a]}`` and
``{"inputs": [b]}`` (Morpheus's format, one control message each), so each is committed,
retried and dead-lettered on its own. A single message (``{"tasks": ...}``) or a JSON list of
messages is sent the same way. Files are validated first (the same parser the source uses):
with a rejected message nothing is sent, unless validation is turned off (to exercise the
dead-letter path on purpose), in which case a file that does not split is sent as it is.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from dfp_ray.messages import Rejection, parse_control_messages


@dataclass(frozen=True)
class Published:
    """One Kafka message sent: where it came from and where it went."""

    file: str
    index: int  # input position in the file
    topic: str
    partition: int
    offset: int


class InvalidControlFile(ValueError):
    """A file has rejected messages; nothing was sent."""

    def __init__(self, rejections: list[Rejection]):
        self.rejections = rejections
        super().__init__("; ".join(str(r) for r in rejections))


def split_document(data: bytes) -> list[bytes] | None:
    """A document's inputs, each as ``{"inputs": [input]}``; None when it does not split (not JSON,
    not one of the three document shapes)."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if isinstance(document, dict) and isinstance(document.get("inputs"), list) and set(document) == {"inputs"}:
        inputs = document["inputs"]
    elif isinstance(document, dict) and "tasks" in document:
        inputs = [document]
    elif isinstance(document, list):
        inputs = document
    else:
        return None
    if not inputs:
        return None
    return [json.dumps({"inputs": [item]}, ensure_ascii=False, separators=(",", ":")).encode() for item in inputs]


def prepare_files(paths: list[str | Path], *, validate: bool = True) -> list[tuple[str, list[bytes]]]:
    """Read and split every file (all of them before anything is sent); raises
    :class:`InvalidControlFile` (validate) or ``OSError`` (unreadable)."""
    prepared: list[tuple[str, list[bytes]]] = []
    rejections: list[Rejection] = []
    for path in paths:
        name = str(path)
        data = Path(path).read_bytes()
        if validate:
            result = parse_control_messages(data, origin=Path(path).name)
            rejections.extend(result.rejections)
        parts = split_document(data)
        prepared.append((name, parts if parts is not None else [data]))
    if rejections:
        raise InvalidControlFile(rejections)
    return prepared


def publish_files(bootstrap_servers: str | list[str], topic: str, paths: list[str | Path], *,
                  validate: bool = True, key: str | None = None, create_topic: bool = True,
                  interval_s: float = 0.0, timeout_s: float = 30.0) -> list[Published]:
    """Send every input of every file to ``topic``, in order, each acknowledged before the next."""
    from dfp_ray.streaming.clients import close_producer, ensure_topics, make_producer, quiet_client_logs

    quiet_client_logs()
    prepared = prepare_files(paths, validate=validate)
    servers = bootstrap_servers.split(",") if isinstance(bootstrap_servers, str) else bootstrap_servers
    if create_topic:
        ensure_topics(servers, [topic], timeout_s=timeout_s)
    producer = make_producer(servers, timeout_s=timeout_s)
    sent: list[Published] = []
    try:
        first = True
        for name, values in prepared:
            for index, value in enumerate(values):
                if interval_s and not first:
                    time.sleep(interval_s)
                first = False
                meta = producer.send(topic, value=value, key=key.encode() if key else None).get(timeout=timeout_s)
                sent.append(Published(name, index, meta.topic, meta.partition, meta.offset))
    finally:
        close_producer(producer, timeout_s)
    return sent
