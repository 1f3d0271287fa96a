"""The streaming service behind ``dfp-ray stream``: Kafka control messages through the warm pipeline.

The one module of :mod:`dfp_ray.streaming` that touches Ray (through
:class:`~dfp_ray.runner.Pipeline`, when a service starts). What it adds to the Kafka source:

- **A stream run that survives restarts.** A stream writes its detections into one run of the
  output directory (``runs/<run_id>/``), published when the stream starts and appended to in
  place, so rows are visible under ``<output.directory>/dfp_detections_<source>.csv`` as soon
  as they are durable. The run id is kept in ``<state_dir>/streams/<source>--<group>.json``: a
  stream restarted with the same group (after SIGTERM, SIGKILL, a lost node) resumes the same
  run, whose files and event ids the sink reads back, so a message processed again after a
  crash writes no row twice. ``--new-run`` starts a new run (the old one stays in ``runs/``).
- **The handler** (:class:`PipelineHandler`): each control message runs through
  :meth:`Pipeline.run_message` as a possible retry (so nothing registered or counted before a
  crash is done twice) and returns only once everything it caused is durable: detections
  written (files, and the Kafka sink), models registered, rolling windows and verdicts
  checkpointed. A message that could not be made durable, or whose users failed for reasons
  outside the data (the registry did not answer), raises: the source retries it with backoff
  and never commits past it (``kafka.on_handler_error``). A message the pipeline refuses (no
  file matches its globs, unreadable files) goes to the dead-letter topic, stage ``pipeline``.

Fault injection for tests: with ``DFP_RAY_FAULT_KILL_BEFORE_COMMIT=N`` in the environment the
process SIGKILLs itself once its N-th Kafka message is durable, before the commit (the crash
the exactly-once tests need, at a known point).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from dfp_ray.messages import ControlMessage
from dfp_ray.streaming.source import HandleResult, MessageOrigin

log = logging.getLogger("dfp_ray.streaming")

FAULT_ENV = "DFP_RAY_FAULT_KILL_BEFORE_COMMIT"


class StreamFailure(RuntimeError):
    """A message could not be completed durably; the source retries it and does not commit it."""


class StreamState(BaseModel):
    """What a stream keeps across restarts (``<state_dir>/streams/<source>--<group>.json``)."""

    run_id: str
    source: str
    group_id: str
    topics: list[str] = Field(default_factory=list)
    created_at: datetime
    starts: int = 1


def state_path(state_dir: Path, source: str, group_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", group_id)
    return state_dir / "streams" / f"{source}--{safe}.json"


def resume_or_start(cfg, *, new_run: bool = False) -> tuple[StreamState, bool]:
    """The stream's state: the run it resumes (``True``), or a new one (``False``); saved durably."""
    from dfp_ray.pipeline.write_to_file import new_run_id
    from dfp_ray.runner import make_private_dir

    path = state_path(cfg.state_path, cfg.source, cfg.kafka.group_id)
    state: StreamState | None = None
    if path.exists() and not new_run:
        try:
            state = StreamState.model_validate_json(path.read_text(encoding="utf-8"))
        except Exception as exc:  # noqa: BLE001 - the user decides: a new run would repeat rows
            raise ValueError(f"{path}: unreadable stream state ({exc}); fix it, or start with --new-run") from exc
    resumed = state is not None
    if state is None:
        state = StreamState(run_id=new_run_id(), source=cfg.source, group_id=cfg.kafka.group_id,
                            topics=list(cfg.kafka.input_topics), created_at=datetime.now(timezone.utc), starts=0)
    state = state.model_copy(update={"starts": state.starts + 1, "topics": list(cfg.kafka.input_topics)})
    make_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(state.model_dump_json(indent=2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return state, resumed


def work_id(msg: ControlMessage, origin: MessageOrigin) -> str:
    """The message id plus a digest of the Kafka record (its timestamp and this message): the
    same on every redelivery, different for a new record at a reused offset (a recreated topic)."""
    body = json.dumps(msg.model_dump(mode="json", exclude={"message_id"}), sort_keys=True, default=str)
    digest = hashlib.sha256(f"{origin.timestamp_ms}|{body}".encode()).hexdigest()[:10]
    return f"{msg.message_id}~{digest}"


class PipelineHandler:
    """Runs the control messages of one Kafka message through a warm :class:`Pipeline`."""

    def __init__(self, pipeline: Any, run_id: str, *, on_result: Any = None):
        self.pipeline = pipeline
        self.run_id = run_id
        self.on_result = on_result  # called with (MessageResult, MessageOrigin) once durable (benchmarks)
        self.handled = 0
        self._kill_after = int(os.environ.get(FAULT_ENV, "0") or 0)

    def handle(self, messages: list[ControlMessage], origin: MessageOrigin) -> HandleResult:
        out = HandleResult()
        for msg in messages:
            res = self.pipeline.run_message(msg, self.run_id, progress=False, retry=True, work_id=work_id(msg, origin))
            if res.failure is not None:
                raise StreamFailure(f"{msg.message_id}: {res.failure}")
            retryable = res.retryable_errors
            if retryable:
                raise StreamFailure(f"{msg.message_id}: {len(retryable)} user(s) failed for reasons outside the "
                                    f"data, e.g. {retryable[0]}")
            for err in res.errors:
                log.warning("%s: %s", msg.message_id, err)
            if res.rejection is not None:
                out.rejections.append(res.rejection)
            out.events += res.rows
            out.detections += res.detections
            log.info("%s done: %s", msg.message_id, _describe(res))
            if self.on_result is not None:
                self.on_result(res, origin)
        self.handled += 1
        if self._kill_after and self.handled >= self._kill_after:
            log.warning("%s=%d: killing this process before the commit of %s", FAULT_ENV, self._kill_after, origin.id)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)
        return out


def _describe(res: Any) -> str:
    if res.kind == "label":
        lab = res.labels
        return (f"label: {lab.benign} benign ({lab.rows_found} with rows), {lab.malicious} malicious, "
                f"{lab.unchanged} already stored" if lab else "label")
    if res.rejection is not None:
        return f"rejected: {res.rejection.reason}"
    if res.kind == "training":
        return (f"training {res.data_type}: {res.rows} rows, {len(res.trained)} model(s) trained, "
                f"{len(res.skipped_users)} skipped, {res.seconds:.1f}s")
    return (f"inference {res.data_type}: {res.rows} rows, {res.scored} scored, {res.detections} new detection(s), "
            f"{res.seconds:.1f}s")


def run_stream(cfg, *, new_run: bool = False, progress: Any = None, handle_signals: bool = True,
               pipeline: Any = None, on_result: Any = None, on_start: Any = None) -> int:
    """Run the streaming service until SIGINT / SIGTERM (or ``kafka.stop_after``); the exit code.

    ``pipeline``: a warm :class:`~dfp_ray.runner.Pipeline` to use (tests, benchmarks; it must
    have been made with this stream's ``live_run_id``, see :func:`resume_or_start`); by
    default one is started and shut down here. ``on_start`` is called with the
    :class:`KafkaControlSource` before it runs (its ``stop()`` ends the stream);
    ``on_result`` with each message's result and origin once it is durable."""
    from dfp_ray.streaming.source import KafkaControlSource

    if not cfg.kafka.input_topics:
        raise ValueError("no input topic: give --input-topic (or kafka.input_topics in the config)")
    state, resumed = resume_or_start(cfg, new_run=new_run)
    log.info("stream run %s (%s), group %s, topics %s", state.run_id,
             f"resumed, start {state.starts}" if resumed else "new", cfg.kafka.group_id, ",".join(cfg.kafka.input_topics))
    owned = pipeline is None
    started = time.perf_counter()
    if not owned and getattr(pipeline, "live_run_id", state.run_id) != state.run_id:
        raise ValueError(f"the pipeline writes run {pipeline.live_run_id}, the stream's run is {state.run_id}")
    if owned:
        from dfp_ray.runner import Pipeline

        pipeline = Pipeline(cfg, live_run_id=state.run_id)
    try:
        paths = pipeline.live_paths()
        log.info("pipeline ready in %.1fs; detections appear in %s as they are written", time.perf_counter() - started,
                 paths.get("detections"))
        source = KafkaControlSource(cfg.kafka, PipelineHandler(pipeline, state.run_id, on_result=on_result),
                                    progress=progress, handle_signals=handle_signals)
        if on_start is not None:
            on_start(source)
        stats = source.run()
    finally:
        if owned:
            pipeline.shutdown()
    return stats.exit_code
