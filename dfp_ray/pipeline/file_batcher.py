"""File batcher (Morpheus's ``FileBatcher``): keep files inside the message's window, sample, group by period.

One batch for a ``payload`` message, one batch per period (time order) for a ``streaming``
message. :func:`plan_batches` lists and batches a message's files and raises
:class:`NoFilesMatched` / :class:`NoFilesInWindow` naming the field to blame.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from dfp_ray.messages import BatchingOptions, ControlMessage, PeriodSpec, parse_period
from dfp_ray.pipeline.fsspec_loader import FileRef, FileSelectionError, NoFilesInWindow, expand_globs

logger = logging.getLogger(__name__)


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
       ``end_time`` includes that whole UTC day, a datetime ``end_time`` that instant. A file
       whose name carries no date is always kept: its modification time says nothing about
       the events inside, so its rows are windowed by their own time instead
       (:func:`keep_rows_in_window`, applied to every loaded row).
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
    keep |= ~np.fromiter((ref.dated for ref in ordered), dtype=bool, count=len(ordered))
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
    roots: list[str] | None = None,
) -> list[FileBatch]:
    """List and batch a message's files; errors carry the message field to blame.

    Raises :class:`NoFilesMatched` / :class:`FileListingError` (field: the load task's
    ``files``), :class:`OutsideDataRoots` (the same field; with ``roots``, the data roots) or
    :class:`NoFilesInWindow` (field: ``metadata.batching_options``). Turn them
    into a rejection with ``Rejection.for_message(message, exc.reason, exc.field)``.
    """
    options = message.metadata.batching_options
    files_field = message.files_field()
    try:
        refs = expand_globs(
            message.files,
            storage_options,
            date_pattern=options.iso_date_regex_pattern if options else None,
            roots=roots,
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


OUTSIDE_WINDOW = "outside the message's time window"


def keep_rows_in_window(
    frame: pd.DataFrame, time_column: str, options: BatchingOptions | None
) -> tuple[pd.DataFrame, int]:
    """The rows whose own time lies in the message's ``[start_time, end_time]`` window, and
    how many were dropped.

    Files are batched by the time in their names; the rows inside may still lie far outside
    the window (a clock set to 1970 or 2100, a misnamed file, one raw file holding several
    days): such rows must not train or be scored as if they were in it.

    >>> import pandas as pd
    >>> from dfp_ray.messages import BatchingOptions
    >>> rows = pd.DataFrame({"timestamp": pd.to_datetime(["1970-01-01", "2022-08-02", "2100-01-01"], utc=True)})
    >>> kept, dropped = keep_rows_in_window(rows, "timestamp", BatchingOptions(start_time="2022-08-01", end_time="2022-08-31"))
    >>> kept["timestamp"].dt.year.tolist(), dropped
    ([2022], 2)
    """
    if options is None or frame.empty:
        return frame, 0
    start, end = options.window_start(), options.window_end_inclusive()
    if start is None and end is None:
        return frame, 0
    times = frame[time_column]
    keep = pd.Series(True, index=frame.index)
    if start is not None:
        keep &= times >= pd.Timestamp(start)
    if end is not None:
        keep &= times <= pd.Timestamp(end)
    dropped = int((~keep).sum())
    return (frame[keep] if dropped else frame), dropped
