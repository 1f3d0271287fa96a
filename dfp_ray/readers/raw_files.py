"""Reading one raw log file: JSON array, JSON lines, CSV or Parquet, local or any fsspec URL.

JSON records are returned unflattened so a batch of files is flattened in one pass
(:mod:`dfp_ray.readers.flatten`); a file that cannot be read raises :class:`FileReadError`
with a reason that says what to do.
"""
from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import pandas as pd

from dfp_ray.messages import FileToDfOptions
from dfp_ray.readers.flatten import flatten_records
from dfp_ray.readers.storage import open_fs

logger = logging.getLogger(__name__)

SOURCE_FILE_COLUMN = "_source_file"
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

    fs, path = open_fs(url, storage_options)
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


gc_paused = _GcPause()


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


def read_raw(
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
    ref: Any,
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
    url = getattr(ref, "url", None) or str(ref)  # a FileRef or a URL
    with gc_paused():
        content = read_raw(url, options or FileToDfOptions(), storage_options)
        frame = flatten_records(content) if isinstance(content, list) else content
    frame[SOURCE_FILE_COLUMN] = url
    return frame

