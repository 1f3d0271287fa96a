"""Control-message filter (Morpheus's ``FilterControlMessage``): keep the messages a deployment handles."""
from __future__ import annotations

from dfp_ray.messages.model import ControlMessage


def filter_messages(
    messages: list[ControlMessage],
    *,
    kinds: set[str] | None = None,
    data_types: set[str] | None = None,
) -> list[ControlMessage]:
    """Keep messages whose ``kind`` and ``data_type`` are wanted (Morpheus's control-message
    filter: a training-only deployment drops inference messages, and so on). ``None`` keeps all."""
    return [
        m
        for m in messages
        if (kinds is None or m.kind in kinds) and (data_types is None or m.data_type in data_types)
    ]

