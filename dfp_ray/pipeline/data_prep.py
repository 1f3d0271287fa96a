"""Data prep (Morpheus's ``DFPDataPrep``): derived per-user-per-day counters, time features, dtypes.

Runs on the frame that reaches it (a user's rows, or an actor's), as Morpheus does, so the
counters see the whole of the user's day in that frame. Time features (hour of day, day of
week, weekend) depend on the row alone.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from dfp_ray.schemas.mapping import SkipReport, flatten_any, map_fields
from dfp_ray.schemas.model import MISSING_CATEGORY, SourceSchema, TimeFeatureSpec

log = logging.getLogger(__name__)


def add_derived_features(df: pd.DataFrame, schema: SourceSchema, *, part: str | None = None) -> pd.DataFrame:
    """Sort by time and compute the per-user-per-UTC-day counters (vectorised groupby/cumsum).

    ``running_count`` is the user's events so far that day starting at 0 (Morpheus's
    ``logcount``); ``distinct_so_far`` is the number of distinct values so far that day,
    starting at 1 (``locincrement``, ``appincrement``). Missing values count as one value.
    ``part`` (optional) names a column that splits the frame into separate frames: rows of
    different parts never share a counter (see :func:`prepare_features_many`).
    """
    user, time = schema.user_column, schema.time_column
    df = df.sort_values(time, kind="stable").reset_index(drop=True)
    add_time_features(df, schema)
    if not schema.counters or df.empty:
        for c in schema.counters:
            df[c.name] = pd.Series(dtype="int64")
        return df
    day = df[time].dt.tz_convert("UTC").dt.floor(schema.counter_period) if schema.counter_period in (
        "D", "h", "H", "min", "T"
    ) else df[time].dt.tz_convert("UTC").dt.to_period(schema.counter_period).dt.start_time
    keys = [df[user], day] + ([df[part]] if part is not None else [])
    grouped = df.groupby(keys, sort=False, dropna=False)
    for c in schema.counters:
        if c.kind == "running_count":
            df[c.name] = grouped.cumcount().astype("int64")
        else:
            values = df[c.column].astype(object).where(df[c.column].notna(), MISSING_CATEGORY)
            seen = {"u": df[user], "d": day, "v": values, **({"p": df[part]} if part is not None else {})}
            first_seen = ~pd.DataFrame(seen).duplicated()
            df[c.name] = first_seen.astype("int64").groupby(keys, sort=False, dropna=False).cumsum()
    return df


def add_time_features(df: pd.DataFrame, schema: SourceSchema) -> None:
    """The schema's time features, in place (see :func:`time_feature_values`)."""
    if not schema.time_features:
        return
    when = pd.to_datetime(df[schema.time_column], utc=True)
    df_values = time_feature_values(when.dt.as_unit("ns").array.asi8, schema.time_features)
    for name, values in df_values.items():
        df[name] = values


_NS_PER_S = 1_000_000_000
_NAT = np.iinfo(np.int64).min  # NaT as int64 nanoseconds


def time_feature_values(times_ns: np.ndarray, specs: list[TimeFeatureSpec]) -> dict[str, np.ndarray]:
    """The time features of ``specs`` for times given as int64 nanoseconds since the epoch (UTC;
    NaT as int64 min): cyclic ``<name>_sin``/``<name>_cos`` (hour of day with minutes as a
    fraction; day of week, Monday 0, with the hour as a fraction) and the boolean ``weekend``,
    each in its own time zone. A missing time gives NaN (``weekend``: False).

    One definition for the batch pipeline (:func:`add_time_features`) and the per-request
    scorer (:mod:`dfp_ray.serve.dfp_fast`): UTC is integer arithmetic on the epoch seconds (no
    pandas objects; equal to pandas' ``dt.hour`` etc.), other zones go through pandas."""
    ns = np.asarray(times_ns, dtype=np.int64)
    missing = ns == _NAT
    out: dict[str, np.ndarray] = {}
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # timezone -> (hour with fractions, day of week)
    for spec in specs:
        if spec.timezone not in parts:
            parts[spec.timezone] = _clock_parts(np.where(missing, 0, ns), spec.timezone, missing)
        hour, dow = parts[spec.timezone]
        if spec.kind == "weekend":
            out[spec.name] = (dow >= 5) & ~missing
            continue
        if spec.kind == "hour_of_day":
            angle = 2 * np.pi * hour / 24.0
        else:
            angle = 2 * np.pi * (dow + hour / 24.0) / 7.0
        out[f"{spec.name}_sin"] = np.sin(angle)
        out[f"{spec.name}_cos"] = np.cos(angle)
    return out


def _clock_parts(ns: np.ndarray, timezone: str, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hour + minute/60 + second/3600, day of week as float; NaN where missing) in ``timezone``."""
    if timezone == "UTC":
        secs = ns // _NS_PER_S
        in_day = secs % 86_400
        h, m, s = in_day // 3600, (in_day % 3600) // 60, in_day % 60
        dow = ((secs // 86_400 + 3) % 7).astype(np.float64)  # 1970-01-01 was a Thursday (3)
    else:
        local = pd.DatetimeIndex(ns.view("datetime64[ns]")).tz_localize("UTC").tz_convert(timezone)
        h, m, s = local.hour.to_numpy(), local.minute.to_numpy(), local.second.to_numpy()
        dow = local.dayofweek.to_numpy().astype(np.float64)
    hour = h.astype(np.float64) + m / 60.0 + s / 3600.0
    if missing.any():
        hour = np.where(missing, np.nan, hour)
        dow = np.where(missing, np.nan, dow)
    return hour, dow


def finalize_feature_types(df: pd.DataFrame, schema: SourceSchema) -> pd.DataFrame:
    """Missing categorical values become the category 'nan'; binaries bool; numerics float."""
    df = df.copy()
    for col in schema.features.categorical:
        df[col] = df[col].astype(object).where(df[col].notna(), MISSING_CATEGORY).astype(str)
    for col in schema.features.binary:
        df[col] = df[col].astype("boolean").fillna(False).astype(bool)
    for col in schema.features.numeric:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


def frame_from_records(
    records: list[dict] | pd.DataFrame, schema: SourceSchema, *, derive: bool = True
) -> tuple[pd.DataFrame, SkipReport]:
    """Raw records (dicts or a flattened frame) -> mapped, sorted frame with derived features.

    ``derive=False`` stops after the field mapping (the pipeline derives counters later, on
    the frame that reaches data preparation, as Morpheus does).
    """
    raw = flatten_any(records)
    mapped, report = map_fields(raw, schema)
    if derive:
        mapped = finalize_feature_types(add_derived_features(mapped, schema), schema)
    return mapped, report


def prepare_features(mapped: pd.DataFrame, schema: SourceSchema) -> pd.DataFrame:
    """Data preparation step: counters + feature dtypes on an already-mapped frame."""
    return finalize_feature_types(add_derived_features(mapped, schema), schema)


_PART = "__dfp_part__"


def prepare_features_many(frames: Sequence[pd.DataFrame], schema: SourceSchema) -> list[pd.DataFrame]:
    """:func:`prepare_features` of each frame (the same rows, order, counters and feature
    dtypes), computed on the frames stacked into one.

    Why: a pool actor prepares hundreds of small user frames before their grouped fits, and for
    a frame of a hundred rows the ~30 pandas calls of data prep cost far more than the rows
    (~20 ms per user, measured); stacked, those calls are paid once per group. A column marks
    which frame a row came from, so counters never span two frames, and the stable time sort
    keeps each frame's rows in the order its own sort gives them.
    """
    first = frames[0].dtypes if len(frames) else None
    if len(frames) <= 1 or any(not f.dtypes.equals(first) for f in frames[1:]):
        # stacking frames whose columns differ in dtype would upcast values (ints to floats
        # where another frame has NaN: "1" would become "1.0"): those are prepared one by one
        return [prepare_features(f, schema) for f in frames]
    sizes = np.array([len(f) for f in frames])
    stacked = pd.concat(list(frames), ignore_index=True)
    stacked[_PART] = np.repeat(np.arange(len(frames)), sizes)
    prepared = finalize_feature_types(add_derived_features(stacked, schema, part=_PART), schema)
    parts = prepared.pop(_PART).to_numpy()
    order = np.argsort(parts, kind="stable")  # each frame's rows, in the prepared (time) order
    bounds = np.concatenate([[0], np.cumsum(np.bincount(parts, minlength=len(frames)))])
    return [prepared.iloc[order[a:b]].reset_index(drop=True) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

