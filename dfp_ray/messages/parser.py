"""Parsing control-message documents: one bad message becomes a Rejection, the others run.

The parser never raises, whatever it is given: a document over :data:`MAX_DOCUMENT_BYTES`,
nested deeper than :data:`MAX_DEPTH`, not UTF-8, not JSON, or a message that fails
validation becomes a :class:`~dfp_ray.messages.model.Rejection` with the reason, and the
other documents and messages still run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dfp_ray.messages.model import TASK_NAMES, ControlMessage, ParseResult, Rejection, TaskType


def _field_path(prefix: str, loc: tuple[Any, ...]) -> str:
    """Render a pydantic error location as ``inputs[2].tasks[1].properties.files``.

    Discriminated unions insert the tag (``load``) after the list index; it is not a field the
    user wrote, so it is dropped.
    """
    parts: list[str] = [prefix] if prefix else []
    tags = {t.value for t in TaskType}
    previous: Any = None
    for item in loc:
        if isinstance(item, int):
            if parts:
                parts[-1] = f"{parts[-1]}[{item}]"
            else:
                parts.append(f"[{item}]")
        elif isinstance(previous, int) and item in tags:
            pass
        else:
            parts.append(str(item))
        previous = item
    return ".".join(parts)


def _reason(error: dict[str, Any]) -> str:
    if error["type"] == "unknown_task_type":
        given = error["input"].get("type") if isinstance(error["input"], dict) else None
        if given is None:
            return f"task has no 'type' (expected {TASK_NAMES})"
        return f"unknown task type {given!r} (expected {TASK_NAMES})"
    if error["type"] == "extra_forbidden":
        return "unknown field (check its spelling against docs/control_messages.md)"
    msg = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def _error_field(prefix: str, error: dict[str, Any]) -> str:
    path = _field_path(prefix, tuple(error["loc"]))
    if error["type"] == "unknown_task_type":
        path += ".type"
    return path


def _validate_one(raw: Any, message_id: str, prefix: str) -> ControlMessage | Rejection:
    if not isinstance(raw, dict):
        return Rejection(
            message_id=message_id,
            field=prefix or None,
            reason=f"a message must be a JSON object with 'tasks' and 'metadata', not {type(raw).__name__}",
            raw=raw,
        )
    if "message_id" in raw:
        return Rejection(
            message_id=message_id,
            field=_field_path(prefix, ("message_id",)),
            reason="message_id is assigned by the parser from the message's position; remove it",
            raw=raw,
        )
    try:
        return ControlMessage.model_validate({**raw, "message_id": message_id})
    except ValidationError as exc:
        errors = exc.errors()
        fields = [_error_field(prefix, e) for e in errors]
        # Model-level errors (mixing training and inference, no load task) are about "tasks".
        fields = [f if f != prefix else _field_path(prefix, ("tasks",)) for f in fields]
        reasons = [_reason(e) for e in errors]
        if len(errors) == 1:
            reason = reasons[0]
        else:
            reason = "; ".join(f"{f}: {r}" for f, r in zip(fields, reasons, strict=True))
            reason = f"{len(errors)} problems: {reason}"
        return Rejection(message_id=message_id, field=fields[0] or None, reason=reason, raw=raw)


def _looks_like_json(text: str) -> bool:
    stripped = text.lstrip()
    return stripped.startswith(("{", "["))


MAX_DOCUMENT_BYTES = 16 * 1024 * 1024  # a control message names files; it never needs megabytes
MAX_DEPTH = 64  # the format nests 6 levels deep; anything far deeper is not a control message
MAX_RAW_CHARS = 16_384  # how much of a rejected document a dead letter keeps


def _depth_exceeds(document: Any, limit: int) -> bool:
    """True when ``document`` nests lists/objects deeper than ``limit`` (iterative: no recursion)."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _snippet(text: str) -> str:
    return text if len(text) <= MAX_RAW_CHARS else text[:MAX_RAW_CHARS] + f"... ({len(text):,} characters in all)"


def parse_control_messages(source: str | Path | bytes, *, origin: str | None = None) -> ParseResult:
    """Parse a control-message document into valid messages and rejections; never raises.

    See :func:`_parse` for the accepted forms."""
    try:
        return _parse(source, origin=origin)
    except Exception as exc:  # noqa: BLE001 - the contract: bad input is a rejection, never a crash
        name = origin or (source.name if isinstance(source, Path) else "message")
        return ParseResult(rejections=[Rejection(
            message_id=str(name), reason=f"could not parse the document: {type(exc).__name__}: {exc}")])


def _parse(source: str | Path | bytes, *, origin: str | None = None) -> ParseResult:
    """Parse a control-message document into valid messages and rejections.

    ``source`` is a path (``str`` or ``Path``), or the JSON itself (``str`` starting with ``{``
    or ``[``, or ``bytes``, e.g. a Kafka payload). ``origin`` names the document in message ids
    (default: the file name, else ``"message"``); ids look like ``origin#inputs[1]``.
    Never raises for bad input: everything wrong becomes a :class:`Rejection`.
    """
    text: str
    if isinstance(source, bytes):
        origin = origin or "message"
        try:
            text = source.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return ParseResult(
                rejections=[Rejection(message_id=origin, reason=f"payload is not UTF-8 text: {exc}", raw=None)]
            )
    elif isinstance(source, str) and _looks_like_json(source):
        origin = origin or "message"
        text = source
    else:
        path = Path(source)
        origin = origin or path.name
        try:
            size = path.stat().st_size
            if size > MAX_DOCUMENT_BYTES:
                return ParseResult(rejections=[Rejection(
                    message_id=origin, reason=f"control-message file is {size:,} bytes, over the "
                    f"{MAX_DOCUMENT_BYTES:,}-byte limit: split it into several files")])
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            return ParseResult(
                rejections=[Rejection(message_id=origin, reason=f"control-message file {str(path)!r} does not exist")]
            )
        except (OSError, UnicodeDecodeError) as exc:
            return ParseResult(
                rejections=[Rejection(message_id=origin, reason=f"cannot read control-message file {str(path)!r}: {exc}")]
            )

    if len(text) > MAX_DOCUMENT_BYTES:
        return ParseResult(rejections=[Rejection(
            message_id=origin, reason=f"document is {len(text):,} characters, over the "
            f"{MAX_DOCUMENT_BYTES:,}-byte limit: send fewer messages per document", raw=_snippet(text))])
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        snippet = text[:2000]
        return ParseResult(
            rejections=[
                Rejection(
                    message_id=origin,
                    reason=f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                    raw=snippet,
                )
            ]
        )
    except RecursionError:
        return ParseResult(rejections=[Rejection(
            message_id=origin, reason=f"JSON nested too deeply to parse (a control message nests at most "
            f"{MAX_DEPTH} levels)", raw=_snippet(text))])
    if _depth_exceeds(document, MAX_DEPTH):
        return ParseResult(rejections=[Rejection(
            message_id=origin, reason=f"JSON nested deeper than {MAX_DEPTH} levels: not a control message",
            raw=_snippet(text))])

    # Work out where the messages are, and how to name each one.
    items: list[tuple[Any, str, str]] = []  # (raw message, message_id, field prefix)
    if isinstance(document, dict) and "inputs" in document:
        inputs = document["inputs"]
        if not isinstance(inputs, list):
            return ParseResult(
                rejections=[Rejection(message_id=origin, field="inputs", reason="'inputs' must be a list of messages", raw=document)]
            )
        if not inputs:
            return ParseResult(
                rejections=[Rejection(message_id=origin, field="inputs", reason="'inputs' is empty: no messages to run", raw=document)]
            )
        others = sorted(set(document) - {"inputs"})
        if others:
            return ParseResult(
                rejections=[
                    Rejection(
                        message_id=origin,
                        field=others[0],
                        reason=f"unknown top-level field(s) {others}: a document holds only 'inputs'",
                        raw=document,
                    )
                ]
            )
        items = [(m, f"{origin}#inputs[{i}]", f"inputs[{i}]") for i, m in enumerate(inputs)]
    elif isinstance(document, dict) and "tasks" in document:
        items = [(document, origin, "")]
    elif isinstance(document, list):
        if not document:
            return ParseResult(rejections=[Rejection(message_id=origin, reason="the document is an empty list", raw=document)])
        items = [(m, f"{origin}#[{i}]", f"[{i}]") for i, m in enumerate(document)]
    else:
        return ParseResult(
            rejections=[
                Rejection(
                    message_id=origin,
                    reason="not a control-message document: expected {\"inputs\": [...]}, "
                    "a message {\"tasks\": [...], \"metadata\": {...}}, or a list of messages",
                    raw=document,
                )
            ]
        )

    result = ParseResult()
    for raw, message_id, prefix in items:
        outcome = _validate_one(raw, message_id, prefix)
        if isinstance(outcome, Rejection):
            result.rejections.append(outcome)
        else:
            result.messages.append(outcome)
    return result

