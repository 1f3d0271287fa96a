"""Write to file (Morpheus's ``WriteToFile``): detections and scores as CSV or JSON lines, durably.

One :class:`TableWriter` per output file. Local files are appended to and fsync'd on every
write, so a row whose write returned is on disk. Object stores (``s3://``) have no append:
the writer keeps the rows of this run and rewrites the object on every write, which is
durable in the same sense (a returned write is stored) at the price of rewriting.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import fsspec
import pandas as pd

from dfp_ray.config import OutputConfig

log = logging.getLogger(__name__)


def output_path(cfg: OutputConfig, source: str, *, scores: bool = False) -> str:
    template = cfg.scores_filename_template if scores else cfg.filename_template
    name = template.format(source=source, ext=cfg.format)
    return f"{cfg.directory.rstrip('/')}/{name}"


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


class TableWriter:
    """Appends frames to one CSV / JSON-lines file; the first frame fixes the column order."""

    def __init__(self, url: str, fmt: str, cfg: OutputConfig, storage_options: dict | None = None):
        self.url = url
        self.fmt = fmt
        self.cfg = cfg
        self.storage_options = storage_options or {}
        self.columns: list[str] | None = None
        self.rows_written = 0
        self._buffer: list[str] = []  # object stores only
        if _is_local(url):
            path = Path(url.removeprefix("file://"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")  # a run starts its output afresh
            self._local: Path | None = path
        else:
            self._local = None
            self._flush_remote()

    def _render(self, df: pd.DataFrame) -> str:
        if self.fmt == "csv":
            buf = io.StringIO()
            df.to_csv(buf, index=False, header=self.rows_written == 0)
            return buf.getvalue()
        return df.to_json(orient="records", lines=True, date_format="iso") if len(df) else ""

    def write(self, df: pd.DataFrame) -> int:
        """Append serialized rows (:func:`~dfp_ray.pipeline.serialize.serialize`); returns the
        rows written, once they are durable."""
        if df.empty:
            return 0
        if self.columns is None:
            self.columns = list(df.columns)
        else:
            extra = [c for c in df.columns if c not in self.columns]
            if extra:
                log.warning("%s: dropping columns not in the file's header: %s", self.url, extra)
            df = df.reindex(columns=self.columns)
        text = self._render(df)
        if self._local is not None:
            with open(self._local, "a", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            self._buffer.append(text)
            self._flush_remote()
        self.rows_written += len(df)
        return len(df)

    def _flush_remote(self) -> None:
        with fsspec.open(self.url, "w", **self.storage_options) as fh:
            fh.write("".join(self._buffer))
