"""Analyst verdicts on detections: stored durably, fed back into training.

A ``label`` control message carries verdicts (event id -> ``benign`` | ``malicious``, optional
user and note). What they do:

- **benign**: the event's row joins its user's training data (and the generic model's) from
  the next training on, so the same behaviour stops being flagged once the user is retrained.
- **malicious**: the event is kept out of every future training: payload training drops it,
  rolling windows never admit it and drop it if they hold it.

Where the benign rows come from: the detection rows dfp_ray wrote. When the verdicts arrive,
the rows with those event ids are looked up in the output files (every run's detections file
under ``<output.directory>/runs/``, and its all-scores file when ``output.write_all_scores``
keeps one), and copied, with the feature values they were scored with, into the label store.
So a verdict works as long as the run that detected the event is kept (``output.keep_runs``);
after that it is stored but no row joins the training data (the message result says so). The
copied rows are placed in the training part of a fit, never in its validation tail.

Layout (``<labels.directory>/<source>/``, default ``<state_dir>/labels/duo/``):

- ``verdicts.jsonl``: one JSON object per verdict, appended and fsync'd (``event_id``,
  ``verdict``, ``user``, ``note``, ``message_id``, ``at``, ``row``: whether the row was found).
  The newest line for an event id is in force. A redelivered label message adds nothing.
- ``benign_rows/<digest of the message id>.parquet``: the rows found for that message, written
  atomically before its verdict lines.

``dfp-ray labels list`` prints the verdicts in force; ``dfp-ray labels add FILE`` sends them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, Field

from dfp_ray.messages import Verdict

log = logging.getLogger(__name__)

VERDICTS_FILE = "verdicts.jsonl"
ROWS_DIR = "benign_rows"
VERDICT_COLUMNS = ["event_id", "verdict", "user", "note", "message_id", "at", "row"]


class LabelOutcome(BaseModel):
    """What one label message did to the store."""

    benign: int = 0
    malicious: int = 0
    unchanged: int = Field(0, description="Verdicts already stored by an earlier delivery of this message.")
    rows_found: int = Field(0, description="Benign verdicts whose detection row was found and stored.")
    rows_missing: list[str] = Field(default_factory=list, description="Benign event ids without a row found.")


class LabelStore:
    """The verdicts of one source, in ``<directory>/<source>/`` (see the module docstring).

    Safe for one writer and any number of readers (readers see whole lines and whole files)."""

    def __init__(self, directory: str | os.PathLike, source: str):
        self.folder = Path(directory) / source
        self.verdicts_path = self.folder / VERDICTS_FILE
        self.rows_dir = self.folder / ROWS_DIR
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- reading
    def stamp(self) -> tuple[int, int]:
        """Changes whenever verdicts are added (size and modification time of the verdict file)."""
        try:
            st = self.verdicts_path.stat()
        except FileNotFoundError:
            return (0, 0)
        return (st.st_size, st.st_mtime_ns)

    def lines(self) -> pd.DataFrame:
        """Every stored verdict line, oldest first (a torn last line, from a crash mid-write, is skipped)."""
        try:
            text = self.verdicts_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return pd.DataFrame(columns=VERDICT_COLUMNS)
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d: not a JSON line (a write cut short?); skipped", self.verdicts_path, number)
        frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
        return frame.reindex(columns=VERDICT_COLUMNS)

    def latest(self) -> pd.DataFrame:
        """The verdict in force per event id (the newest line), oldest first."""
        lines = self.lines()
        return lines.drop_duplicates("event_id", keep="last").reset_index(drop=True)

    def malicious_keys(self) -> frozenset[str]:
        latest = self.latest()
        return frozenset(latest.loc[latest["verdict"] == "malicious", "event_id"].astype(str))

    def benign_rows(self, user_column: str, user: str | None = None, *, limit: int = 10_000) -> pd.DataFrame:
        """The stored rows of events whose verdict in force is benign: one user's (``user``), or
        everyone's (``None``, for the generic model); at most ``limit`` per user, the newest."""
        latest = self.latest()
        benign = set(latest.loc[latest["verdict"] == "benign", "event_id"].astype(str))
        if not benign or not self.rows_dir.exists() or limit <= 0:
            return pd.DataFrame()
        frames = []
        for path in sorted(self.rows_dir.glob("*.parquet")):
            try:
                frames.append(pd.read_parquet(path))
            except Exception as exc:  # noqa: BLE001 - one unreadable file must not stop training
                log.warning("benign rows %s unreadable (%s); skipped", path, exc)
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame()
        rows = pd.concat(frames, ignore_index=True).drop_duplicates("event_id", keep="last")
        rows = rows[rows["event_id"].astype(str).isin(benign)]
        if user is not None:
            rows = rows[rows[user_column].astype(str) == user]
        if rows.empty:
            return rows.reset_index(drop=True)
        return rows.groupby(user_column, sort=False, group_keys=False).tail(limit).reset_index(drop=True)

    # ---------------------------------------------------------------- writing
    def add(self, message_id: str, verdicts: list[Verdict], rows: pd.DataFrame | None = None) -> LabelOutcome:
        """Store ``verdicts`` (from message ``message_id``) and the benign ``rows`` found for them.

        Idempotent: a verdict this message already stored (a redelivery) is not added again."""
        out = LabelOutcome()
        found = set(rows["event_id"].astype(str)) if rows is not None and len(rows) else set()
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if rows is not None and len(rows):
                self._write_rows(message_id, rows)
            lines = self.lines()
            done = set(zip(lines["message_id"].astype(str), lines["event_id"].astype(str), lines["verdict"].astype(str),
                           strict=True))
            at = datetime.now(timezone.utc).isoformat()
            text = []
            for v in verdicts:
                if v.verdict == "benign":
                    out.benign += 1
                    if v.event_id in found:
                        out.rows_found += 1
                    else:
                        out.rows_missing.append(v.event_id)
                else:
                    out.malicious += 1
                if (message_id, v.event_id, v.verdict) in done:
                    out.unchanged += 1
                    continue
                record = {"event_id": v.event_id, "verdict": v.verdict, "user": v.user, "note": v.note,
                          "message_id": message_id, "at": at, "row": v.event_id in found}
                text.append(json.dumps(record, ensure_ascii=False) + "\n")
            if text:
                flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
                with os.fdopen(os.open(self.verdicts_path, flags, 0o600), "a", encoding="utf-8") as fh:
                    fh.write("".join(text))
                    fh.flush()
                    os.fsync(fh.fileno())
        return out

    def _write_rows(self, message_id: str, rows: pd.DataFrame) -> None:
        self.rows_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = hashlib.sha256(message_id.encode()).hexdigest()[:24]
        path = self.rows_dir / f"{name}.parquet"
        tmp = path.with_name(f".{path.name}.tmp")
        buf = io.BytesIO()
        frame = rows.reset_index(drop=True)
        frame.attrs = {}
        frame.to_parquet(buf, index=False)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


class LabelView:
    """A reader's cached view of a :class:`LabelStore`, refreshed when the store changes (one
    ``stat`` per use): what a user actor consults before every training."""

    def __init__(self, store: LabelStore, user_column: str, *, limit: int):
        self.store = store
        self.user_column = user_column
        self.limit = limit
        self._stamp: tuple[int, int] | None = None
        self._malicious: frozenset[str] = frozenset()
        self._benign: pd.DataFrame = pd.DataFrame()

    def _refresh(self) -> None:
        stamp = self.store.stamp()
        if stamp == self._stamp:
            return
        self._malicious = self.store.malicious_keys() if stamp != (0, 0) else frozenset()
        self._benign = self.store.benign_rows(self.user_column, limit=self.limit) if stamp != (0, 0) else pd.DataFrame()
        self._stamp = stamp

    def malicious(self) -> frozenset[str]:
        self._refresh()
        return self._malicious

    def benign(self, user: str | None) -> pd.DataFrame:
        """Benign rows of ``user`` (None: every user's, for the generic model)."""
        self._refresh()
        rows = self._benign
        if user is None or rows.empty:
            return rows
        return rows[rows[self.user_column].astype(str) == user].reset_index(drop=True)


# ------------------------------------------------------------------------ detection rows
def output_files(output_dir: str, names: list[str], storage_options: dict | None = None) -> list[str]:
    """Every run's copy of the named output files (oldest run first), then the published ones."""
    from dfp_ray.readers.storage import open_fs

    fs, root = open_fs(output_dir.rstrip("/"), storage_options or {})
    found: list[str] = []
    for name in names:
        found.extend(sorted(fs.glob(f"{root}/runs/*/{name}")))
    if "://" in output_dir and not output_dir.startswith("file://"):
        protocol = output_dir.split("://", 1)[0]
        return [f"{protocol}://{p}" if "://" not in p else p for p in found]
    return found


def read_rows(url: str, event_ids: set[str], storage_options: dict | None = None) -> pd.DataFrame:
    """The rows of one CSV / JSON-lines output file whose ``event_id`` is in ``event_ids``."""
    from dfp_ray.readers.storage import open_fs

    fs, path = open_fs(url, storage_options or {})
    with fs.open(path, "rb") as fh:
        data = fh.read()
    if not data.strip():
        return pd.DataFrame()
    if path.endswith(".csv"):
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_values=[""])
    else:
        frame = pd.read_json(io.BytesIO(data), lines=True, dtype=False)
    if "event_id" not in frame.columns:
        return pd.DataFrame()
    return frame[frame["event_id"].astype(str).isin(event_ids)]


_TRUE = {"true", "1", "1.0", "yes"}


def typed_rows(frame: pd.DataFrame, schema) -> pd.DataFrame:
    """Serialized detection rows back to prepared rows: the user, time and event id columns and
    every feature (counters included, with the values the event was scored with), typed as data
    prep types them."""
    from dfp_ray.pipeline.data_prep import finalize_feature_types

    s = schema
    columns = [s.user_column, s.time_column, "event_id", *s.features.all]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"detection rows lack the columns {missing}: written with output.include_columns / "
                         "exclude_columns that drop them? Benign rows need every feature column")
    out = frame[list(dict.fromkeys(columns))].copy()
    out[s.time_column] = pd.to_datetime(out[s.time_column], utc=True, format="ISO8601")
    for col in s.features.binary:
        out[col] = out[col].astype("string").str.strip().str.lower().isin(_TRUE).to_numpy()
    for col in s.features.categorical:
        out[col] = out[col].astype(object)
    out["event_id"] = out["event_id"].astype(str)
    out[s.user_column] = out[s.user_column].astype(str)
    return finalize_feature_types(out, s).reset_index(drop=True)


def find_detection_rows(cfg, schema, event_ids: set[str]) -> pd.DataFrame:
    """The rows dfp_ray wrote for ``event_ids`` (the newest run's copy of each), as prepared rows."""
    from dfp_ray.pipeline.write_to_file import output_name

    if not event_ids:
        return pd.DataFrame()
    names = [output_name(cfg.output, cfg.source)]
    if cfg.output.write_all_scores:
        names.append(output_name(cfg.output, cfg.source, scores=True))
    frames = []
    for url in output_files(cfg.output.directory, names, cfg.storage_options):
        try:
            part = read_rows(url, event_ids, cfg.storage_options)
        except Exception as exc:  # noqa: BLE001 - one unreadable run must not lose the others' rows
            log.warning("labels: cannot read %s (%s); its rows are not used", url, exc)
            continue
        if len(part):
            frames.append(part)
    if not frames:
        return pd.DataFrame()
    rows = pd.concat(frames, ignore_index=True).drop_duplicates("event_id", keep="last")
    return typed_rows(rows, schema)


def apply_labels(cfg, schema, message_id: str, verdicts: list[Verdict]) -> LabelOutcome:
    """Store a label message's verdicts, with the detection rows of the benign ones."""
    benign = {v.event_id for v in verdicts if v.verdict == "benign"}
    rows = find_detection_rows(cfg, schema, benign)
    if len(rows):
        stated = rows["event_id"].map({v.event_id: v.user for v in verdicts})
        wrong = stated.notna() & (stated != rows[schema.user_column])
        if wrong.any():
            log.warning("labels of %s: %d verdict(s) name another user than their detection row (e.g. %s: %r, "
                        "the row %r); the row's user is used", message_id, int(wrong.sum()),
                        rows.loc[wrong, "event_id"].iloc[0], stated[wrong].iloc[0],
                        rows.loc[wrong, schema.user_column].iloc[0])
    store = LabelStore(cfg.labels_path, cfg.source)
    return store.add(message_id, verdicts, rows)
