"""File to DataFrame (Morpheus's ``FileToDF``): read a batch's files, map them with the schema, cache.

:func:`read_and_map` reads a batch (or one chunk of it, on a user actor) on a thread pool,
flattens every JSON record of the chunk in one pass, maps it with the source schema once,
and serves or stores the mapped frame through :class:`~dfp_ray.readers.frame_cache.FrameCache`.
A file that cannot be read is reported in ``LoadResult.errors``; on any error the result has
no frame, and the message is rejected naming the file.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dfp_ray.messages import FileToDfOptions
from dfp_ray.pipeline.fsspec_loader import FileRef
from dfp_ray.readers.flatten import flatten_records
from dfp_ray.readers.frame_cache import FrameCache
from dfp_ray.readers.raw_files import (
    SOURCE_FILE_COLUMN,
    FileError,
    FileReadError,
    gc_paused,
    read_raw,
)
from dfp_ray.schemas.mapping import map_fields

logger = logging.getLogger(__name__)



@dataclass
class LoadResult:
    frame: pd.DataFrame
    files_loaded: int
    files_from_cache: int
    errors: list[FileError] = field(default_factory=list)
    seconds: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)  # malformed records dropped, per reason

    @property
    def rows(self) -> int:
        return len(self.frame)



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
    progress: bool = False,
    max_workers: int = 4,
) -> LoadResult:
    """Read raw files on a thread pool (storage waits overlap) and concatenate them in order.

    JSON records of all the files are flattened in ONE pass: building a DataFrame per small
    file costs milliseconds of pandas overhead each (1.6 s for 212 files of ~14 records, vs
    0.14 s for the same records at once). Files that fail to read are listed in ``errors``
    with a reason; the rest are loaded. The result keeps the order of ``refs`` (time order
    when they come from :func:`~dfp_ray.pipeline.fsspec_loader.expand_globs`) and has a
    ``_source_file`` column.
    """
    started = time.perf_counter()
    urls = [ref.url if isinstance(ref, FileRef) else str(ref) for ref in refs]
    file_options = options or FileToDfOptions()

    def load_one(url: str) -> tuple[pd.DataFrame | list | None, FileError | None]:
        try:
            return read_raw(url, file_options, storage_options), None
        except FileReadError as exc:
            return None, FileError(url, exc.reason)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(urls), desc="loading files", unit="file")

    def tracked(url: str) -> tuple[pd.DataFrame | list | None, FileError | None]:
        outcome = load_one(url)
        if bar is not None:
            bar.update(1)
        return outcome

    with gc_paused():
        try:
            if max_workers <= 1 or len(urls) <= 1:
                results = [tracked(url) for url in urls]
            else:
                with ThreadPoolExecutor(max_workers=min(max_workers, len(urls)), thread_name_prefix="dfp-load") as pool:
                    results = list(pool.map(tracked, urls))
        finally:
            if bar is not None:
                bar.close()
        frames = _assemble([(url, content) for url, (content, _) in zip(urls, results, strict=True) if content is not None])
    errors = [error for _, error in results if error is not None]
    for error in errors:
        logger.warning("skipping %s: %s", error.url, error.reason)
    return LoadResult(
        frame=_concat(frames),
        files_loaded=sum(1 for content, _ in results if content is not None),
        files_from_cache=0,
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
    started = time.perf_counter()
    if cache is not None and cache_key is not None:
        cached = cache.get(cache_key)
        if cached is not None:
            skipped = dict(cached.attrs.get("cache_meta", {}).get("skipped", {}))
            cached.attrs = {}
            return LoadResult(frame=cached, files_loaded=len(refs), files_from_cache=len(refs), errors=[],
                              seconds=time.perf_counter() - started, skipped=skipped)
    raw = load_files(refs, options=options, storage_options=storage_options)
    if raw.errors:
        return raw
    mapped, report = map_fields(raw.frame, schema)
    mapped = mapped.drop(columns=[SOURCE_FILE_COLUMN], errors="ignore")
    if cache is not None and cache_key is not None:
        try:
            cache.put(cache_key, mapped, meta={"skipped": report.skipped})
        except Exception as exc:  # noqa: BLE001 - caching is an optimisation, never a failure
            logger.warning("could not cache a batch of %d files: %s", len(refs), exc)
    return LoadResult(frame=mapped, files_loaded=raw.files_loaded, files_from_cache=0, errors=[],
                      seconds=time.perf_counter() - started, skipped=dict(report.skipped))

