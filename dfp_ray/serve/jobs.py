"""Asynchronous jobs (``?async=true``): durable state on disk, taken over when a replica dies.

No Ray here: replicas share nothing but the jobs folder (``jobs.dir``), so any replica can
answer for any job, and a job outlives the replica that accepted it.

Layout, one folder per job::

    <jobs.dir>/<job id>/job.json    # JobRecord: state, progress, owner, heartbeat, error
    <jobs.dir>/<job id>/inputs/     # the uploaded files, deleted when the job ends
    <jobs.dir>/<job id>/result      # the answer (zip or JSON), written atomically
    <jobs.dir>/<job id>/claim-<n>   # ownership tokens, created with O_EXCL

Lifecycle: ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``lost``. The owning replica
rewrites ``heartbeat_at`` every ``heartbeat_s`` for each job it holds. Every replica scans the
folder as often: a queued or running job whose heartbeat is older than ``stale_after_s`` has
lost its owner (the replica was killed or restarted), and the first replica to create the next
``claim-<n>`` file takes it over and runs it again from its inputs. A job that has already
been started ``max_attempts`` times, or whose inputs are gone, is marked ``lost`` with the
reason, so a client polling it gets an answer (410) rather than waiting forever. A replica
that finds a newer owner in the record stops writing to it. Finished jobs are deleted after
``keep_s``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .config import JobsConfig
from .errors import ApiError

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed", "lost"]
ACTIVE: frozenset[str] = frozenset({"queued", "running"})
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class JobRecord(BaseModel):
    """What ``job.json`` holds."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    kind: str
    state: JobState
    stage: str = ""
    progress: float = Field(0.0, ge=0, le=1)
    params: dict[str, Any] = Field(default_factory=dict)
    owner: str
    generation: int = Field(1, ge=1, description="how many replicas have owned it (claim-<generation>)")
    attempts: int = Field(0, ge=0, description="times it was started")
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float
    result_media_type: str | None = None
    result_filename: str | None = None
    result_headers: dict[str, str] = Field(default_factory=dict)
    error_status: int | None = None
    error: dict[str, Any] | None = None
    history: list[str] = Field(default_factory=list, description="takeovers and their reasons")


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat()


@dataclass
class JobOutput:
    """What a job handler returns: the body of the answer."""

    data: bytes
    media_type: str
    filename: str
    headers: dict[str, str] = field(default_factory=dict)


Progress = Callable[[str, float], None]
Handler = Callable[[dict[str, Any], Path, Progress], JobOutput]
"""``handler(params, inputs_dir, progress) -> JobOutput``; raises ApiError for user errors."""


class JobStore:
    """The jobs folder: records read and written atomically, ownership claimed with O_EXCL."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def folder(self, job_id: str) -> Path:
        if not _JOB_ID.match(job_id):
            raise ApiError(404, "not_found", f"no job {job_id[:40]!r} (job ids are 32 hex digits)", "job_id")
        return self.root / job_id

    def inputs(self, job_id: str) -> Path:
        return self.folder(job_id) / "inputs"

    def result_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "result"

    def read(self, job_id: str) -> JobRecord | None:
        try:
            text = (self.folder(job_id) / "job.json").read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return JobRecord.model_validate_json(text)
        except ValueError:
            log.warning("job %s: unreadable job.json", job_id)
            return None

    def write(self, record: JobRecord) -> None:
        folder = self.folder(record.job_id)
        tmp = folder / f".job.json.{uuid.uuid4().hex}"
        tmp.write_text(record.model_dump_json())
        os.replace(tmp, folder / "job.json")

    def claim(self, job_id: str, generation: int) -> bool:
        try:
            fd = os.open(self.folder(job_id) / f"claim-{generation}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return False
        os.close(fd)
        return True

    def create(self, kind: str, params: dict[str, Any], owner: str, inputs_from: Path) -> JobRecord:
        job_id = uuid.uuid4().hex
        folder = self.root / job_id
        folder.mkdir(mode=0o700)
        shutil.move(str(inputs_from), str(folder / "inputs"))
        now = time.time()
        record = JobRecord(job_id=job_id, kind=kind, state="queued", stage="queued", params=params, owner=owner,
                           created_at=now, heartbeat_at=now)
        self.claim(job_id, 1)
        self.write(record)
        return record

    def ids(self) -> list[str]:
        try:
            return [name for name in os.listdir(self.root) if _JOB_ID.match(name)]
        except FileNotFoundError:
            return []

    def write_result(self, job_id: str, data: bytes) -> None:
        tmp = self.folder(job_id) / f".result.{uuid.uuid4().hex}"
        tmp.write_bytes(data)
        os.replace(tmp, self.result_path(job_id))

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)


class JobRunner:
    """Runs this replica's jobs on a small thread pool; heartbeats them and adopts orphans."""

    def __init__(self, cfg: JobsConfig, replica_id: str) -> None:
        self.cfg = cfg
        self.replica_id = replica_id
        self.store = JobStore(Path(cfg.dir))
        self.handlers: dict[str, Handler] = {}
        self._mine: dict[str, int] = {}  # job id -> generation this replica owns
        self._lock = threading.Lock()  # guards _mine
        # Every read-modify-write of a record by this replica (job threads, heartbeats) holds this,
        # so a heartbeat can never write back a state a job thread has just replaced.
        self._io = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="dfp-ray-job")
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="dfp-ray-job-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive()

    # ------------------------------------------------------------------ API

    def submit(self, kind: str, params: dict[str, Any], inputs_from: Path) -> JobRecord:
        if kind not in self.handlers:
            raise KeyError(kind)
        record = self.store.create(kind, params, self.replica_id, inputs_from)
        self._enqueue(record.job_id, record.generation)
        return record

    def status(self, job_id: str) -> JobRecord:
        record = self.store.read(job_id)
        if record is None:
            raise ApiError(404, "not_found", f"no job {job_id!r} (finished jobs are kept {self.cfg.keep_s:g} s)", "job_id")
        if record.state in ACTIVE and self._stale(record):
            self._adopt(record)
            record = self.store.read(job_id) or record
        return record

    # ------------------------------------------------------------------ internals

    def _stale(self, record: JobRecord) -> bool:
        with self._lock:
            if self._mine.get(record.job_id) == record.generation:
                return False
        return time.time() - record.heartbeat_at > self.cfg.stale_after_s

    def _enqueue(self, job_id: str, generation: int) -> None:
        with self._lock:
            self._mine[job_id] = generation
        self._pool.submit(self._run, job_id, generation)

    def _owned(self, record: JobRecord | None, generation: int) -> bool:
        return record is not None and record.generation == generation and record.owner == self.replica_id

    def _update(self, job_id: str, generation: int, **changes: Any) -> JobRecord | None:
        """Apply ``changes`` if this replica still owns the job (else it was taken over: stand down)."""
        with self._io:
            record = self.store.read(job_id)
            if not self._owned(record, generation):
                with self._lock:
                    self._mine.pop(job_id, None)
                return None
            assert record is not None
            record = record.model_copy(update={**changes, "heartbeat_at": time.time()})
            self.store.write(record)
            return record

    def _run(self, job_id: str, generation: int) -> None:
        try:
            record = self.store.read(job_id)
            if not self._owned(record, generation):
                return
            assert record is not None
            handler = self.handlers.get(record.kind)
            inputs = self.store.inputs(job_id)
            if handler is None or not inputs.is_dir():
                why = f"no handler for kind {record.kind!r}" if handler is None else "its inputs are gone"
                self._update(job_id, generation, state="lost", stage=why, finished_at=time.time(),
                             error_status=410, error={"detail": f"job lost: {why}; submit it again", "field": None,
                                                      "code": "job_lost"})
                return
            record = self._update(job_id, generation, state="running", stage="started", started_at=time.time(),
                                  attempts=record.attempts + 1)
            if record is None:
                return
            last = [0.0]

            def progress(stage: str, fraction: float) -> None:
                now = time.monotonic()
                if now - last[0] >= 0.5 or fraction >= 1.0:
                    last[0] = now
                    self._update(job_id, generation, stage=stage, progress=min(max(fraction, 0.0), 1.0))

            try:
                out = handler(record.params, inputs, progress)
            except ApiError as exc:
                self._update(job_id, generation, state="failed", stage="failed", finished_at=time.time(),
                             error_status=exc.status, error=exc.body())
                return
            except Exception:
                error_id = uuid.uuid4().hex[:12]
                log.exception("job %s failed with an internal error %s", job_id, error_id)
                self._update(job_id, generation, state="failed", stage="failed", finished_at=time.time(),
                             error_status=500, error={"detail": f"internal error (a bug in dfp_ray, logged as "
                                                      f"{error_id}); please report it", "field": None,
                                                      "code": "internal_error", "error_id": error_id})
                return
            with self._io:
                owned = self._owned(self.store.read(job_id), generation)
                if owned:
                    self.store.write_result(job_id, out.data)
            if owned:
                self._update(job_id, generation, state="done", stage="done", progress=1.0, finished_at=time.time(),
                             result_media_type=out.media_type, result_filename=out.filename,
                             result_headers=out.headers)
        finally:
            with self._lock:
                if self._mine.get(job_id) == generation:
                    del self._mine[job_id]
            rec = self.store.read(job_id)
            if rec is not None and rec.state not in ACTIVE:
                shutil.rmtree(self.store.inputs(job_id), ignore_errors=True)

    def _adopt(self, record: JobRecord) -> None:
        """Take over (or declare lost) a job whose owner stopped heartbeating."""
        job_id = record.job_id
        if record.attempts >= self.cfg.max_attempts or not self.store.inputs(job_id).is_dir():
            why = (
                f"started {record.attempts} times, each time its replica stopped before it finished"
                if record.attempts >= self.cfg.max_attempts
                else "its inputs are gone"
            )
            generation = record.generation + 1
            if not self.store.claim(job_id, generation):
                return
            lost = record.model_copy(update={
                "state": "lost", "stage": "lost", "owner": self.replica_id, "generation": generation,
                "finished_at": time.time(), "heartbeat_at": time.time(), "error_status": 410,
                "error": {"detail": f"job lost: {why}; submit it again", "field": None, "code": "job_lost"},
                "history": [*record.history, f"{iso(time.time())}: lost ({why})"],
            })
            self.store.write(lost)
            return
        generation = record.generation + 1
        if not self.store.claim(job_id, generation):
            return  # another replica was faster
        note = (f"{iso(time.time())}: taken over by replica {self.replica_id} (owner {record.owner} silent for "
                f"{time.time() - record.heartbeat_at:.0f} s, state {record.state})")
        log.warning("job %s: %s", job_id, note)
        adopted = record.model_copy(update={
            "state": "queued", "stage": "queued again after its replica stopped", "owner": self.replica_id,
            "generation": generation, "heartbeat_at": time.time(), "progress": 0.0,
            "history": [*record.history, note],
        })
        self.store.write(adopted)
        self._enqueue(job_id, generation)

    def _watch(self) -> None:
        last_cleanup = 0.0
        while not self._stop.wait(self.cfg.heartbeat_s):
            try:
                self._heartbeat()
                self._adopt_orphans()
                if time.time() - last_cleanup > min(self.cfg.keep_s, 600.0):
                    last_cleanup = time.time()
                    self._cleanup()
            except Exception:  # keep watching whatever one scan hit
                log.exception("job watcher scan failed")

    def _heartbeat(self) -> None:
        with self._lock:
            mine = dict(self._mine)
        for job_id, generation in mine.items():
            with self._io:
                record = self.store.read(job_id)
                owned = self._owned(record, generation)
                if owned and record is not None and record.state in ACTIVE:
                    self.store.write(record.model_copy(update={"heartbeat_at": time.time()}))
            if not owned:
                with self._lock:
                    if self._mine.get(job_id) == generation:
                        del self._mine[job_id]

    def _adopt_orphans(self) -> None:
        for job_id in self.store.ids():
            record = self.store.read(job_id)
            if record is not None and record.state in ACTIVE and self._stale(record):
                self._adopt(record)

    def _cleanup(self) -> None:
        now = time.time()
        for job_id in self.store.ids():
            record = self.store.read(job_id)
            if record is not None and record.state not in ACTIVE and now - (record.finished_at or now) > self.cfg.keep_s:
                self.store.delete(job_id)
