"""From one Kafka message value to control messages, rejections and skipped messages.

A Kafka value is one control-message document (the ``--input-file`` format). Before the
strict parser sees it, two cheap guards run: its size, and how deeply its JSON nests (Python's
JSON parser recurses, so a hostile ``[[[[...]]]]`` would otherwise raise far from its cause).
Then :func:`~dfp_ray.messages.parse_control_messages` splits it into valid messages and
rejections, and the control-message filter keeps the kinds and data types this deployment
handles (pre-filtering).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dfp_ray.messages import ControlMessage, Rejection, parse_control_messages
from dfp_ray.pipeline.control_message_filter import filter_messages


@dataclass
class Checked:
    """What one Kafka value holds, in document order."""

    messages: list[ControlMessage] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    skipped: list[ControlMessage] = field(default_factory=list)  # valid, but filtered out
    whole_document: bool = False  # the rejection is about the payload as a whole (not one input)


def json_depth(document: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0, ``[]`` and ``{}`` are 1).

    >>> json_depth({"a": [1, {"b": 2}]}), json_depth(3), json_depth([])
    (3, 0, 1)
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            depth += 1
            stack.extend((v, depth) for v in value.values())
        elif isinstance(value, list):
            depth += 1
            stack.extend((v, depth) for v in value)
        deepest = max(deepest, depth)
    return deepest


def check_value(
    value: bytes | None,
    origin: str,
    *,
    max_bytes: int,
    max_depth: int,
    kinds: set[str] | None = None,
    data_types: set[str] | None = None,
) -> Checked:
    """Parse and pre-filter one Kafka value; never raises for bad input.

    ``origin`` names the Kafka message (``kafka:topic/0@42``); message ids are
    ``origin#inputs[i]``, the same on every redelivery of that message.
    """
    def whole(reason: str) -> Checked:
        return Checked(rejections=[Rejection(message_id=origin, reason=reason)], whole_document=True)

    if value is None or not value.strip():
        return whole("empty message: the value must be a control-message document (JSON)")
    if len(value) > max_bytes:
        return whole(
            f"message is {len(value):,} bytes, over the limit of {max_bytes:,} (kafka.max_message_bytes): "
            "a control message names files, it does not carry them; split it into several messages"
        )
    try:
        document = json.loads(value)
    except RecursionError:
        return whole(f"JSON nests too deeply (limit {max_depth} levels, kafka.max_json_depth)")
    except (json.JSONDecodeError, UnicodeDecodeError):
        document = None  # the parser below words the error (line, column)
    else:
        depth = json_depth(document)
        if depth > max_depth:
            return whole(f"JSON nests {depth} levels deep, over the limit of {max_depth} (kafka.max_json_depth)")
    result = parse_control_messages(value, origin=origin)
    checked = Checked(rejections=result.rejections)
    checked.whole_document = any(r.message_id == origin for r in result.rejections)
    if kinds is None and data_types is None:
        checked.messages = result.messages
    else:
        kept = filter_messages(result.messages, kinds=kinds, data_types=data_types)
        kept_ids = {m.message_id for m in kept}
        checked.messages = kept
        checked.skipped = [m for m in result.messages if m.message_id not in kept_ids]
    return checked


def rejected_input(value: bytes, rejection: Rejection, origin: str) -> bytes | None:
    """The rejected input alone, as a document that can be fixed and published again.

    For a rejection of the whole payload (bad JSON, too large) there is no single input:
    ``None`` (the caller keeps the original bytes).
    """
    if rejection.message_id == origin or rejection.raw is None:
        return None
    return json.dumps({"inputs": [rejection.raw]}, ensure_ascii=False, default=str).encode()
