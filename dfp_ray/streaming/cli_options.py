"""Command-line options of the Kafka source (Morpheus's names), shared by every command that streams.

``add_kafka_source_arguments(parser)`` adds them; ``kafka_config_from_args(args, base)`` turns
them into a :class:`~dfp_ray.streaming.config.KafkaConfig`, flags given on the command line
overriding ``base`` (e.g. the ``kafka:`` section of the pipeline config), unset flags leaving it.
"""

from __future__ import annotations

import argparse
from typing import Any

from dfp_ray.streaming.config import KafkaConfig


def add_kafka_source_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Kafka source")
    group.add_argument("--bootstrap-servers", metavar="HOST:PORT[,HOST:PORT]",
                       help="Kafka brokers to bootstrap from (config kafka.bootstrap_servers; default localhost:9092)")
    group.add_argument("--input-topic", action="append", metavar="TOPIC", dest="input_topics",
                       help="topic to read control messages from; repeat for several (kafka.input_topics)")
    group.add_argument("--group-id", metavar="G",
                       help="consumer group; a restart with the same group resumes from its last committed "
                       "offset (kafka.group_id; default dfp_ray)")
    group.add_argument("--client-id", metavar="ID", help="client id shown in broker logs (kafka.client_id)")
    group.add_argument("--poll-interval", metavar="DURATION",
                       help="how long an idle poll waits for a message, e.g. 1s, 500ms (kafka.poll_interval; "
                       "default 1s); a waiting message is read at once")
    group.add_argument("--disable-commit", action="store_true", default=None,
                       help="never commit offsets: every restart re-reads the same messages (debugging)")
    group.add_argument("--disable-pre-filtering", action="store_true", default=None,
                       help="hand every valid message to the pipeline, ignoring kafka.accept_kinds and "
                       "kafka.accept_data_types")
    group.add_argument("--dead-letter-topic", metavar="TOPIC",
                       help="where invalid messages go, '{topic}' = their input topic (kafka.dead_letter_topic; "
                       "default {topic}.dlq)")
    group.add_argument("--auto-offset-reset", choices=["earliest", "latest"],
                       help="where a group with no committed offset starts (kafka.auto_offset_reset; default "
                       "earliest: messages published before the first start are run)")
    group.add_argument("--stop-after", type=int, metavar="N",
                       help="stop after N Kafka messages were processed and committed (default 0: run until "
                       "SIGINT/SIGTERM)")


_FLAG_FIELDS = {
    "bootstrap_servers": "bootstrap_servers", "input_topics": "input_topics", "group_id": "group_id",
    "client_id": "client_id", "poll_interval": "poll_interval", "disable_commit": "disable_commit",
    "disable_pre_filtering": "disable_pre_filtering", "dead_letter_topic": "dead_letter_topic",
    "auto_offset_reset": "auto_offset_reset", "stop_after": "stop_after",
}


def kafka_config_from_args(args: argparse.Namespace, base: KafkaConfig | None = None) -> KafkaConfig:
    """``base`` (or the defaults) with every flag that was given applied; raises pydantic's
    ``ValidationError`` for bad values (e.g. ``--poll-interval 1 sec``)."""
    data: dict[str, Any] = (base or KafkaConfig()).model_dump()
    for attr, key in _FLAG_FIELDS.items():
        value = getattr(args, attr, None)
        if value is not None:
            data[key] = value
    return KafkaConfig.model_validate(data)
