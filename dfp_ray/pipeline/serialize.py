"""Serialize (Morpheus's ``Serialize``): choose the output columns and render times as ISO-8601 UTC."""

from __future__ import annotations

import re

import pandas as pd

from dfp_ray.config import OutputConfig


def select_columns(df: pd.DataFrame, cfg: OutputConfig) -> pd.DataFrame:
    """Apply include/exclude column regexes (include first; exclude wins).

    >>> import pandas as pd
    >>> from dfp_ray.config import OutputConfig
    >>> df = pd.DataFrame(columns=["username", "reason_loss", "reason_z_loss", "mean_abs_z"])
    >>> list(select_columns(df, OutputConfig(exclude_columns=["_loss$"])).columns)
    ['username', 'mean_abs_z']
    """
    cols = list(df.columns)
    if cfg.include_columns:
        inc = [re.compile(p) for p in cfg.include_columns]
        cols = [c for c in cols if any(p.search(c) for p in inc)]
    if cfg.exclude_columns:
        exc = [re.compile(p) for p in cfg.exclude_columns]
        cols = [c for c in cols if not any(p.search(c) for p in exc)]
    return df[cols]


def serialize_times(df: pd.DataFrame) -> pd.DataFrame:
    """Datetime columns -> ISO-8601 UTC strings, so CSV and JSON agree and stay readable.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"timestamp": pd.to_datetime(["2022-08-30 03:04:05"], utc=True)})
    >>> serialize_times(df)["timestamp"].iloc[0]
    '2022-08-30T03:04:05.000000Z'
    """
    out = df.copy()
    for col in out.columns:
        if isinstance(out[col].dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(out[col]):
            ts = out[col]
            if getattr(ts.dt, "tz", None) is None:
                ts = ts.dt.tz_localize("UTC")
            out[col] = ts.dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return out


def serialize(df: pd.DataFrame, cfg: OutputConfig) -> pd.DataFrame:
    """The rows as they are written: selected columns, times as text."""
    return serialize_times(select_columns(df, cfg))
