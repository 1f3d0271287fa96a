"""Reading raw log files into DataFrames, with an on-disk cache of (mapped) frames.

:func:`read_raw_file` reads one file (JSON array, JSON lines, CSV, Parquet; local or any
fsspec URL) and flattens nested JSON into dotted columns (``properties.deviceDetail.browser``).
:func:`load_files` reads many files on a thread pool (storage waits overlap). Without a
per-file transform it parses every file's JSON records and flattens them all in ONE pass
(Arrow, GC paused): a DataFrame per small file costs milliseconds each. With a ``transform``
(and optionally a per-file ``cache``) each file is mapped and cached on its own. A file that
cannot be read is reported in ``LoadResult.errors`` and the others still load, so one corrupt
upload does not stall a run.

:func:`read_and_map` is what the pipeline calls: read a batch (or one chunk of it, on a user
actor), map it with the source schema once, through a cache entry for the whole chunk
(:meth:`FrameCache.batch_key`). Every key covers each file's URL, size, modification time
(and ETag when the store has one), the parser options and the mapping's id, so a changed
file or a changed mapping is never served stale.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from dfp_ray.files import FileRef
from dfp_ray.messages import FileToDfOptions

__all__ = [
    "FileReadError",
    "FileError",
    "LoadResult",
    "FrameCache",
    "detect_file_type",
    "flatten_records",
    "read_raw_file",
    "load_files",
    "read_and_map",
    "SOURCE_FILE_COLUMN",
]

logger = logging.getLogger(__name__)

SOURCE_FILE_COLUMN = "_source_file"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

_COMPRESSION_SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zip": "zip"}
_TYPE_BY_SUFFIX = {
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class FileReadError(Exception):
    """A file could not be read or parsed; ``reason`` says what to do about it."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"cannot read {url}: {reason}")
        self.url = url
        self.reason = reason


class FileError(NamedTuple):
    url: str
    reason: str


@dataclass
class LoadResult:
    frame: pd.DataFrame
    files_loaded: int
    files_from_cache: int
    errors: list[FileError] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return len(self.frame)


# --------------------------------------------------------------------------------------------
# Reading one file
# --------------------------------------------------------------------------------------------


def _name_parts(url: str) -> tuple[str, str | None]:
    """(data suffix, compression) of a file name: ``a.json.gz`` -> (``.json``, ``gzip``)."""
    name = url.rsplit("/", 1)[-1].lower()
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        return "", None
    suffix = "." + suffix
    compression = _COMPRESSION_SUFFIXES.get(suffix)
    if compression:
        _, dot2, inner = stem.rpartition(".")
        return ("." + inner if dot2 else ""), compression
    return suffix, None


def detect_file_type(url: str, head: bytes | None = None) -> str:
    """``json``, ``csv`` or ``parquet``, by extension, else by the first bytes (``head``)."""
    suffix, _ = _name_parts(url)
    if suffix in _TYPE_BY_SUFFIX:
        return _TYPE_BY_SUFFIX[suffix]
    if head is not None:
        if head.startswith(b"PAR1"):
            return "parquet"
        first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
        if first in (b"[", b"{"):
            return "json"
        return "csv"
    raise ValueError(f"cannot tell the type of {url!r} from its name; set file_to_df_options.file_type")


def _read_bytes(url: str, storage_options: dict | None, compression: str | None) -> bytes:
    """The whole file in one request (``cat_file``: one GET on S3, where ``open`` adds a HEAD)."""
    from fsspec.compression import compr
    from fsspec.core import url_to_fs

    remote = "://" in url and not url.startswith("file://")
    fs, path = url_to_fs(url, **((storage_options or {}) if remote else {}))
    data = fs.cat_file(path)
    if compression:
        if compression not in compr or compr[compression] is None:
            raise ValueError(f"unsupported compression {compression!r} (use one of {sorted(k for k in compr if k)})")
        with compr[compression](io.BytesIO(data), mode="rb") as fh:
            return fh.read()
    return data


try:  # ~2x faster than the standard library on log records; optional
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency, but keep loading without it
    _orjson = None


def _loads(text: str) -> Any:
    """``json.loads`` semantics and errors, parsed by orjson when it can (valid JSON, the usual
    case); anything orjson refuses (NaN literals, bad input) goes through ``json`` for its
    standard result or error message with line and column."""
    if _orjson is not None:
        try:
            return _orjson.loads(text)
        except _orjson.JSONDecodeError:
            pass
    return json.loads(text)


class _GcPause:
    """Pause the cyclic garbage collector while records are parsed and flattened.

    Parsing allocates hundreds of thousands of dicts, none of them garbage, and each
    allocation burst triggers a scan of all of them (measured: 40% of the parse time).
    Threads loading at once share one pause; the collector's previous state comes back when
    the last of them finishes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._was_enabled = True

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0 and self._was_enabled:
                    gc.enable()


_gc_paused = _GcPause()


def _json_error(url: str, exc: json.JSONDecodeError, lines: bool) -> FileReadError:
    hint = (
        "is each line one JSON object? set parser_kwargs.lines=false if the file is one JSON array"
        if lines
        else "if the file holds one JSON object per line, set parser_kwargs.lines=true"
    )
    return FileReadError(url, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg} ({hint})")


def _parse_json_records(url: str, text: str, lines: bool | None, nrows: int | None) -> list[Any]:
    stripped = text.lstrip()
    if not stripped:
        return []
    if lines is None:
        if stripped.startswith("["):
            lines = False
        else:
            try:
                return [_loads(text)]  # a single object
            except json.JSONDecodeError as exc:
                if exc.msg != "Extra data":
                    raise _json_error(url, exc, lines=False) from None
                lines = True
    if not lines:
        try:
            document = _loads(text)
        except json.JSONDecodeError as exc:
            raise _json_error(url, exc, lines=False) from None
        return document if isinstance(document, list) else [document]

    rows = [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if nrows is not None:
        rows = rows[:nrows]
    try:
        # One parse for all lines (C speed) instead of one json.loads per line.
        return _loads("[" + ",".join(line for _, line in rows) + "]")
    except json.JSONDecodeError:
        for number, line in rows:  # find the culprit for the error message
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                raise FileReadError(
                    url,
                    f"invalid JSON on line {number}: {exc.msg} at column {exc.colno} "
                    "(set parser_kwargs.lines=false if the file is one JSON array)",
                ) from None
        raise FileReadError(url, "invalid JSON lines") from None


def _json_to_records(url: str, data: bytes, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """A JSON file's records, not yet flattened (a batch of files is flattened in one go)."""
    encoding = kwargs.pop("encoding", None) or "utf-8-sig"
    lines = kwargs.pop("lines", None)
    orient = kwargs.pop("orient", None)
    nrows = kwargs.pop("nrows", None)
    if kwargs:
        raise FileReadError(url, f"parser_kwargs {sorted(kwargs)} do not apply to JSON files")
    if lines is None and _name_parts(url)[0] in {".jsonl", ".ndjson"}:
        lines = True
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise FileReadError(url, f"cannot decode as {encoding}: {exc} (set parser_kwargs.encoding)") from None

    if orient not in (None, "records"):
        try:
            frame = pd.read_json(io.StringIO(text), orient=orient, lines=bool(lines), nrows=nrows if lines else None)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:  # pandas raises all of these
            raise FileReadError(url, f"not JSON with orient={orient!r}: {type(exc).__name__}: {exc}") from None
        records: list[Any] = frame.to_dict("records")
    else:
        records = _parse_json_records(url, text, lines, nrows)
    bad = next((i for i, r in enumerate(records) if type(r) is not dict), None)
    if bad is not None:
        raise FileReadError(
            url, f"record {bad} is a {type(records[bad]).__name__}, not an object: expected JSON objects (orient=records)"
        )
    return records


# Below this many records pd.json_normalize is faster (fixed cost per DataFrame built);
# above it, flattening column by column is (about 3x on 5,000 Azure-shaped records).
_COLUMNWISE_FROM = 300


def flatten_records(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Records -> DataFrame with nested objects as dotted columns; lists stay lists in a cell.

    The columns and values of ``pd.json_normalize(records, sep=".")``, with one deliberate
    difference that keeps files consistent with each other: a key that holds an object in some
    records and null in the others gives only its dotted columns, not an extra all-null column.
    """
    if not records:
        return pd.DataFrame()
    frame = _flatten_arrow(records)
    if frame is not None:
        return frame
    if len(records) >= _COLUMNWISE_FROM:
        return _flatten_columnwise(records, "")
    frame = pd.json_normalize(records, sep=".")
    shadowed = [
        c for c in frame.columns if any(o.startswith(f"{c}.") for o in frame.columns) and frame[c].isna().all()
    ]
    return frame.drop(columns=shadowed) if shadowed else frame


def _flatten_arrow(records: list[dict[str, Any]]) -> pd.DataFrame | None:
    """Flatten with Arrow's C++ converter (~3x the column-wise pandas path); None when Arrow
    cannot type the records (a key holding a string in one record and an object in another,
    mixed bools and numbers, integers beyond 64 bits): the pandas paths handle those."""
    import pyarrow as pa

    try:
        array = pa.array(records)
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        return None
    if not pa.types.is_struct(array.type):
        return None
    columns: dict[str, Any] = {}
    _arrow_columns(array, "", columns)
    if not columns:
        return pd.DataFrame(index=pd.RangeIndex(len(records)))
    return pd.DataFrame(columns, copy=False)


def _arrow_columns(array: Any, prefix: str, out: dict[str, Any]) -> None:
    import pyarrow as pa

    # flatten() folds the parent's nulls into the children: {"a": null} -> a.b is null
    for field_, child in zip(array.type, array.flatten(), strict=True):
        name = f"{prefix}{field_.name}"
        if pa.types.is_struct(field_.type):
            _arrow_columns(child, name + ".", out)
        elif pa.types.is_list(field_.type) or pa.types.is_large_list(field_.type):
            out[name] = pd.Series(child.to_pylist(), dtype=object)  # lists stay Python lists
        elif pa.types.is_null(field_.type):  # null (or absent) everywhere
            out[name] = np.full(len(child), np.nan)
        else:
            out[name] = child.to_pandas()


def _flatten_columnwise(records: list[dict[str, Any]], prefix: str) -> pd.DataFrame:
    """One DataFrame construction per nesting level instead of a Python walk of every record."""
    frame = pd.DataFrame.from_records(records)
    columns: dict[str, pd.Series] = {}
    for name in frame.columns:
        column = frame[name]
        full = f"{prefix}{name}"
        if column.dtype == object:
            values = column.to_numpy()
            is_object = np.fromiter((type(v) is dict for v in values), dtype=bool, count=len(values))
            if is_object.any():
                nested = _flatten_columnwise(
                    [v if o else {} for v, o in zip(values, is_object, strict=True)], full + "."
                )
                rest = column.where(~is_object)
                if rest.notna().any():
                    columns[full] = rest
                for sub in nested.columns:
                    columns[sub] = nested[sub].set_axis(frame.index)
                continue
        columns[full] = column
    return pd.DataFrame(columns, index=frame.index)


def _read_raw(
    url: str, options: FileToDfOptions, storage_options: dict | None
) -> list[dict[str, Any]] | pd.DataFrame:
    """One file's content: JSON records still unflattened (so a batch flattens once), else a frame."""
    kwargs = dict(options.parser_kwargs)
    compression = kwargs.pop("compression", "infer")
    if compression == "infer":
        compression = _name_parts(url)[1]
    try:
        data = _read_bytes(url, storage_options, compression)
    except FileNotFoundError:
        raise FileReadError(url, "file not found (deleted or moved after it was listed?)") from None
    except PermissionError as exc:
        raise FileReadError(url, f"permission denied: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - storage errors vary by backend; report them all the same way
        raise FileReadError(url, f"{type(exc).__name__}: {exc}") from None

    file_type = options.file_type if options.file_type != "auto" else detect_file_type(url, data[:64])
    if file_type == "json":
        return _json_to_records(url, data, kwargs)
    if file_type == "csv":
        if _name_parts(url)[0] == ".tsv":
            kwargs.setdefault("sep", "\t")
        try:
            return pd.read_csv(io.BytesIO(data), **kwargs)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()
        except (ValueError, TypeError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise FileReadError(url, f"not readable as CSV with {kwargs or 'default options'}: {exc}") from None
    try:
        return pd.read_parquet(io.BytesIO(data), **kwargs)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several unrelated types
        raise FileReadError(url, f"not a readable Parquet file: {type(exc).__name__}: {exc}") from None


def read_raw_file(
    ref: FileRef | str,
    options: FileToDfOptions | None = None,
    storage_options: dict | None = None,
) -> pd.DataFrame:
    """Read one file into a DataFrame with a ``_source_file`` column (the URL).

    JSON (an array of objects, JSON lines, or a single object) is flattened as
    ``json_normalize(sep=".")`` does: ``{"properties": {"deviceDetail": {"browser": ...}}}`` gives
    the column ``properties.deviceDetail.browser``. CSV and Parquet are read by pandas with the
    message's ``parser_kwargs``. Compressed files (``.gz``, ``.bz2``, ``.xz``, ``.zst``) are
    decompressed by name (``.zst`` needs ``zstandard``). Raises :class:`FileReadError`.
    """
    url = ref.url if isinstance(ref, FileRef) else str(ref)
    with _gc_paused():
        content = _read_raw(url, options or FileToDfOptions(), storage_options)
        frame = flatten_records(content) if isinstance(content, list) else content
    frame[SOURCE_FILE_COLUMN] = url
    return frame


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


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

    def put(self, key: str, frame: pd.DataFrame) -> None:
        if not self.enabled:
            return
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=path.parent)
        os.close(fd)
        try:
            self._write(frame, tmp)
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
    def _write(cls, frame: pd.DataFrame, path: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        frame = frame.reset_index(drop=True)
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
        meta = dict(table.schema.metadata or {})
        meta[cls._META_KEY] = json.dumps({"version": cls.VERSION, "json_columns": json_columns}).encode()
        pq.write_table(table.replace_schema_metadata(meta), path)

    @classmethod
    def _read(cls, path: Path) -> pd.DataFrame:
        import pyarrow.parquet as pq

        # Single-threaded: entries are small and many are read at once from a thread pool.
        table = pq.ParquetFile(path).read(use_threads=False)
        info = json.loads((table.schema.metadata or {}).get(cls._META_KEY, b"{}"))
        frame = table.to_pandas(use_threads=False)
        for name in info.get("json_columns", []):
            frame[name] = frame[name].map(json.loads, na_action="ignore").astype(object)
        return frame


# --------------------------------------------------------------------------------------------
# Loading many files
# --------------------------------------------------------------------------------------------


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    non_empty = [f for f in frames if len(f)]
    if not non_empty:
        if not frames:
            return pd.DataFrame()
        columns = list(dict.fromkeys(c for f in frames for c in f.columns))
        return pd.DataFrame(columns=columns)
    if len(non_empty) == 1:
        return non_empty[0].reset_index(drop=True)
    return pd.concat(non_empty, ignore_index=True, sort=False)


def _assemble(contents: list[tuple[str, pd.DataFrame | list[dict[str, Any]]]]) -> list[pd.DataFrame]:
    """Frames in file order, each run of consecutive record lists flattened at once, with the
    ``_source_file`` column saying which file every row came from."""
    frames: list[pd.DataFrame] = []
    records: list[dict[str, Any]] = []
    urls: list[str] = []
    counts: list[int] = []

    def flush() -> None:
        if urls:
            frame = flatten_records(records) if records else pd.DataFrame()
            frame[SOURCE_FILE_COLUMN] = np.repeat(np.array(urls, dtype=object), counts)
            frames.append(frame)
            records.clear(), urls.clear(), counts.clear()

    for url, content in contents:
        if isinstance(content, list):
            records.extend(content)
            urls.append(url)
            counts.append(len(content))
        else:
            flush()
            if SOURCE_FILE_COLUMN not in content.columns:
                content[SOURCE_FILE_COLUMN] = url
            frames.append(content)
    flush()
    return frames


def load_files(
    refs: list[FileRef] | list[str],
    *,
    options: FileToDfOptions | None = None,
    storage_options: dict | None = None,
    transform: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    transform_id: str = "",
    cache: FrameCache | None = None,
    progress: bool = False,
    max_workers: int = 4,
) -> LoadResult:
    """Read files (threads), map each with ``transform``, cache per file, concatenate in order.

    ``transform`` runs on each file's frame separately (so it must not depend on other files'
    rows); ``transform_id`` must change whenever the transform's output would, since it is
    part of the cache key (pass e.g. a hash of the schema). Files that fail to read or
    transform are listed in ``errors`` with a reason; the rest are loaded. The result keeps
    the order of ``refs`` (time order when they come from :func:`~dfp_ray.files.expand_globs`).
    """
    started = time.perf_counter()
    use_cache = cache is not None and cache.enabled
    refs = [
        ref if isinstance(ref, FileRef) else FileRef(url=str(ref), size=None, modified=None, batch_time=_EPOCH)
        for ref in refs
    ]  # plain URLs load too, uncached (their version is unknown)
    # Without a per-file transform or cache, JSON records of all files are flattened in ONE
    # pass: building a DataFrame per small file costs milliseconds of pandas overhead each
    # (1.6 s for 212 files of ~14 records, vs 0.14 s for the same records at once).
    per_file = transform is not None or use_cache
    file_options = options or FileToDfOptions()

    def load_one(ref: FileRef) -> tuple[pd.DataFrame | list | None, bool, FileError | None]:
        if not per_file:
            try:
                return _read_raw(ref.url, file_options, storage_options), False, None
            except FileReadError as exc:
                return None, False, FileError(ref.url, exc.reason)
        key = None
        if use_cache and FrameCache.cacheable(ref):
            key = cache.key(ref, options, transform_id)
            cached = cache.get(key)
            if cached is not None:
                return cached, True, None
        try:
            frame = read_raw_file(ref, options, storage_options)
        except FileReadError as exc:
            return None, False, FileError(ref.url, exc.reason)
        if transform is not None:
            try:
                frame = transform(frame)
            except Exception as exc:  # noqa: BLE001 - a bad file must not stop the others
                label = f" {transform_id!r}" if transform_id else ""
                return None, False, FileError(ref.url, f"transform{label} failed: {type(exc).__name__}: {exc}")
        if key is not None:
            try:
                cache.put(key, frame)
            except Exception as exc:  # noqa: BLE001 - caching is an optimisation, never a failure
                logger.warning("could not cache %s: %s", ref.url, exc)
        return frame, False, None

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(refs), desc="loading files", unit="file")

    def tracked(ref: FileRef) -> tuple[pd.DataFrame | None, bool, FileError | None]:
        outcome = load_one(ref)
        if bar is not None:
            bar.update(1)
        return outcome

    with _gc_paused():
        try:
            if max_workers <= 1 or len(refs) <= 1:
                results = [tracked(ref) for ref in refs]
            else:
                with ThreadPoolExecutor(max_workers=min(max_workers, len(refs)), thread_name_prefix="dfp-load") as pool:
                    results = list(pool.map(tracked, refs))
        finally:
            if bar is not None:
                bar.close()
        frames = _assemble(
            [(ref.url, content) for ref, (content, _, _) in zip(refs, results, strict=True) if content is not None]
        )
    errors = [error for _, _, error in results if error is not None]
    for error in errors:
        logger.warning("skipping %s: %s", error.url, error.reason)
    return LoadResult(
        frame=_concat(frames),
        files_loaded=sum(1 for content, _, _ in results if content is not None),
        files_from_cache=sum(1 for frame, hit, _ in results if frame is not None and hit),
        errors=errors,
        seconds=time.perf_counter() - started,
    )


def read_and_map(
    refs: list[FileRef],
    schema: Any,
    *,
    options: FileToDfOptions | None = None,
    storage_options: dict | None = None,
    cache: FrameCache | None = None,
    cache_key: str | None = None,
) -> LoadResult:
    """Read files and map them with the source ``schema`` in one pass, through ``cache``.

    The schema is applied once to all the files' rows, not per file: per-file mapping of
    hundreds of small files costs seconds of fixed pandas overhead. Mapping is row-local, so
    a batch may be read in chunks (on several processes) and the mapped chunks concatenated.
    With ``cache`` and a ``cache_key`` (:meth:`FrameCache.batch_key`) the mapped frame is
    served from, or stored in, the cache. On any unreadable file the result holds the errors
    and no frame.
    """
    from dfp_ray.schema import map_fields

    started = time.perf_counter()
    if cache is not None and cache_key is not None:
        cached = cache.get(cache_key)
        if cached is not None:
            return LoadResult(frame=cached, files_loaded=len(refs), files_from_cache=len(refs), errors=[],
                              seconds=time.perf_counter() - started)
    raw = load_files(refs, options=options, storage_options=storage_options)
    if raw.errors:
        return raw
    mapped, _ = map_fields(raw.frame, schema)
    mapped = mapped.drop(columns=[SOURCE_FILE_COLUMN], errors="ignore")
    if cache is not None and cache_key is not None:
        try:
            cache.put(cache_key, mapped)
        except Exception as exc:  # noqa: BLE001 - caching is an optimisation, never a failure
            logger.warning("could not cache a batch of %d files: %s", len(refs), exc)
    return LoadResult(frame=mapped, files_loaded=raw.files_loaded, files_from_cache=0, errors=[],
                      seconds=time.perf_counter() - started)

