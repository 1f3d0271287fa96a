"""Stable row keys: every event gets an id that is the same each time the same record is read.

Exactly-once outputs rest on them: the sink writes a row once per run by its event id, a rolling
window counts a row once by its key, an analyst's verdict names an event by it. Sources whose
records carry an id (Duo ``txid``, Azure ``properties.id``) use it; a record without one gets a
synthetic id, ``row:<16 hex digits>``, a hash of the record's mapped values (not of the file it
came from, so the same record in two files is one event, and not of anything computed later,
such as scores or the time it was scored).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ROW_KEY_PREFIX = "row:"
DEFAULT_ID_COLUMN = "event_id"
# Columns that say where or when a row was handled, not what the event was.
NOT_PART_OF_THE_EVENT = frozenset({"_source_file"})


def hash_keys(frame: pd.DataFrame, columns: list[str] | None = None) -> pd.Series:
    """``row:<hex>`` per row from the values of ``columns`` (default: every column but the ones
    naming where a row came from). Missing values hash alike whatever their spelling (None, NaN).

    >>> df = pd.DataFrame({"u": ["a", "a"], "x": [1.0, None], "_source_file": ["f1", "f2"]})
    >>> keys = hash_keys(df)
    >>> bool(keys.str.startswith("row:").all()), keys.iloc[0] != keys.iloc[1]
    (True, True)
    >>> bool(hash_keys(df.assign(_source_file="other")).equals(keys))
    True
    """
    cols = [c for c in (columns if columns is not None else frame.columns) if c not in NOT_PART_OF_THE_EVENT]
    if frame.empty:
        return pd.Series([], index=frame.index, dtype=object)
    text = frame[sorted(cols)].astype("string").fillna("\x00")
    hashed = pd.util.hash_pandas_object(text, index=False).to_numpy(dtype=np.uint64)
    return pd.Series(np.char.add(ROW_KEY_PREFIX, _hex(hashed)).astype(object), index=frame.index)


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_SHIFTS = np.arange(60, -4, -4, dtype=np.uint64)


def _hex(values: np.ndarray) -> np.ndarray:
    """uint64 values as 16-digit lowercase hex strings, without a Python loop per value."""
    nibbles = ((values[:, None] >> _SHIFTS) & np.uint64(15)).astype(np.intp)
    return np.ascontiguousarray(_HEX[nibbles]).view("S16").ravel().astype("U16")


def fill_event_ids(frame: pd.DataFrame, id_column: str | None) -> pd.DataFrame:
    """``frame`` with every row's event id set: the record's own where it has one, else a
    synthetic ``row:<hex>`` (see the module docstring). A schema without an id column gets one
    named ``event_id``. Returns the frame itself when nothing is missing.

    >>> df = pd.DataFrame({"event_id": ["e1", None], "u": ["a", "b"]})
    >>> out = fill_event_ids(df, "event_id")
    >>> out["event_id"].iloc[0], out["event_id"].iloc[1].startswith("row:")
    ('e1', True)
    """
    column = id_column or DEFAULT_ID_COLUMN
    if column in frame.columns:
        ids = frame[column]
        missing = ids.isna() | (ids.astype("string").str.len() == 0)
        if not missing.any():
            return frame
        others = [c for c in frame.columns if c != column]
        out = frame.copy()
        out[column] = ids.astype(object).where(~missing, hash_keys(frame.loc[missing], others))
        return out
    out = frame.copy()
    out[column] = hash_keys(frame)
    return out


def row_keys(frame: pd.DataFrame, id_column: str | None) -> pd.Series:
    """The key of each row: its event id, else the hash of its values (as strings)."""
    column = id_column or DEFAULT_ID_COLUMN
    if column not in frame.columns:
        return hash_keys(frame)
    ids = frame[column]
    missing = ids.isna()
    if not missing.any():
        return ids.astype(str)
    others = [c for c in frame.columns if c != column]
    return ids.astype(object).where(~missing, hash_keys(frame, others)).astype(str)
