"""The control-message model: tasks, batching and parsing options, metadata, rejections.

Why strict: a typo (``"trainig"``, ``"peroid"``) used to be ignored or to crash a stage far
from its cause; here every field is validated and unknown keys are errors.

Why over ~400 lines: it is the control-message format, one pydantic model per part of it; one
file is the one place the format is defined.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dfp_ray.messages.periods import parse_period


class TaskType(str, Enum):
    LOAD = "load"
    TRAINING = "training"
    INFERENCE = "inference"
    LABEL = "label"


TASK_NAMES = ", ".join(t.value for t in TaskType)


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


def _check_work_properties(value: dict[str, Any]) -> dict[str, Any]:
    """The properties of a training / inference task that dfp_ray reads (the rest pass through):
    ``users`` (only these users' rows) and ``generic`` (training: also the generic model)."""
    users = value.get("users")
    if users is not None:
        if not isinstance(users, list) or not users or not all(isinstance(u, str) and u.strip() for u in users):
            raise ValueError("users must be a non-empty list of user names, e.g. [\"alice@example.com\"]")
    generic = value.get("generic")
    if generic is not None and not isinstance(generic, bool):
        raise ValueError("generic must be true or false")
    return value


class TrainingTask(BaseModel):
    """A training task. Morpheus sends ``{}``. ``users`` (a list) trains only those users'
    models on the message's files ("retrain alice on these files now"); ``generic`` (default:
    true without ``users``, false with them) says whether the generic model trains too. Other
    properties are kept as they are."""

    model_config = ConfigDict(extra="forbid")
    type: Literal[TaskType.TRAINING]
    properties: dict[str, Any] = Field(default_factory=dict)

    _users = field_validator("properties")(classmethod(lambda cls, v: _check_work_properties(v)))


class InferenceTask(BaseModel):
    """An inference task. Morpheus sends ``{}``. ``users`` (a list) scores only those users'
    rows of the message's files. Other properties are kept as they are."""

    model_config = ConfigDict(extra="forbid")
    type: Literal[TaskType.INFERENCE]
    properties: dict[str, Any] = Field(default_factory=dict)

    _users = field_validator("properties")(classmethod(lambda cls, v: _check_work_properties(v)))


MAX_VERDICTS = 100_000  # per label task; a label message names events, it never needs millions


class Verdict(BaseModel):
    """An analyst's verdict on one earlier detection (by its ``event_id``)."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=512, description="The event id of the detection row.")
    verdict: Literal["benign", "malicious"]
    user: str | None = Field(None, max_length=512, description="The user the event belongs to (optional).")
    note: str | None = Field(None, max_length=4096, description="Free text for the record (optional).")

    @field_validator("verdict", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class LabelProperties(BaseModel):
    """Properties of a ``label`` task: the verdicts, at least one, each event id once."""

    model_config = ConfigDict(extra="forbid")

    verdicts: list[Verdict] = Field(min_length=1, max_length=MAX_VERDICTS)

    @field_validator("verdicts")
    @classmethod
    def _unique(cls, value: list[Verdict]) -> list[Verdict]:
        seen: dict[str, int] = {}
        for i, v in enumerate(value):
            if v.event_id in seen:
                raise ValueError(f"event id {v.event_id!r} has two verdicts (verdicts[{seen[v.event_id]}] and "
                                 f"verdicts[{i}]): keep one")
            seen[v.event_id] = i
        return value


class LabelTask(BaseModel):
    """Analyst verdicts on earlier detections: benign rows join their user's next training data,
    malicious ones are kept out of every future training (see docs/streaming.md)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal[TaskType.LABEL]
    properties: LabelProperties


def _task_tag(value: Any) -> str | None:
    raw = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if isinstance(raw, TaskType):
        return raw.value
    return raw if isinstance(raw, str) and raw in {t.value for t in TaskType} else None


Task = Annotated[
    Annotated[LoadTask, Tag("load")]
    | Annotated[TrainingTask, Tag("training")]
    | Annotated[InferenceTask, Tag("inference")]
    | Annotated[LabelTask, Tag("label")],
    Discriminator(
        _task_tag,
        custom_error_type="unknown_task_type",
        custom_error_message=f"unknown task type (expected {TASK_NAMES})",
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


# What a control message may pass to the file readers: the options that change how a file is
# parsed, and nothing that reaches outside it (no storage options, engines, iterators, memory
# maps or file-like arguments). A message comes from whoever can write to the control topic or
# folder; the readers run inside the pipeline. docs/control_messages.md lists them.
PARSER_KWARGS: dict[str, frozenset[str]] = {
    "json": frozenset({"lines", "orient", "encoding", "compression", "nrows"}),
    "csv": frozenset({
        "sep", "delimiter", "header", "names", "usecols", "dtype", "skiprows", "skipfooter", "nrows",
        "na_values", "keep_default_na", "quotechar", "quoting", "escapechar", "comment", "decimal",
        "thousands", "encoding", "compression", "skip_blank_lines", "skipinitialspace", "true_values",
        "false_values", "on_bad_lines",
    }),
    "parquet": frozenset({"columns", "compression"}),
}


class FileToDfOptions(BaseModel):
    """How files are parsed into DataFrames.

    ``parser_kwargs`` go to the reader of the file type, from an allow-list
    (:data:`PARSER_KWARGS`): for JSON ``lines`` (JSON lines when true, a JSON array when false;
    auto-detected when absent), ``orient`` (``records`` by default), ``encoding``,
    ``compression``, ``nrows`` (JSON lines only); for CSV the parsing options of
    ``pandas.read_csv`` (``sep``, ``header``, ``names``, ``usecols``, ``dtype``, ``skiprows``, ...);
    for Parquet ``columns``.
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
        file_type = info.data.get("file_type", "auto")
        if file_type == "auto":
            allowed = frozenset().union(*PARSER_KWARGS.values())
        else:
            allowed = PARSER_KWARGS[file_type]
        unknown = sorted(set(value) - allowed)
        if unknown:
            kinds = "JSON, CSV or Parquet" if file_type == "auto" else file_type
            raise ValueError(
                f"{unknown} not allowed for the {kinds} reader; allowed: "
                + "; ".join(f"{kind}: {', '.join(sorted(keys))}" for kind, keys in PARSER_KWARGS.items()
                            if file_type in ("auto", kind))
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
        if TaskType.LABEL in kinds:
            others = sorted(k.value for k in kinds - {TaskType.LABEL})
            if others:
                raise ValueError(
                    f"a label message holds only label tasks (it also has {', '.join(others)}): send the "
                    "verdicts in a message of their own, then a training message to retrain on them"
                )
            return self
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
    def kind(self) -> Literal["training", "inference", "load_only", "label"]:
        kinds = {t.type for t in self.tasks}
        if TaskType.LABEL in kinds:
            return "label"
        if TaskType.TRAINING in kinds:
            return "training"
        if TaskType.INFERENCE in kinds:
            return "inference"
        return "load_only"

    @property
    def data_type(self) -> str:
        return self.metadata.data_type

    def task_properties(self) -> dict[str, Any]:
        """Properties of the training/inference task(s), merged in order ({} for load-only and label)."""
        merged: dict[str, Any] = {}
        for task in self.tasks:
            if isinstance(task, (TrainingTask, InferenceTask)):
                merged.update(task.properties)
        return merged

    @property
    def users(self) -> list[str] | None:
        """The users a training / inference message is limited to (``properties.users``), or None."""
        users = self.task_properties().get("users")
        return list(dict.fromkeys(users)) if users else None

    @property
    def trains_generic(self) -> bool:
        """Training: does this message train the generic model (``properties.generic``; default:
        yes, unless it names ``users``)?"""
        generic = self.task_properties().get("generic")
        return bool(generic) if generic is not None else self.users is None

    @property
    def verdicts(self) -> list[Verdict]:
        """The verdicts of a label message, in order (event ids unique within each task)."""
        return [v for t in self.tasks if isinstance(t, LabelTask) for v in t.properties.verdicts]

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

