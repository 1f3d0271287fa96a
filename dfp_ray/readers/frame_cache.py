"""The on-disk cache of mapped frames (one entry per chunk of a batch).

Every key covers each file's URL, size, modification time (and ETag when the store has
one), the parser options and the mapping's id, so a changed file or mapping is never served stale.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import pandas as pd

from dfp_ray.messages import FileToDfOptions
from dfp_ray.pipeline.fsspec_loader import FileRef

logger = logging.getLogger(__name__)


def _is_nested_value(value: Any) -> bool:
    return isinstance(value, (list, dict, tuple)) or hasattr(value, "tolist") and not isinstance(value, str)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


class FrameCache:
    """On-disk cache of loaded (and mapped) frames, one Parquet file per input file.

    Round-trip: numbers, bools, strings, and timezone-aware timestamps come back with their
    dtypes. Columns holding lists or dicts (and object columns mixing types, which Parquet
    cannot store) are JSON-encoded on write and decoded on read, so a cached frame holds the
    same Python lists/dicts a fresh read does. Writes are atomic (temp file + rename), so a
    crash or a concurrent writer never leaves a half-written entry; a corrupt entry is
    treated as a miss and replaced.
    """

    VERSION = 1
    _META_KEY = b"dfp_ray.cache"

    def __init__(self, directory: str | Path, enabled: bool = True):
        self.directory = Path(directory)
        self.enabled = enabled
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def cacheable(ref: FileRef) -> bool:
        """Only files whose version is known can be cached without risking stale frames."""
        return ref.modified is not None or ref.etag is not None

    def key(self, ref: FileRef, options: FileToDfOptions | None, transform_id: str) -> str:
        """A hash of everything that decides the cached frame's content."""
        parts = {
            "v": self.VERSION,
            "url": ref.url,
            "size": ref.size,
            "modified": ref.modified.isoformat() if ref.modified else None,
            "etag": ref.etag,
            "options": (options or FileToDfOptions()).cache_token(),
            "transform": transform_id,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def batch_key(self, refs: list[FileRef], options: FileToDfOptions | None, transform_id: str) -> str | None:
        """One key for a batch (or chunk) of files mapped together; None when it must not be
        cached (cache disabled, or a file whose version is unknown)."""
        if not self.enabled or not refs or not all(self.cacheable(r) for r in refs):
            return None
        parts = "".join(self.key(r, options, transform_id) for r in refs)
        return hashlib.sha256(parts.encode()).hexdigest()

    def path_for(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.parquet"

    def get(self, key: str) -> pd.DataFrame | None:
        """The cached frame, or None. What was stored with it (``put(..., meta=...)``) is in
        ``frame.attrs["cache_meta"]``."""
        if not self.enabled:
            return None
        path = self.path_for(key)
        if not path.exists():
            with self._lock:
                self.misses += 1
            return None
        try:
            frame = self._read(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is just a miss
            logger.warning("cache entry %s unreadable (%s); re-reading the file", path, exc)
            with self._lock:
                self.misses += 1
            return None
        with self._lock:
            self.hits += 1
        return frame

    def put(self, key: str, frame: pd.DataFrame, meta: dict[str, Any] | None = None) -> None:
        """Store ``frame`` (atomically: a reader sees the old entry or the new one) and a small
        JSON-able ``meta`` dict with it (e.g. how many records the mapping skipped)."""
        if not self.enabled:
            return
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=path.parent)
        os.close(fd)
        try:
            self._write(frame, tmp, meta or {})
            os.replace(tmp, path)
        except Exception:
            Path(tmp).unlink(missing_ok=True)
            raise

    def clear(self) -> None:
        """Delete every entry (the directory itself is kept)."""
        if self.directory.exists():
            for child in self.directory.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)

    # -- encoding --------------------------------------------------------------------------

    @classmethod
    def _write(cls, frame: pd.DataFrame, path: str, meta: dict[str, Any] | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        frame = frame.reset_index(drop=True)
        frame.attrs = {}  # pandas writes attrs into the file's metadata: ours go in _META_KEY
        json_columns: list[str] = []
        encoded = {}
        for name in frame.columns:
            column = frame[name]
            if column.dtype != object:
                continue
            try:
                arrow_type = pa.array(column, from_pandas=True).type
                needs_json = pa.types.is_nested(arrow_type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
                needs_json = True
            if needs_json:
                json_columns.append(str(name))
                encoded[name] = column.map(
                    lambda v: json.dumps(v, default=_json_default) if _is_nested_value(v) or not pd.isna(v) else None
                ).astype(object)
        if encoded:
            frame = frame.assign(**{str(k): v for k, v in encoded.items()})
        table = pa.Table.from_pandas(frame, preserve_index=False)
        schema_meta = dict(table.schema.metadata or {})
        schema_meta[cls._META_KEY] = json.dumps(
            {"version": cls.VERSION, "json_columns": json_columns, "meta": meta or {}}).encode()
        pq.write_table(table.replace_schema_metadata(schema_meta), path)

    @classmethod
    def _read(cls, path: Path) -> pd.DataFrame:
        import pyarrow.parquet as pq

        # Single-threaded: entries are small and many are read at once from a thread pool.
        table = pq.ParquetFile(path).read(use_threads=False)
        info = json.loads((table.schema.metadata or {}).get(cls._META_KEY, b"{}"))
        frame = table.to_pandas(use_threads=False)
        for name in info.get("json_columns", []):
            frame[name] = frame[name].map(json.loads, na_action="ignore").astype(object)
        frame.attrs = {"cache_meta": info.get("meta", {})}
        return frame

