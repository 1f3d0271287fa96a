"""kafka-python clients configured the one way this package uses them.

Producers wait for every in-sync replica (``acks=all``) and are idempotent (a retried send is
not written twice by the broker). Topics are created with one partition when missing: control
messages must be handled in the order they were published, and Kafka orders messages only
within a partition (brokers that auto-create topics may otherwise pick several).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("dfp_ray.streaming")


def quiet_client_logs() -> None:
    """kafka-python logs every failed reconnect attempt; this package logs broker state changes once
    instead (see :class:`~dfp_ray.streaming.backoff.BrokerState`). At DEBUG its own logs stay on."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


def make_producer(servers: list[str] | str, *, timeout_s: float, client_id: str | None = None,
                  **extra: Any):
    """An ``acks=all``, idempotent producer whose every wait is bounded by ``timeout_s``."""
    from kafka import KafkaProducer

    timeout_ms = int(timeout_s * 1000)
    config: dict[str, Any] = {
        "bootstrap_servers": servers,
        "acks": "all",
        "enable_idempotence": True,
        "request_timeout_ms": timeout_ms,
        "delivery_timeout_ms": max(timeout_ms + 1000, 2 * timeout_ms),
        "max_block_ms": timeout_ms,
        "bootstrap_timeout_ms": timeout_ms,
        "reconnect_backoff_max_ms": 2000,
    }
    if client_id:
        config["client_id"] = client_id
    config.update(extra)
    return KafkaProducer(**config)


def close_producer(producer: Any, timeout_s: float) -> None:
    """Close a producer within ``timeout_s``, also when records are still unacknowledged.

    kafka-python's ``close()`` raises when its flush times out and leaves the producer open (it
    then raises again when garbage-collected). Here the sender thread is told to drop what is
    pending (whoever sent those records has already been told they failed) and the producer is
    marked closed."""
    from kafka.errors import KafkaError

    try:
        producer.close(timeout=timeout_s)
    except KafkaError as exc:
        log.debug("closing a producer with unacknowledged records: %s", exc)
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
        producer._closed = True


def ensure_topics(servers: list[str] | str, topics: Iterable[str], *, timeout_s: float,
                  partitions: int = 1) -> list[str]:
    """Create the topics that do not exist yet (``partitions`` each); returns those created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    wanted = list(dict.fromkeys(topics))
    if not wanted:
        return []
    timeout_ms = int(timeout_s * 1000)
    admin = KafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=timeout_ms,
                             bootstrap_timeout_ms=timeout_ms)
    try:
        existing = set(admin.list_topics())
        created = []
        for topic in wanted:
            if topic in existing:
                continue
            try:
                admin.create_topics([NewTopic(topic, partitions, 1)], timeout_ms=timeout_ms)
                created.append(topic)
            except TopicAlreadyExistsError:
                pass
        if created:
            log.info("created topic(s) %s (%d partition(s) each)", ", ".join(created), partitions)
        return created
    finally:
        admin.close()
