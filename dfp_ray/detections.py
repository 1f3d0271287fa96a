"""From scores to detections: filter, post-process, serialize (REFERENCE A4 steps 12-14)."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pandas as pd

from dfp_ray.config import DetectionConfig, OutputConfig


def filter_detections(scored: pd.DataFrame, cfg: DetectionConfig) -> pd.DataFrame:
    """Rows whose score strictly exceeds the threshold."""
    return scored[scored[cfg.score_column] > cfg.threshold]


def add_postprocessing(
    scored: pd.DataFrame, *, model_version: str | pd.Series, detected_at: datetime | None = None
) -> pd.DataFrame:
    """Add ``event_time`` (ISO-8601 UTC, when scored) and ``model_version`` (``name:version``)."""
    when = (detected_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    out = scored.copy()
    out["event_time"] = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    out["model_version"] = model_version
    return out


def select_columns(df: pd.DataFrame, cfg: OutputConfig) -> pd.DataFrame:
    """Apply include/exclude column regexes (include first; exclude wins)."""
    cols = list(df.columns)
    if cfg.include_columns:
        inc = [re.compile(p) for p in cfg.include_columns]
        cols = [c for c in cols if any(p.search(c) for p in inc)]
    if cfg.exclude_columns:
        exc = [re.compile(p) for p in cfg.exclude_columns]
        cols = [c for c in cols if not any(p.search(c) for p in exc)]
    return df[cols]


def serialize_times(df: pd.DataFrame) -> pd.DataFrame:
    """Datetime columns -> ISO-8601 UTC strings, so CSV and JSON agree and stay readable."""
    out = df.copy()
    for col in out.columns:
        if isinstance(out[col].dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(out[col]):
            ts = out[col]
            if getattr(ts.dt, "tz", None) is None:
                ts = ts.dt.tz_localize("UTC")
            out[col] = ts.dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return out
