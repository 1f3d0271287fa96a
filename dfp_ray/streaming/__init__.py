"""Kafka for the streaming service: the control-message source, the detection sink, publishing.

Ray-free: the ``dfp-ray stream`` driver wires these to the pipeline. Importing this package
is cheap (kafka-python loads when a source, sink or publisher is first used), so the config
model can be part of the pipeline's configuration.

- :class:`KafkaControlSource`: consume control messages, hand them to a handler, commit after it
  returned (:mod:`.source` says what happens on every failure).
- :class:`KafkaDetectionSink`: publish detection rows, one JSON message per row, keyed by user,
  event id in a header, durable when ``publish`` returns.
- :func:`publish_files`: send control-message files, one Kafka message per input.
- :class:`KafkaConfig`, :class:`KafkaSinkConfig`: the settings (:mod:`.config`).
"""

from __future__ import annotations

from typing import Any

from dfp_ray.streaming.config import KafkaConfig, KafkaSinkConfig, parse_duration

_LAZY = {
    "KafkaControlSource": "dfp_ray.streaming.source",
    "MessageHandler": "dfp_ray.streaming.source",
    "MessageOrigin": "dfp_ray.streaming.source",
    "HandleResult": "dfp_ray.streaming.source",
    "RejectMessage": "dfp_ray.streaming.source",
    "StreamStats": "dfp_ray.streaming.progress",
    "ProgressDisplay": "dfp_ray.streaming.progress",
    "KafkaDetectionSink": "dfp_ray.streaming.sink",
    "SinkPublishError": "dfp_ray.streaming.sink",
    "publish_files": "dfp_ray.streaming.publisher",
    "split_document": "dfp_ray.streaming.publisher",
    "add_kafka_source_arguments": "dfp_ray.streaming.cli_options",
    "kafka_config_from_args": "dfp_ray.streaming.cli_options",
}

__all__ = ["KafkaConfig", "KafkaSinkConfig", "parse_duration", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dfp_ray.streaming' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
