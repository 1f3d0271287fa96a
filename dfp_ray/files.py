"""File listing (fsspec globs, local or ``s3://``) and batching of files by time period.

The router turns a control message into work in three steps, each a function here:

1. :func:`expand_globs` lists the files its load tasks name, with size, modification time
   and the *batch time* (parsed from the file name, e.g. ``DUO_2022-08-01T00_05_06.806Z.json``,
   else the modification time);
2. :func:`batch_files` keeps the files inside the message's time window, samples them if
   asked, and groups them by ``period``: one batch for a ``payload`` message, one batch per
   period (in time order) for a ``streaming`` message;
3. :mod:`dfp_ray.loading` reads each batch into a DataFrame.

:func:`plan_batches` does 1 and 2 for a message and raises :class:`NoFilesMatched` /
:class:`NoFilesInWindow` with the message field to blame, ready to become a rejection.
All times are UTC.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from dfp_ray.messages import BatchingOptions, ControlMessage, PeriodSpec, parse_period

__all__ = [
    "FileRef",
    "FileBatch",
    "FileSelectionError",
    "FileListingError",
    "NoFilesMatched",
    "NoFilesInWindow",
    "batch_time_from_path",
    "expand_globs",
    "batch_files",
    "plan_batches",
]

logger = logging.getLogger(__name__)

# YYYY-MM-DD, optionally [T or space]HH?MM?SS(.ffffff) with ':', '_' or '.' between the time
# fields, optionally Z. Not glued to other digits, so "x12022-08-01" or "2022-08-011" don't match.
_ISO_IN_NAME = re.compile(
    r"(?<!\d)(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})"
    r"(?:[T ](?P<hour>\d{1,2})[:_.](?P<minute>\d{1,2})[:_.](?P<second>\d{1,2})"
    r"(?:[.,](?P<fraction>\d+))?)?"
    r"(?P<zulu>Z)?(?!\d)"
)


class FileSelectionError(Exception):
    """Base of the errors that turn into a rejection of the message whose files they concern."""

    def __init__(self, reason: str, field: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.field = field


class FileListingError(FileSelectionError):
    """Listing a glob failed (bad bucket, no permission, unreachable endpoint, ...)."""


class NoFilesMatched(FileSelectionError):
    """None of the globs matched a file."""

    def __init__(self, patterns: list[str], field: str | None = None):
        self.patterns = list(patterns)
        super().__init__(
            f"no files matched {self.patterns}: check the paths (relative globs resolve against the "
            f"router's working directory {os.getcwd()!r}) and, for s3://, the bucket and storage options",
            field,
        )


class NoFilesInWindow(FileSelectionError):
    """Files matched, but none fall inside the message's [start_time, end_time] window."""


@dataclass
class FileRef:
    """One input file. ``url`` is a local absolute path or a URL such as ``s3://bucket/key``."""

    url: str
    size: int | None
    modified: datetime | None
    batch_time: datetime
    etag: str | None = None  # object stores' content tag; part of the cache key when known


@dataclass
class FileBatch:
    """Files of one period (streaming) or all files of a payload message, in time order.

    ``period_end`` is exclusive. ``batch_index``/``batch_count`` say where this batch sits
    among the message's batches (Morpheus called the count ``n_groups``).
    """

    period_start: datetime
    period_end: datetime
    files: list[FileRef] = field(default_factory=list)
    batch_index: int = 0
    batch_count: int = 1


# --------------------------------------------------------------------------------------------
# Batch time from a file name
# --------------------------------------------------------------------------------------------


def _datetime_from_groups(groups: dict[str, str | None]) -> datetime | None:
    try:
        fraction = groups.get("fraction")
        micro = int((fraction + "000000")[:6]) if fraction else 0
        return datetime(
            int(groups["year"]),
            int(groups["month"]),
            int(groups["day"]),
            int(groups.get("hour") or 0),
            int(groups.get("minute") or 0),
            int(groups.get("second") or 0),
            micro,
            tzinfo=timezone.utc,
        )
    except (ValueError, TypeError, KeyError):
        return None  # e.g. 2022-13-45: not a date, look elsewhere


def batch_time_from_path(path: str, pattern: str | re.Pattern[str] | None = None) -> datetime | None:
    """The UTC time a file name carries, or ``None``.

    The file's own name is searched first (its first date wins), then the directories from the
    innermost outwards, so ``2022-08-01/DUO_2022-08-01T10_00_00Z.json`` gives 10:00, not
    midnight. ``pattern`` overrides the default (Morpheus's ``iso_date_regex_pattern``): named
    groups ``year``, ``month``, ``day`` and optionally ``hour``, ``minute``, ``second``,
    ``microsecond`` (``.806`` or ``806`` both read as a fraction of a second).
    """
    regex = _ISO_IN_NAME if pattern is None else re.compile(pattern)
    parts = path.replace("\\", "/").rstrip("/").split("/")
    for part in reversed(parts):
        for match in regex.finditer(part):
            groups = dict(match.groupdict())
            if "microsecond" in groups and groups.get("microsecond"):
                groups["fraction"] = groups.pop("microsecond").lstrip(".")
            when = _datetime_from_groups(groups)
            if when is not None:
                return when
    return None


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------


def _is_local(pattern: str) -> bool:
    return "://" not in pattern or pattern.startswith("file://")


def _to_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(float(value), tz=timezone.utc)
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if isinstance(value, str):
        try:
            return _to_utc(datetime.fromisoformat(value))
        except ValueError:
            return None
    return None


def _modified_from_info(info: dict[str, Any]) -> datetime | None:
    for key in ("mtime", "LastModified", "last_modified", "modified", "updated", "created"):
        if key in info:
            when = _to_utc(info[key])
            if when is not None:
                return when
    return None


def _has_magic(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def expand_globs(
    patterns: list[str],
    storage_options: dict | None = None,
    *,
    date_pattern: str | None = None,
) -> list[FileRef]:
    """List the files the globs match, sorted by batch time, then URL; no duplicates.

    Local globs (relative ones resolve against the current directory, ``~`` expands, ``**``
    recurses) and any fsspec URL (``s3://bucket/prefix/*.json``). ``storage_options`` go to
    remote filesystems only (for S3 through s3fs: ``key``, ``secret``, ``client_kwargs=
    {"endpoint_url": ...}``, ...). The listing cache of a remote filesystem is dropped before
    each glob, so files that arrived since the last call are seen.

    Raises :class:`NoFilesMatched` when no glob matches a file, and :class:`FileListingError`
    when listing itself fails.
    """
    import fsspec
    from fsspec.core import url_to_fs

    found: dict[str, FileRef] = {}
    for pattern in patterns:
        try:
            if _is_local(pattern):
                local = pattern[len("file://"):] if pattern.startswith("file://") else pattern
                local = os.path.abspath(os.path.expanduser(local))
                fs = fsspec.filesystem("file")
                path = local
            else:
                fs, path = url_to_fs(pattern, **(storage_options or {}))
                # fsspec instances are shared and cache listings; s3fs drops only a path and
                # its parents, not the sub-folders a ``**`` glob walks, so drop them all.
                fs.invalidate_cache()
            if _has_magic(path):
                infos = fs.glob(path, detail=True)
            else:
                infos = {path: fs.info(path)} if fs.exists(path) else {}
        except FileNotFoundError:
            infos = {}
        except Exception as exc:  # noqa: BLE001 - any listing failure is reported with its pattern
            raise FileListingError(f"cannot list {pattern!r}: {type(exc).__name__}: {exc}") from exc

        matched = 0
        for path_found, info in infos.items():
            if info.get("type", "file") != "file":
                continue
            url = path_found if _is_local(pattern) else fs.unstrip_protocol(path_found)
            if url in found:
                matched += 1
                continue
            modified = _modified_from_info(info)
            batch_time = batch_time_from_path(path_found, date_pattern) or modified
            if batch_time is None:
                batch_time = datetime.now(timezone.utc)
                logger.warning("%s: no date in its name and no modification time; using now", url)
            etag = info.get("ETag") or info.get("etag")
            found[url] = FileRef(
                url=url,
                size=info.get("size"),
                modified=modified,
                batch_time=batch_time,
                etag=str(etag).strip('"') if etag else None,
            )
            matched += 1
        if matched == 0:
            logger.warning("glob %r matched no files", pattern)

    if not found:
        raise NoFilesMatched(patterns)
    return sorted(found.values(), key=lambda ref: (ref.batch_time, ref.url))


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------

_NS = {"s": 10**9, "min": 60 * 10**9, "h": 3600 * 10**9, "D": 86400 * 10**9}
_DAY_NS = 86400 * 10**9


def _to_ns(times: list[datetime]) -> np.ndarray:
    """UTC nanoseconds since the epoch; naive datetimes are taken as UTC (never local time)."""
    utc = [t.astimezone(timezone.utc) if t.tzinfo else t.replace(tzinfo=timezone.utc) for t in times]
    return np.array([np.datetime64(t.replace(tzinfo=None), "ns") for t in utc]).astype("datetime64[ns]").astype(np.int64)


def _bins(times_ns: np.ndarray, spec: PeriodSpec) -> tuple[np.ndarray, np.ndarray]:
    """Start (inclusive) and end (exclusive) of the period each time falls in, as int64 ns.

    Multiples count from the first period that holds data (pandas ``resample``'s default
    ``origin="start_day"``): ``12H`` bins start at midnight of the first file's day.
    """
    if spec.unit in _NS:
        step = spec.n * _NS[spec.unit]
        origin = (times_ns.min() // _DAY_NS) * _DAY_NS
        start = origin + ((times_ns - origin) // step) * step
        return start, start + step
    if spec.unit == "W":
        days = times_ns // _DAY_NS
        week_start_day = (spec.week_end + 1) % 7
        weekday = (days + 3) % 7  # 1970-01-01 was a Thursday (weekday 3)
        start_day = days - (weekday - week_start_day) % 7
        first = start_day.min()
        step = 7 * spec.n
        start_day = first + ((start_day - first) // step) * step
        return start_day * _DAY_NS, (start_day + step) * _DAY_NS
    unit = "M" if spec.unit == "M" else "Y"
    index = times_ns.astype("datetime64[ns]").astype(f"datetime64[{unit}]").astype(np.int64)
    first = index.min()
    index = first + ((index - first) // spec.n) * spec.n
    start = index.astype(f"datetime64[{unit}]").astype("datetime64[ns]").astype(np.int64)
    end = (index + spec.n).astype(f"datetime64[{unit}]").astype("datetime64[ns]").astype(np.int64)
    return start, end


def _ns_to_datetime(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=int(ns) // 1000)


def _sample(files: list[FileRef], times_ns: np.ndarray, sampling: str | float | int, seed: int) -> np.ndarray:
    """Indices (sorted) of the files kept by ``sampling``."""
    n = len(files)
    if isinstance(sampling, str):
        start, _ = _bins(times_ns, parse_period(sampling))
        # files are in time order: the first index of each bin is its earliest file
        _, first = np.unique(start, return_index=True)
        return np.sort(first)
    rng = np.random.default_rng(seed)
    if isinstance(sampling, float) and sampling < 1:
        count = int(round(sampling * n))
    else:
        count = int(sampling)
        if count > n:
            logger.info("sampling asks for %d files but only %d are in the window: keeping all", count, n)
    count = max(0, min(count, n))
    return np.sort(rng.choice(n, size=count, replace=False))


def batch_files(
    files: list[FileRef],
    options: BatchingOptions | None,
    data_type: str,
    *,
    seed: int = 0,
) -> list[FileBatch]:
    """Select and group files as a message's batching options say.

    1. Keep files whose batch time lies in the window: ``start_time`` inclusive; a date-only
       ``end_time`` includes that whole UTC day, a datetime ``end_time`` that instant.
    2. Sample (after the window, as Morpheus): a frequency string keeps the earliest file of
       each interval; a fraction < 1 keeps ``round(fraction * n)`` files at random; a count
       keeps that many at random (all when fewer). Random choices use ``seed``.
    3. Group by ``period`` (default ``D``). ``payload``: one batch with every kept file,
       spanning its first to last period. ``streaming``: one batch per non-empty period, in
       time order.

    Returns ``[]`` when no file is left (see :func:`plan_batches` for an error instead).
    """
    if data_type not in {"payload", "streaming"}:
        raise ValueError(f"data_type must be 'payload' or 'streaming', not {data_type!r}")
    options = options or BatchingOptions()
    ordered = sorted(files, key=lambda ref: (ref.batch_time, ref.url))
    if not ordered:
        return []

    times = _to_ns([ref.batch_time for ref in ordered])
    keep = np.ones(len(ordered), dtype=bool)
    window_start, window_end = options.window_start(), options.window_end_inclusive()
    if window_start is not None:
        keep &= times >= _to_ns([window_start])[0]
    if window_end is not None:
        keep &= times <= _to_ns([window_end])[0]
    index = np.flatnonzero(keep)
    if len(index) == 0:
        return []
    ordered = [ordered[i] for i in index]
    times = times[index]

    if options.sampling is not None:
        chosen = _sample(ordered, times, options.sampling, seed)
        ordered = [ordered[i] for i in chosen]
        times = times[chosen]
        if not ordered:
            return []

    starts, ends = _bins(times, parse_period(options.period))
    if data_type == "payload":
        return [
            FileBatch(
                period_start=_ns_to_datetime(starts.min()),
                period_end=_ns_to_datetime(ends.max()),
                files=ordered,
            )
        ]

    unique_starts, first_index, counts = np.unique(starts, return_index=True, return_counts=True)
    batches = []
    for i, (start, first, count) in enumerate(zip(unique_starts, first_index, counts, strict=True)):
        batches.append(
            FileBatch(
                period_start=_ns_to_datetime(start),
                period_end=_ns_to_datetime(ends[first]),
                files=ordered[first:first + count],
                batch_index=i,
                batch_count=len(unique_starts),
            )
        )
    return batches


def plan_batches(
    message: ControlMessage,
    storage_options: dict | None = None,
    *,
    seed: int = 0,
) -> list[FileBatch]:
    """List and batch a message's files; errors carry the message field to blame.

    Raises :class:`NoFilesMatched` / :class:`FileListingError` (field: the load task's
    ``files``) or :class:`NoFilesInWindow` (field: ``metadata.batching_options``). Turn them
    into a rejection with ``Rejection.for_message(message, exc.reason, exc.field)``.
    """
    options = message.metadata.batching_options
    files_field = message.files_field()
    try:
        refs = expand_globs(
            message.files,
            storage_options,
            date_pattern=options.iso_date_regex_pattern if options else None,
        )
    except FileSelectionError as exc:
        exc.field = files_field
        raise
    batches = batch_files(refs, options, message.metadata.data_type, seed=seed)
    if not batches:
        prefix = files_field.split("tasks[")[0]
        opts = options or BatchingOptions()
        first, last = refs[0].batch_time.isoformat(), refs[-1].batch_time.isoformat()
        raise NoFilesInWindow(
            f"{len(refs)} file(s) matched (batch times {first} .. {last}) but none are left after "
            f"start_time={opts.start_time}, end_time={opts.end_time}, sampling={opts.sampling}: "
            "widen the window or fix the dates",
            field=f"{prefix}metadata.batching_options",
        )
    return batches
