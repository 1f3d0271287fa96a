"""Per-user rolling windows for streaming messages (Morpheus's ``DFPRollingWindowStage``).

A streaming message does not train on (or score) each batch alone: a user's rows accumulate in
a window, and the window is *emitted* once it holds ``min_history`` rows and ``min_increment``
rows arrived since the last emit. Two cache modes, as Morpheus has them:

- ``aggregate`` (training; Morpheus: 300 / 300 / 60 days): the window keeps the last
  ``max_history_days`` of rows; an emit hands over the whole window and keeps it.
- ``batch`` (inference; Morpheus: 1 / 0): an emit hands over what accumulated and flushes it.
  With 1 / 0 every batch is emitted as it arrives and nothing is kept.

Exactly once: each row is counted once. A row already in the window (same key: its event id,
see :mod:`dfp_ray.row_keys`) is not counted again, and the window remembers the last
``applied_memory`` work items (run / message / batch) it counted, so a message redelivered after
a crash changes nothing, whatever mode. A checkpoint (:meth:`RollingWindow.save`, Parquet, the
counters in the file's metadata) holds both; a restarted actor or stream resumes from it.

Bounded memory: a window holds at most ``max_rows`` rows (the newest). A row no newer than the
oldest row kept once the cap was reached is not admitted (it would be the first to go), which
also keeps rows the cap evicted from coming back as "new" when redelivered. An incoming batch
larger than the cap is cut to its newest ``max_rows`` rows before anything is combined.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dfp_ray.config import CacheSettings
from dfp_ray.row_keys import row_keys

CHECKPOINT_FORMAT = 2
_META_KEY = b"dfp_window"
_NEW = "__dfp_new"


@dataclass
class WindowAppend:
    """What one :meth:`RollingWindow.append` did."""

    emitted: pd.DataFrame | None = None  # the rows to train on / score now (None: not due)
    added: int = 0  # rows counted as new
    duplicates: int = 0  # rows the window already held (or twice in the batch)
    too_old: int = 0  # older than the window's span, or below the cap's floor
    excluded: int = 0  # keys the caller excluded (analyst verdict: malicious)
    capped: int = 0  # new rows dropped by max_rows (the oldest of an oversized batch)
    already_applied: bool = False  # this work item was counted before: nothing changed


@dataclass
class RollingWindow:
    """One user's window (or the generic model's: every user's rows).

    >>> from dfp_ray.config import CacheSettings
    >>> t = pd.Timestamp("2022-08-01", tz="UTC")
    >>> day = lambda d, n: pd.DataFrame({"timestamp": [t + pd.Timedelta(days=d)] * n,
    ...                                  "event_id": [f"{d}-{i}" for i in range(n)]})
    >>> win = RollingWindow(CacheSettings(min_history=5, min_increment=3), "timestamp", "event_id")
    >>> win.append(day(0, 3), work="m0").emitted is None
    True
    >>> len(win.append(day(1, 3), work="m1").emitted)   # 6 rows, 6 new: due
    6
    >>> win.append(day(1, 3), work="m1").already_applied  # the same message again: counted once
    True
    >>> out = win.append(day(1, 3), work="m2")            # the same rows in another message
    >>> out.duplicates, out.emitted is None, win.new_since_emit
    (3, True, 0)
    """

    cfg: CacheSettings
    time_column: str
    id_column: str | None = "event_id"
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)
    new_since_emit: int = 0
    newest: pd.Timestamp | None = None  # newest row time ever seen: the span never moves back
    floor: pd.Timestamp | None = None  # rows at or before this are not admitted (the cap evicted up to it)
    applied: list[str] = field(default_factory=list)
    applied_memory: int = 256
    emits: int = 0

    # ------------------------------------------------------------------ appending
    def append(self, frame: pd.DataFrame, *, work: str | None = None,
               exclude: set[str] | frozenset[str] | None = None) -> WindowAppend:
        """Add a batch of rows; returns what was counted and, when the window is due, the rows
        to hand on (:attr:`WindowAppend.emitted`).

        ``work`` names the batch (run / message / batch index): a work item the window already
        counted changes nothing. ``exclude``: row keys never admitted (malicious verdicts)."""
        if work is not None and work in self.applied:
            return WindowAppend(already_applied=True)
        out = WindowAppend()
        time = self.time_column
        incoming = frame.reset_index(drop=True)
        if len(incoming):
            keys = row_keys(incoming, self.id_column)
            held = row_keys(self.rows, self.id_column) if len(self.rows) else pd.Series([], dtype=object)
            dup = keys.duplicated() | keys.isin(set(held))
            out.duplicates = int(dup.sum())
            bad = keys.isin(exclude) & ~dup if exclude else pd.Series(False, index=incoming.index)
            out.excluded = int(bad.sum())
            newest = incoming[time].max()
            if self.newest is not None and not pd.isna(self.newest):
                newest = max(newest, self.newest)
            self.newest = newest
            cutoff = newest - pd.Timedelta(days=self.cfg.max_history_days)
            old = incoming[time] < cutoff
            if self.floor is not None:
                old |= incoming[time] <= self.floor
            old &= ~dup & ~bad
            out.too_old = int(old.sum())
            fresh = incoming[~(dup | bad | old)]
            if len(fresh) > self.cfg.max_rows:  # an oversized batch: only its newest rows could stay
                fresh = fresh.sort_values(time, kind="stable").iloc[-self.cfg.max_rows:]
                out.capped = int((~(dup | bad | old)).sum()) - len(fresh)
            kept = self.rows[self.rows[time] >= cutoff] if len(self.rows) else self.rows
            combined = pd.concat([kept.assign(**{_NEW: False}), fresh.assign(**{_NEW: True})],
                                 ignore_index=True) if len(kept) else fresh.assign(**{_NEW: True})
            combined = combined.sort_values(time, kind="stable").reset_index(drop=True)
            if len(combined) > self.cfg.max_rows:
                evicted = combined.iloc[: len(combined) - self.cfg.max_rows]
                self.floor = evicted[time].max() if self.floor is None else max(self.floor, evicted[time].max())
                out.capped += int(evicted[_NEW].sum())
                combined = combined.iloc[len(combined) - self.cfg.max_rows:].reset_index(drop=True)
            out.added = int(combined[_NEW].sum())
            self.rows = combined.drop(columns=_NEW)
            self.new_since_emit += out.added
        if work is not None:
            self.applied = [*self.applied, work][-self.applied_memory:]
        if len(self.rows) >= self.cfg.min_history and self.new_since_emit >= self.cfg.min_increment and len(self.rows):
            out.emitted = self.rows.copy()
            self.new_since_emit = 0
            self.emits += 1
            if self.cfg.cache_mode == "batch":
                self.rows = self.rows.iloc[0:0]
        return out

    def exclude(self, keys: set[str] | frozenset[str]) -> int:
        """Drop rows with these keys now (a malicious verdict that came after they arrived)."""
        if not keys or not len(self.rows):
            return 0
        bad = row_keys(self.rows, self.id_column).isin(keys)
        if bad.any():
            self.rows = self.rows[~bad.to_numpy()].reset_index(drop=True)
        return int(bad.sum())

    def waiting_reason(self) -> str:
        c = self.cfg
        return (f"rolling window holds {len(self.rows)} rows, {self.new_since_emit} new "
                f"(needs {c.min_history} and {c.min_increment} new)")

    # --------------------------------------------------------------- checkpoints
    def _metadata(self) -> dict:
        def ts(value: pd.Timestamp | None) -> str | None:
            return None if value is None or pd.isna(value) else pd.Timestamp(value).isoformat()

        return {"format": CHECKPOINT_FORMAT, "cache_mode": self.cfg.cache_mode, "new_since_emit": self.new_since_emit,
                "newest": ts(self.newest), "floor": ts(self.floor), "applied": self.applied, "emits": self.emits,
                "object_columns": [c for c in self.rows.columns if self.rows[c].dtype == object]}

    def to_bytes(self) -> bytes:
        import pyarrow as pa
        import pyarrow.parquet as pq

        frame = self.rows.copy()
        frame.attrs = {}
        table = pa.Table.from_pandas(frame, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[_META_KEY] = json.dumps(self._metadata()).encode()
        buf = io.BytesIO()
        pq.write_table(table.replace_schema_metadata(meta), buf)
        return buf.getvalue()

    def save(self, url: str | Path, storage_options: dict | None = None) -> None:
        """Checkpoint the window atomically: a crash never leaves a half-written file (local:
        written, fsync'd, renamed; ``s3://``: one object PUT)."""
        data = self.to_bytes()
        target = str(url)
        if "://" in target and not target.startswith("file://"):
            from dfp_ray.readers.storage import open_fs

            fs, path = open_fs(target, storage_options or {})
            with fs.open(path, "wb") as fh:
                fh.write(data)
            return
        path = Path(target.removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)

    @classmethod
    def load(cls, url: str | Path, cfg: CacheSettings, time_column: str, id_column: str | None, *,
             storage_options: dict | None = None, applied_memory: int = 256) -> RollingWindow | None:
        """The window checkpointed at ``url``, or None when there is none."""
        import pyarrow.parquet as pq

        target = str(url)
        if "://" in target and not target.startswith("file://"):
            from dfp_ray.readers.storage import open_fs

            fs, path = open_fs(target, storage_options or {})
            if not fs.exists(path):
                return None
            table = pq.read_table(io.BytesIO(fs.cat_file(path)))
        else:
            path = Path(target.removeprefix("file://"))
            if not path.exists():
                return None
            table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(_META_KEY)
        frame = table.to_pandas()
        if raw is None:  # format 1: the counter was a column
            new = int(frame["__new_since_emit"].iloc[0]) if "__new_since_emit" in frame and len(frame) else 0
            frame = frame.drop(columns="__new_since_emit", errors="ignore")
            newest = frame[time_column].max() if len(frame) else None
            return cls(cfg, time_column, id_column, frame, new, newest, applied_memory=applied_memory)
        meta = json.loads(raw)
        frame = _as_objects(frame, meta.get("object_columns", []))

        def ts(value: str | None) -> pd.Timestamp | None:
            return None if value is None else pd.Timestamp(value)

        return cls(cfg, time_column, id_column, frame, int(meta.get("new_since_emit", 0)), ts(meta.get("newest")),
                   ts(meta.get("floor")), list(meta.get("applied", [])), applied_memory, int(meta.get("emits", 0)))


def _as_objects(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The columns that were Python objects before the checkpoint (text as the schema mapping
    makes it, None for missing) become objects again, not Parquet's string dtype: a restored
    window holds exactly what a window that never stopped holds."""
    for col in columns:
        if col in frame.columns and frame[col].dtype != object:
            values = frame[col].astype(object)
            frame[col] = values.where(frame[col].notna(), None).astype(object)
    return frame


def is_passthrough(cfg: CacheSettings) -> bool:
    """True when a window would emit every batch as it arrives and keep nothing (batch mode,
    min history 1, min increment 0: Morpheus's inference default), so none is needed."""
    return cfg.cache_mode == "batch" and cfg.min_history <= 1 and cfg.min_increment == 0
