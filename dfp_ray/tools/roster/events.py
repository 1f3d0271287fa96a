"""The event table of the roster family: one numpy array per column, per person.

Why not a DataFrame per person: building and concatenating thousands of small frames (with
pandas' string arrays) cost more than generating the events; plain arrays are concatenated
once, and the one frame is made at the end.
"""

from __future__ import annotations

import numpy as np

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
COLUMNS = (
    "user", "ts", "session", "city", "ip", "dev", "slot", "app", "factor", "auth_name", "auth_city", "ok", "reason",
    "client", "code", "interactive", "dev_name", "dev_id", "trust", "kind", "note",
)  # fmt: skip


Events = dict[str, np.ndarray]  # one array per column of COLUMNS: cheaper than a DataFrame per person


INT_COLUMNS = ("user", "ts", "session", "city", "dev", "slot", "app", "auth_city", "code")
BOOL_COLUMNS = ("ok", "interactive")


def empty() -> Events:
    return {c: np.array([], dtype=np.int64 if c in INT_COLUMNS else bool if c in BOOL_COLUMNS else object)
            for c in COLUMNS}


def take(ev: Events, idx: np.ndarray) -> Events:
    return {c: v[idx] for c, v in ev.items()}


def concat(parts: list[Events]) -> Events:
    parts = [p for p in parts if len(p["ts"])]
    if not parts:
        return empty()
    return {c: np.concatenate([p[c] for p in parts]) for c in COLUMNS}


def _column(value, n: int) -> np.ndarray:
    """A scalar or array as an array of ``n`` (object for strings and None)."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (bool, np.bool_)):
        return np.full(n, bool(value))
    if isinstance(value, (int, np.integer)):
        return np.full(n, int(value), dtype=np.int64)
    out = np.empty(n, dtype=object)
    out[:] = [value] * n
    return out


def events_of(n: int, **columns) -> Events:
    """Events from columns given as arrays or scalars (broadcast); every column of COLUMNS must be given."""
    return {c: _column(columns[c], n) for c in COLUMNS}
