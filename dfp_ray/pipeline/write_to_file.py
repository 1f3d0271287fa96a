"""Write to file (Morpheus's ``WriteToFile``): detections and scores as CSV or JSON lines, durably.

Every run writes files of its own, and a later run never destroys what an earlier one wrote:

- while a run is going, its rows are appended (and fsync'd on every write) to
  ``<directory>/runs/<run_id>.partial/<name>``, created ``0600`` without following symlinks;
- when the run finishes having scored at least one message, the folder becomes
  ``runs/<run_id>/`` and ``<directory>/<name>`` (``dfp_detections_duo.csv``) is switched to
  it atomically (a hard link renamed over the old name: readers see the old file or the new
  one, never a half-written or empty one; a symlink at that path is replaced, not followed);
- a run that scored nothing (only training, or every message rejected) or that was killed
  leaves the published files as they were; a killed run's rows stay in its ``.partial``
  folder. The last ``output.keep_runs`` completed runs are kept.
- a *live* run (``dfp-ray stream``) is published when it starts and keeps appending to its
  files afterwards: the published name is a hard link to the run's file, so every row is
  visible there as soon as it is durable. A restarted stream resumes the same run (its id is
  kept in the state directory) and its files. Live runs are marked (``.live``) and never pruned.

A row is written once per run: :class:`TableWriter` remembers the event ids it wrote (and
reads them back from its file after a restart), so a retried write after a crashed actor
adds no duplicate. Object stores (``s3://``) have no append or rename: a run's object is
rewritten on every write (durable in the same sense) and published by a server-side copy.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from dfp_ray.config import OutputConfig
from dfp_ray.readers.storage import open_fs

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
LIVE_MARKER = ".live"
ROW_KEY = "event_id"


def output_name(cfg: OutputConfig, source: str, *, scores: bool = False) -> str:
    """The published file name, e.g. ``dfp_detections_duo.csv``."""
    template = cfg.scores_filename_template if scores else cfg.filename_template
    return template.format(source=source, ext=cfg.format)


def output_path(cfg: OutputConfig, source: str, *, scores: bool = False) -> str:
    """Where the published file lives: ``<directory>/<name>``."""
    return f"{cfg.directory.rstrip('/')}/{output_name(cfg, source, scores=scores)}"


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _local(url: str) -> Path:
    return Path(url.removeprefix("file://"))


def row_keys(df: pd.DataFrame) -> pd.Series:
    """One key per row: its event id, else a hash of the row's values (sources without ids)."""
    if ROW_KEY in df.columns:
        ids = df[ROW_KEY].astype(object)
        missing = ids.isna()
        if not missing.any():
            return ids.astype(str)
    else:
        missing = pd.Series(True, index=df.index)
    hashed = pd.util.hash_pandas_object(df.astype(str), index=False).astype(str).radd("row:")
    return hashed if ROW_KEY not in df.columns else ids.astype(str).where(~missing, hashed)


class TableWriter:
    """Appends frames to one CSV / JSON-lines file of a run, each row once.

    The first frame fixes the column order (a restarted writer reads it back from the file's
    header). ``mode`` is the file's permission bits when it is created."""

    def __init__(self, url: str, fmt: str, *, mode: int = 0o600, storage_options: dict | None = None):
        self.url = url
        self.fmt = fmt
        self.mode = mode
        self.storage_options = storage_options or {}
        self.columns: list[str] | None = None
        self.rows_written = 0
        self._keys: set[str] = set()
        self._buffer: list[str] = []  # object stores only
        self._local = _local(url) if is_local(url) else None
        self._resume()

    def _resume(self) -> None:
        """Pick up a file an earlier incarnation of this writer (a crashed actor) started."""
        try:
            if self._local is not None:
                if not self._local.exists() or self._local.stat().st_size == 0:
                    return
                text = self._local.read_text(encoding="utf-8")
            else:
                fs, path = open_fs(self.url, self.storage_options)
                if not fs.exists(path):
                    return
                text = fs.cat_file(path).decode("utf-8")
                self._buffer = [text]
        except OSError as exc:
            raise OSError(f"cannot resume the run's output file {self.url}: {exc}") from exc
        if self.fmt == "csv":
            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
        else:
            frame = pd.DataFrame([json.loads(line) for line in text.splitlines() if line.strip()])
        self.columns = list(frame.columns)
        self.rows_written = len(frame)
        self._keys = set(row_keys(frame))

    def _render(self, df: pd.DataFrame) -> str:
        if self.fmt == "csv":
            buf = io.StringIO()
            df.to_csv(buf, index=False, header=self.rows_written == 0)
            return buf.getvalue()
        return df.to_json(orient="records", lines=True, date_format="iso") if len(df) else ""

    def unwritten(self, df: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``df`` this file does not hold yet (each once)."""
        if df.empty:
            return df
        keys = row_keys(df)
        return df[(~keys.isin(self._keys) & ~keys.duplicated()).to_numpy()]

    def write(self, df: pd.DataFrame) -> int:
        """Append serialized rows (:func:`~dfp_ray.pipeline.serialize.serialize`) not written
        before; returns how many were new, once they are durable."""
        if df.empty:
            return 0
        keys = row_keys(df)
        new = ~keys.isin(self._keys) & ~keys.duplicated()
        if not new.all():
            log.info("%s: %d rows already written (a retried write)", self.url, int((~new).sum()))
            df, keys = df[new.to_numpy()], keys[new]
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
            self._append_local(text)
        else:
            self._buffer.append(text)
            fs, path = open_fs(self.url, self.storage_options)
            with fs.open(path, "w") as fh:
                fh.write("".join(self._buffer))
        self.rows_written += len(df)
        self._keys.update(keys)
        return len(df)

    def _append_local(self, text: str) -> None:
        path = self._local
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, self.mode)
        except OSError as exc:
            raise OSError(f"cannot open the output file {path} (a symlink there is refused): {exc}") from exc
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


class RunOutput:
    """The output files of one run: written under ``runs/<run_id>.partial/``, published at the end."""

    def __init__(self, cfg: OutputConfig, source: str, run_id: str, storage_options: dict | None = None):
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise ValueError(f"run id {run_id!r}: a plain name, no slashes")
        self.cfg = cfg
        self.source = source
        self.run_id = run_id
        self.storage_options = storage_options or {}
        self.root = cfg.directory.rstrip("/")
        self.local = is_local(self.root)
        done = f"{self.root}/runs/{run_id}"
        # A run already published (a live run that restarted) keeps writing where it is.
        published = self.local and Path(done.removeprefix("file://")).is_dir()
        suffix = PARTIAL_SUFFIX if self.local and not published else ""
        self.folder = f"{done}{suffix}"
        self.live = False
        self.mode = int(cfg.file_mode, 8)
        self.detections = self._writer(scores=False)
        self.scores = self._writer(scores=True) if cfg.write_all_scores else None

    def _writer(self, *, scores: bool) -> TableWriter:
        url = f"{self.folder}/{output_name(self.cfg, self.source, scores=scores)}"
        return TableWriter(url, self.cfg.format, mode=self.mode, storage_options=self.storage_options)

    def go_live(self) -> dict[str, str | None]:
        """Publish the run now and keep writing to it (a stream): every row written from here
        on is visible under the published name as soon as it is durable. Idempotent (a
        restarted stream calls it again, which also takes the published name back)."""
        paths = self.publish()
        self.live = True
        if self.local:
            done = Path(self.folder.removeprefix("file://"))
            (done / LIVE_MARKER).touch(mode=0o600, exist_ok=True)
            # The writers follow the folder to its published place (and re-read what it holds).
            self.detections = self._writer(scores=False)
            self.scores = self._writer(scores=True) if self.cfg.write_all_scores else None
        return paths

    def refresh_published(self) -> None:
        """Object stores: copy a live run's objects over the published ones (no hard links there)."""
        if self.local or not self.live:
            return
        for w in (self.detections, self.scores):
            if w is None:
                continue
            fs, path = open_fs(w.url, self.storage_options)
            if fs.exists(path):
                fs.copy(path, f"{open_fs(self.root, self.storage_options)[1]}/{path.rsplit('/', 1)[-1]}")

    def publish(self) -> dict[str, str | None]:
        """Make this run's files the published ones; returns the published paths."""
        writers = [w for w in (self.detections, self.scores) if w is not None]
        if self.local:
            folder = Path(self.folder.removeprefix("file://"))
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            for w in writers:  # a run with no detections still publishes (an empty file)
                w._append_local("")
            done = folder.with_name(folder.name.removesuffix(PARTIAL_SUFFIX))
            if folder != done:
                os.replace(folder, done)
            self.folder = str(done)
            for w in writers:
                name = Path(w.url).name
                target = done.parent.parent / name
                tmp = target.with_name(f".{name}.{self.run_id}.tmp")
                tmp.unlink(missing_ok=True)
                try:
                    os.link(done / name, tmp)
                except OSError:  # no hard links here (some network filesystems): copy
                    shutil.copyfile(done / name, tmp)
                os.replace(tmp, target)  # atomic; replaces a symlink rather than following it
            self._prune(done.parent)
        else:
            for w in writers:
                fs, path = open_fs(w.url, self.storage_options)
                if not fs.exists(path):  # a run that wrote nothing publishes an empty file
                    with fs.open(path, "w") as fh:
                        fh.write("".join(w._buffer))
                fs.copy(path, f"{open_fs(self.root, self.storage_options)[1]}/{path.rsplit('/', 1)[-1]}")
        return self.published_paths()

    def published_paths(self) -> dict[str, str | None]:
        return {
            "detections": output_path(self.cfg, self.source),
            "scores": output_path(self.cfg, self.source, scores=True) if self.scores is not None else None,
            "run_folder": self.folder.removesuffix(PARTIAL_SUFFIX),
        }

    def _prune(self, runs: Path) -> None:
        """Keep the newest ``keep_runs`` completed runs (run ids sort by their start time); live
        runs (a stream's, marked ``.live``) are never pruned: delete them yourself when done."""
        done = sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.endswith(PARTIAL_SUFFIX)
                      and not (p / LIVE_MARKER).exists())
        for old in done[: max(0, len(done) - self.cfg.keep_runs)]:
            shutil.rmtree(old, ignore_errors=True)


def new_run_id(now: pd.Timestamp | None = None) -> str:
    """``20260101T120000Z-1a2b3c``: sorts by start time, unique per run."""
    when = (now or pd.Timestamp.now(tz="UTC")).strftime("%Y%m%dT%H%M%SZ")
    return f"{when}-{hashlib.sha256(os.urandom(16)).hexdigest()[:6]}"
