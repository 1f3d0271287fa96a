"""Control messages: the JSON unit of work the router consumes, parsed and validated.

A control-message document (a file, or one Kafka payload) is either ``{"inputs": [msg, ...]}``
(Morpheus's file format), a single message ``{"tasks": [...], "metadata": {...}}``, or a JSON
list of messages. Each message names files to load (``load`` tasks with fsspec globs) and what
to do with them (``training`` or ``inference``), plus how to batch and parse those files.

Why a strict parser: a typo in a control message (``"trainig"``, ``"peroid"``) used to be
silently ignored or to crash a pipeline stage far from its cause. Here every message is
validated up front; a bad one becomes a :class:`Rejection` that names the message
(``duo_payload_lti.json#inputs[1]``) and the field path (``inputs[1].tasks[1].type``) and says
what to do. The other messages of the same document still run; rejections are appended to a
dead-letter file (:class:`DeadLetterWriter`) so nothing is lost silently.

Run ``python -m dfp_ray.messages FILE...`` to check message files without running anything.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "TaskType",
    "LoadProperties",
    "LoadTask",
    "TrainingTask",
    "InferenceTask",
    "Task",
    "BatchingOptions",
    "FileToDfOptions",
    "MessageMetadata",
    "ControlMessage",
    "Rejection",
    "ParseResult",
    "DeadLetterWriter",
    "PeriodSpec",
    "parse_period",
    "parse_control_messages",
    "filter_messages",
]


# --------------------------------------------------------------------------------------------
# Periods (pandas-style frequency aliases)
# --------------------------------------------------------------------------------------------

_UNIT_ALIASES = {
    "s": "s", "S": "s", "sec": "s",
    "T": "min", "min": "min",
    "H": "h", "h": "h",
    "D": "D", "d": "D",
    "W": "W",
    "M": "M", "ME": "M", "MS": "M",
    "Y": "Y", "YE": "Y", "YS": "Y", "A": "Y", "AS": "Y",
}
_WEEKDAYS = ["MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"]
_PERIOD_RE = re.compile(r"^\s*(?P<n>\d+)?\s*(?P<unit>[A-Za-z]+)(?:-(?P<anchor>[A-Za-z]{3}))?\s*$")


@dataclass(frozen=True)
class PeriodSpec:
    """A parsed period: ``n`` units of ``unit`` (s, min, h, D, W, M, Y).

    ``week_end`` is the weekday (0=Monday .. 6=Sunday) a ``W`` period ends on; pandas' ``W``
    means weeks ending on Sunday, i.e. Monday..Sunday.
    """

    n: int
    unit: str
    week_end: int = 6


def parse_period(alias: str) -> PeriodSpec:
    """Parse a pandas-style frequency alias (``D``, ``12H``, ``15T``, ``W``, ``W-MON``, ``M``, ``Y``).

    Old aliases Morpheus's messages use (``T``, ``H``, ``M``, ``Y``) are accepted even though
    pandas 3 removed them, so Morpheus message files work unchanged.
    """
    match = _PERIOD_RE.match(alias) if isinstance(alias, str) else None
    unit = _UNIT_ALIASES.get(match.group("unit")) if match else None
    if match is None or unit is None:
        raise ValueError(
            f"unknown period {alias!r}: use a pandas frequency alias with an optional multiple, "
            "one of s, T/min, H/h, D, W (or W-MON..W-SUN), M, Y, e.g. 'D', '12H', '15T'"
        )
    n = int(match.group("n") or 1)
    if n < 1:
        raise ValueError(f"period {alias!r}: the multiple must be at least 1")
    anchor = match.group("anchor")
    week_end = 6
    if anchor is not None:
        if unit != "W" or anchor.upper() not in _WEEKDAYS:
            raise ValueError(f"period {alias!r}: only weeks take an anchor, e.g. 'W-SUN' (the day a week ends on)")
        week_end = _WEEKDAYS.index(anchor.upper())
    return PeriodSpec(n=n, unit=unit, week_end=week_end)


# --------------------------------------------------------------------------------------------
# Message models
# --------------------------------------------------------------------------------------------


class TaskType(str, Enum):
    LOAD = "load"
    TRAINING = "training"
    INFERENCE = "inference"


_TASK_NAMES = ", ".join(t.value for t in TaskType)


class LoadProperties(BaseModel):
    """Properties of a ``load`` task: fsspec globs (local paths or ``s3://...``)."""

    model_config = ConfigDict(extra="forbid")

    loader_id: Literal["fsspec", "file_to_df"] = "fsspec"
    files: list[str]
    strategy: Literal["aggregate"] | None = None  # Morpheus's file_to_df loader option; only value it had

    @field_validator("files")
    @classmethod
    def _non_blank(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("no files: list at least one path or glob, e.g. [\"data/duo/*.json\"]")
        for i, pattern in enumerate(value):
            if not pattern.strip():
                raise ValueError(f"files[{i}] is empty: give a path or glob such as 'data/duo/*.json'")
        return value


class LoadTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal[TaskType.LOAD]
    properties: LoadProperties


class TrainingTask(BaseModel):
    """A training task. Its properties are passed to the trainer as-is (Morpheus sends ``{}``)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal[TaskType.TRAINING]
    properties: dict[str, Any] = Field(default_factory=dict)


class InferenceTask(BaseModel):
    """An inference task. Its properties are passed to the scorer as-is (Morpheus sends ``{}``)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal[TaskType.INFERENCE]
    properties: dict[str, Any] = Field(default_factory=dict)


def _task_tag(value: Any) -> str | None:
    raw = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if isinstance(raw, TaskType):
        return raw.value
    return raw if isinstance(raw, str) and raw in {t.value for t in TaskType} else None


Task = Annotated[
    Annotated[LoadTask, Tag("load")]
    | Annotated[TrainingTask, Tag("training")]
    | Annotated[InferenceTask, Tag("inference")],
    Discriminator(
        _task_tag,
        custom_error_type="unknown_task_type",
        custom_error_message=f"unknown task type (expected {_TASK_NAMES})",
    ),
]


def _parse_when(value: Any) -> Any:
    """Accept ``YYYY-MM-DD`` (a date) or an ISO datetime; datetimes become UTC-aware."""
    if isinstance(value, str):
        text = value.strip()
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                return date.fromisoformat(text)
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a date: use YYYY-MM-DD or an ISO datetime such as 2022-08-31T12:00:00Z (UTC)"
            ) from None
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return value


class BatchingOptions(BaseModel):
    """How the file batcher selects and groups files (overrides the router's defaults).

    - ``period``: group files by this pandas alias (T/min, H/h, D, W, M, Y; multiples like ``12H``).
    - ``start_time`` (inclusive) / ``end_time``: a date-only ``end_time`` includes that whole UTC
      day; a datetime ``end_time`` is inclusive of that instant (as Morpheus).
    - ``sampling``: a frequency string keeps the first file of each such interval; a number
      below 1 keeps that random fraction of files (seeded); an integer >= 1 keeps that many
      files, chosen at random (seeded).
    """

    model_config = ConfigDict(extra="forbid")

    period: str = "D"
    start_time: date | datetime | None = None
    end_time: date | datetime | None = None
    sampling: str | float | int | None = None
    # Morpheus's deprecated spelling of sampling="<n>s"; converted on validation.
    sampling_rate_s: int | None = Field(default=None, exclude=True)
    # Morpheus lets a message override the regex that finds the batch time in a file name.
    iso_date_regex_pattern: str | None = None

    @field_validator("period")
    @classmethod
    def _check_period(cls, value: str) -> str:
        parse_period(value)
        return value

    @field_validator("start_time", "end_time", mode="before")
    @classmethod
    def _check_time(cls, value: Any) -> Any:
        return _parse_when(value)

    @field_validator("sampling", mode="before")
    @classmethod
    def _check_sampling(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool):
            raise ValueError("sampling must be a frequency string, a fraction below 1 or a count of files")
        if isinstance(value, str):
            parse_period(value)
            return value
        if isinstance(value, (int, float)):
            if value <= 0:
                raise ValueError(f"sampling {value!r} must be positive")
            if value < 1:
                return float(value)
            if float(value).is_integer():
                return int(value)
            raise ValueError(f"sampling {value!r}: a number >= 1 is a count of files and must be a whole number")
        raise ValueError("sampling must be a frequency string, a fraction below 1 or a count of files")

    @field_validator("iso_date_regex_pattern")
    @classmethod
    def _check_regex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        missing = {"year", "month", "day"} - set(compiled.groupindex)
        if missing:
            raise ValueError(f"the pattern needs named groups year, month, day (missing {sorted(missing)})")
        return value

    @model_validator(mode="after")
    def _check_window(self) -> BatchingOptions:
        if self.sampling_rate_s:
            if self.sampling is not None:
                raise ValueError("set either sampling or sampling_rate_s, not both")
            self.sampling = f"{int(self.sampling_rate_s)}s"
        self.sampling_rate_s = None
        if self.start_time is not None and self.end_time is not None:
            if self.window_start() > self.window_end_inclusive():
                raise ValueError(f"start_time {self.start_time} is after end_time {self.end_time}")
        return self

    # The window, as UTC datetimes. Kept here so batching and docs agree on one definition.
    # Naive datetimes are read as UTC here too: ``model_copy(update=...)`` skips validation.
    def window_start(self) -> datetime | None:
        if self.start_time is None:
            return None
        if isinstance(self.start_time, datetime):
            return _parse_when(self.start_time)
        return datetime(self.start_time.year, self.start_time.month, self.start_time.day, tzinfo=timezone.utc)

    def window_end_inclusive(self) -> datetime | None:
        """Last instant included: end of the day for a date, the instant itself for a datetime."""
        if self.end_time is None:
            return None
        if isinstance(self.end_time, datetime):
            return _parse_when(self.end_time)
        day = self.end_time
        return datetime(day.year, day.month, day.day, 23, 59, 59, 999999, tzinfo=timezone.utc)


def _reader_kwargs() -> dict[str, set[str]]:
    """Keyword arguments each file type accepts in ``parser_kwargs`` (checked when a message
    is parsed, so a typo is rejected with the message rather than failing file by file)."""
    import pandas as pd

    json_keys = {"lines", "orient", "encoding", "compression", "nrows"}
    csv_keys = set(inspect.signature(pd.read_csv).parameters) - {"filepath_or_buffer"}
    parquet_keys = set(inspect.signature(pd.read_parquet).parameters) - {"path", "kwargs"}
    parquet_keys |= {"compression"}
    return {"json": json_keys, "csv": csv_keys | {"compression"}, "parquet": parquet_keys}


_READER_KWARGS: dict[str, set[str]] | None = None


class FileToDfOptions(BaseModel):
    """How files are parsed into DataFrames.

    ``parser_kwargs`` go to the reader of the file type: for JSON ``lines`` (JSON lines when
    true, a JSON array when false; auto-detected when absent), ``orient`` (``records`` by
    default), ``encoding``, ``compression``, ``nrows`` (JSON lines only); for CSV
    and Parquet, the keyword arguments of ``pandas.read_csv`` / ``pandas.read_parquet``.
    ``file_type`` ``auto`` decides by extension (``.json``/``.jsonl``/``.csv``/``.parquet``,
    compressed variants too) and sniffs the content for other names.
    """

    model_config = ConfigDict(extra="forbid")

    file_type: Literal["auto", "json", "csv", "parquet"] = "auto"
    parser_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("file_type", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("parser_kwargs")
    @classmethod
    def _check_kwargs(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        global _READER_KWARGS
        if _READER_KWARGS is None:
            _READER_KWARGS = _reader_kwargs()
        file_type = info.data.get("file_type", "auto")
        if file_type == "auto":
            allowed = set().union(*_READER_KWARGS.values())
        else:
            allowed = _READER_KWARGS[file_type]
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(
                f"{unknown} not understood by the {'JSON, CSV or Parquet' if file_type == 'auto' else file_type} "
                "reader (JSON takes lines, orient, encoding, compression, nrows; CSV and "
                "Parquet take pandas.read_csv / pandas.read_parquet arguments)"
            )
        nrows = value.get("nrows")
        if nrows is not None and (isinstance(nrows, bool) or not isinstance(nrows, int) or nrows < 0):
            raise ValueError("nrows must be a whole number >= 0")
        lines = value.get("lines")
        if lines is not None and not isinstance(lines, bool):
            raise ValueError("lines must be true or false")
        orient = value.get("orient")
        if orient is not None and orient not in {"records", "split", "index", "columns", "values", "table"}:
            raise ValueError(f"orient {orient!r} is not a pandas JSON orient")
        return value

    def cache_token(self) -> str:
        """A stable string of everything here that changes what a file parses to."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, default=str)


class MessageMetadata(BaseModel):
    """A message's metadata. Keys this project does not know are kept in ``extra`` (Morpheus
    messages may carry other metadata for other stages) rather than rejected."""

    model_config = ConfigDict(extra="forbid")

    data_type: Literal["payload", "streaming"] = "payload"
    batching_options: BatchingOptions | None = None
    file_to_df_options: FileToDfOptions | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _collect_extra(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = {"data_type", "batching_options", "file_to_df_options", "extra"}
        extra = dict(data.get("extra") or {})
        extra.update({k: v for k, v in data.items() if k not in known})
        out = {k: v for k, v in data.items() if k in known}
        out["extra"] = extra
        return out


class ControlMessage(BaseModel):
    """One unit of work: load some files, then train on them or score them (or only load)."""

    model_config = ConfigDict(extra="forbid")

    message_id: str
    tasks: list[Task] = Field(min_length=1)
    metadata: MessageMetadata = Field(default_factory=MessageMetadata)

    @model_validator(mode="after")
    def _check_tasks(self) -> ControlMessage:
        kinds = {t.type for t in self.tasks}
        if TaskType.TRAINING in kinds and TaskType.INFERENCE in kinds:
            where = {
                t.type.value: i for i, t in reversed(list(enumerate(self.tasks))) if t.type != TaskType.LOAD
            }
            raise ValueError(
                f"a message must not mix training and inference (training at tasks[{where['training']}], "
                f"inference at tasks[{where['inference']}]): split it into two messages, training first"
            )
        if TaskType.LOAD not in kinds:
            raise ValueError(
                "no load task: add {\"type\": \"load\", \"properties\": {\"files\": [\"<glob>\"]}} "
                "so the message has files to work on"
            )
        return self

    @property
    def load_tasks(self) -> list[LoadTask]:
        return [t for t in self.tasks if isinstance(t, LoadTask)]

    @property
    def files(self) -> list[str]:
        """The globs of all load tasks, in order, without duplicates."""
        seen: dict[str, None] = {}
        for task in self.load_tasks:
            for pattern in task.properties.files:
                seen.setdefault(pattern, None)
        return list(seen)

    @property
    def kind(self) -> Literal["training", "inference", "load_only"]:
        kinds = {t.type for t in self.tasks}
        if TaskType.TRAINING in kinds:
            return "training"
        if TaskType.INFERENCE in kinds:
            return "inference"
        return "load_only"

    @property
    def data_type(self) -> str:
        return self.metadata.data_type

    def task_properties(self) -> dict[str, Any]:
        """Properties of the training/inference task(s), merged in order ({} for load-only)."""
        merged: dict[str, Any] = {}
        for task in self.tasks:
            if not isinstance(task, LoadTask):
                merged.update(task.properties)
        return merged

    def files_field(self) -> str:
        """Field path of the first load task's globs, for rejections about files."""
        for i, task in enumerate(self.tasks):
            if isinstance(task, LoadTask):
                return f"{self._path_prefix()}tasks[{i}].properties.files"
        return f"{self._path_prefix()}tasks"

    def _path_prefix(self) -> str:
        _, _, frag = self.message_id.partition("#")
        return f"{frag}." if frag else ""


class Rejection(BaseModel):
    """Why a message (or a whole document) was not processed; one dead-letter line."""

    model_config = ConfigDict(extra="forbid")

    message_id: str
    field: str | None = None
    reason: str
    raw: Any | None = None
    at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field and f"{self.field}: " not in self.reason else ""
        return f"{self.message_id}: {where}{self.reason}"

    @classmethod
    def for_message(cls, message: ControlMessage, reason: str, field: str | None = None) -> Rejection:
        """A rejection of a message that parsed but failed later (no files, unreadable files)."""
        raw = message.model_dump(mode="json", exclude={"message_id"})
        return cls(message_id=message.message_id, field=field, reason=reason, raw=raw)


@dataclass
class ParseResult:
    messages: list[ControlMessage] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.rejections


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


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
            return f"task has no 'type' (expected {_TASK_NAMES})"
        return f"unknown task type {given!r} (expected {_TASK_NAMES})"
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


def parse_control_messages(source: str | Path | bytes, *, origin: str | None = None) -> ParseResult:
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
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            return ParseResult(
                rejections=[Rejection(message_id=origin, reason=f"control-message file {str(path)!r} does not exist")]
            )
        except (OSError, UnicodeDecodeError) as exc:
            return ParseResult(
                rejections=[Rejection(message_id=origin, reason=f"cannot read control-message file {str(path)!r}: {exc}")]
            )

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


# --------------------------------------------------------------------------------------------
# Dead letters
# --------------------------------------------------------------------------------------------


class DeadLetterWriter:
    """Appends rejections to a JSON-lines file, one object per line, flushed and fsync'd.

    Each line is ``{"message_id", "field", "reason", "raw", "at"}`` (``at`` ISO-8601 UTC). The
    file is opened per write so it can be rotated or read while the router runs; a lock keeps
    lines whole when several threads reject at once.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.count = 0

    def write(self, rejection: Rejection) -> None:
        line = json.dumps(rejection.model_dump(mode="json"), default=str, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self.count += 1

    def write_all(self, rejections: list[Rejection]) -> None:
        for rejection in rejections:
            self.write(rejection)


def _main(argv: list[str]) -> int:
    """``python -m dfp_ray.messages FILE...``: validate control-message files, print a summary."""
    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: python -m dfp_ray.messages FILE [FILE...]\n"
              "Validates control-message files; exit code 1 if any message is rejected.")
        return 0 if argv else 2
    rejected = 0
    for name in argv:
        result = parse_control_messages(name)
        for message in result.messages:
            print(f"ok       {message.message_id}: {message.kind}, {message.data_type}, files={message.files}")
        for rejection in result.rejections:
            print(f"REJECTED {rejection}")
        rejected += len(result.rejections)
    return 1 if rejected else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
