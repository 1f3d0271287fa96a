"""The router actor: control message -> files -> batches -> per-owner work, as references only.

For each batch of a message it asks the pool's actors to load the batch's chunks (each loader
splits its rows by owning actor), then hands every owner the references to its parts: the
owners train (or score and write to the sink) and report typed results. Rows never pass
through the router. Every decision it makes (chunking, where the generic model trains, when
its fit widens, the progress counters) is a Ray-free function of
:mod:`dfp_ray.controllers.router`. A message counts as done only once its models are
registered and its detections written. The actor is threaded so the driver can poll
:meth:`progress`.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import ray

from dfp_ray import metrics
from dfp_ray.config import DFPConfig
from dfp_ray.controllers.router import (
    GENERIC_ACTOR,
    ProgressTracker,
    owners_with_rows,
    place_generic_fit,
    plan_chunks,
    should_widen,
    unreadable_reason,
    users_per_owner,
    widen_threads,
)
from dfp_ray.durability import DurabilityError
from dfp_ray.messages import ControlMessage, Rejection
from dfp_ray.pipeline.file_batcher import plan_batches
from dfp_ray.pipeline.fsspec_loader import FileSelectionError
from dfp_ray.pipeline.split_users import owner_index, trains_generic, trains_individual
from dfp_ray.readers.frame_cache import FrameCache
from dfp_ray.registry import ModelRegistry
from dfp_ray.registry.names import GENERIC_LABEL, user_label
from dfp_ray.registry.population import merge_population
from dfp_ray.results import InferBatch, LoadInfo, MessageResult, Progress, SinkWrite, TrainResult, WorkKey
from dfp_ray.schemas import SourceSchema

log = logging.getLogger(__name__)


class _Unreadable(Exception):
    """A batch had files that could not be read; the message is rejected naming them."""


@ray.remote(num_cpus=0, max_concurrency=4)
class RouterActor:
    def __init__(self, cfg: DFPConfig, schema: SourceSchema, user_actors: list, sink, generic_actor=None):
        self.cfg = cfg
        self.schema = schema
        self.actors = user_actors
        self.generic_actor = generic_actor  # trains the generic model when the pipeline made one
        self.sink = sink
        self.cache = FrameCache(cfg.state_path / "cache", enabled=cfg.cache_loaded_files)
        self.progress_state = ProgressTracker()
        self._registry = None  # opened on the first population update

    def progress(self) -> Progress:
        return self.progress_state.snapshot()

    @ray.method(max_task_retries=-1)
    def ping(self) -> bool:
        """Answers once the router is up (Ray holds the call while a dead router restarts)."""
        return True

    # ------------------------------------------------------------------------------------
    @metrics.counts_in_flight("router", "message")
    def process(self, msg: ControlMessage, run_id: str, retry: bool = False, work_id: str | None = None) -> MessageResult:
        """Run one control message of run ``run_id`` to completion; never raises for bad input.

        ``retry``: the message may have been processed before (its router died, or a stream
        crashed); models already registered for it are reported rather than trained again, rows
        already written are not rewritten, window rows already counted are not counted again.
        ``work_id`` (default: the message id) names the work in ``dfp_work`` tags and windows: a
        stream adds a digest of the Kafka record, so a recreated topic that reuses an offset
        is not mistaken for a redelivery."""
        self.progress_state.start(msg.message_id, msg.kind)
        start = self._message_started = time.perf_counter()
        self._work = WorkKey(run_id=run_id, message_id=work_id or msg.message_id, retry=retry)
        result = MessageResult(message_id=msg.message_id, kind=msg.kind, data_type=msg.metadata.data_type)
        try:
            if msg.kind == "label":
                self._label(msg, result)
            else:
                self._process(msg, result)
        except FileSelectionError as exc:
            result.rejection = Rejection.for_message(msg, exc.reason, exc.field)
        except _Unreadable as exc:
            result.rejection = Rejection.for_message(msg, str(exc))
        except DurabilityError as exc:  # not the message's fault: it must run again, not be skipped
            log.error("message %s could not be made durable: %s", msg.message_id, exc)
            result.failure = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # bad input must never kill the router
            log.exception("message %s failed", msg.message_id)
            result.rejection = Rejection.for_message(msg, f"{type(exc).__name__}: {exc}")
        result.seconds = time.perf_counter() - start
        metrics.message_done(result, self.cfg.source)
        self.progress_state.stage("done")
        return result

    def _label(self, msg: ControlMessage, result: MessageResult) -> None:
        """Store a label message's verdicts (and the detection rows of benign ones); see
        :mod:`dfp_ray.labels`. The user actors see them from their next training on."""
        from dfp_ray.labels import apply_labels

        verdicts = msg.verdicts
        limit = self.cfg.labels.max_verdicts_per_message
        if len(verdicts) > limit:
            result.rejection = Rejection.for_message(msg, f"{len(verdicts):,} verdicts, over labels.max_verdicts_per_"
                                                     f"message={limit:,}: split them into several messages")
            return
        self.progress_state.stage("labels")
        try:
            outcome = apply_labels(self.cfg, self.schema, self._work.tag, verdicts)
        except OSError as exc:
            raise DurabilityError(f"cannot store the verdicts under {self.cfg.labels_path}: {exc}") from exc
        result.labels = outcome
        if outcome.rows_missing:
            shown = ", ".join(outcome.rows_missing[:5]) + (" ..." if len(outcome.rows_missing) > 5 else "")
            result.errors.append(
                f"{len(outcome.rows_missing)} benign verdict(s) without a detection row in {self.cfg.output.directory} "
                f"({shown}): stored, but no row joins the training data (the run that detected them is gone, "
                "or they were never detected)")

    def _process(self, msg: ControlMessage, result: MessageResult) -> None:
        batches = plan_batches(msg, self.cfg.storage_options, roots=self.cfg.input.roots())
        self.progress_state.stage("loading", files_total=sum(len(b.files) for b in batches))
        training = msg.kind == "training" and self.cfg.train_users != "none"
        self._generic = trains_generic(self.cfg.train_users) and msg.trains_generic
        self._individual = trains_individual(self.cfg.train_users)
        keep_whole = training and self._generic
        streaming = msg.metadata.data_type == "streaming"
        for batch in batches:
            if streaming:  # each period is its own work item (windows, dfp_work tags)
                self._work = self._work.model_copy(update={"batch": batch.batch_index})
            started = time.perf_counter()
            infos, refs = self._load(batch.files, msg, keep_whole)
            result.record_load(infos)
            result.stage_seconds.load += time.perf_counter() - started
            if not sum(i.rows for i in infos):
                continue
            started = time.perf_counter()
            if training:
                self._train(infos, refs, msg.metadata.data_type, result)
                result.stage_seconds.train += time.perf_counter() - started
            elif msg.kind == "inference":
                self._infer(infos, refs, result, msg.metadata.data_type)
                result.stage_seconds.infer += time.perf_counter() - started

    # ---- file to DataFrame, on the pool ---------------------------------------------------
    def _load(self, files: list, msg: ControlMessage, keep_whole: bool) -> tuple[list[LoadInfo], list[list]]:
        """Load a batch in chunks on the pool's actors; each loader splits its rows by owner.

        Returns the chunks' :class:`LoadInfo` and, per chunk, the references
        ``[part_0, ..., part_{n-1}, whole]`` the loader returned."""
        n = len(self.actors)
        file_opts = msg.metadata.file_to_df_options
        fingerprint = self.schema.fingerprint()
        calls = [
            self.actors[i].load_and_split.options(num_returns=n + 2).remote(
                chunk, file_opts, self.cfg.storage_options, self.cache.batch_key(chunk, file_opts, fingerprint),
                n, msg.metadata.batching_options, keep_whole, msg.users)
            for i, chunk in enumerate(plan_chunks(files, n, self.cfg.ray))
        ]
        infos: list[LoadInfo] = _get([c[0] for c in calls])
        errors = [e for info in infos for e in info.errors]
        if errors:
            raise _Unreadable(unreadable_reason(errors))
        self.progress_state.add(files_loaded=sum(i.files for i in infos), rows_loaded=sum(i.rows for i in infos))
        return infos, [list(c[1:]) for c in calls]

    # ---- training ---------------------------------------------------------------------------
    def _train(self, infos: list[LoadInfo], refs: list[list], data_type: str, result: MessageResult) -> None:
        n = len(self.actors)
        individual = self._individual
        owners = owners_with_rows(infos, n) if individual else []
        generic_at = None
        if self._generic:
            generic_at = place_generic_fit(
                has_generic_actor=self.generic_actor is not None, data_type=data_type,
                rows_per_owner=[sum(i.owner_rows[j] for i in infos) for j in range(n)],
                stable_owner=owner_index(GENERIC_LABEL, n))
        users = users_per_owner(infos, n)
        self.progress_state.stage("training")
        self.progress_state.add(users_total=sum(users[j] for j in owners) + (generic_at is not None))
        wholes = [r[n] for r in refs]
        fit_id = f"{result.message_id}:{uuid.uuid4().hex}"
        calls: list[_TrainCall] = []
        for j in sorted(set(owners) | ({generic_at} - {None, GENERIC_ACTOR})):
            parts = [r[j] for r in refs] if j in owners else []
            owed: list[str | None] = sorted(set().union(*(i.owner_users[j] for i in infos))) if j in owners else []
            if generic_at == j:
                owed.append(None)
            calls.append(_TrainCall(self.actors[j], [data_type, len(parts), individual,
                                    fit_id if generic_at == j else None], [*parts, *(wholes if generic_at == j else [])],
                                    owed, generic=False))
        if generic_at == GENERIC_ACTOR:
            calls.append(_TrainCall(self.generic_actor, [data_type, 0, False, fit_id], wholes, [None], generic=True))
        population_changed = self._collect_training(calls, fit_id, result)
        if generic_at is not None or population_changed:
            self._invalidate_generic()

    def _invalidate_generic(self) -> None:
        """Every actor may fall back to the generic model and reads the population from its
        registered model: drop any cached "not found", older version or population now, rather
        than after mlflow.refresh_seconds. (An actor that is restarting has an empty cache anyway.)"""
        for ref in [a.invalidate.remote(None) for a in self.actors]:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:
                pass

    def _collect_training(self, calls: list[_TrainCall], fit_id: str, result: MessageResult) -> bool:
        """Record every model as it is registered; once the pool is done, widen the generic
        fit if it is still running (the pool's CPUs would idle for the rest of it). A call
        whose actor died is sent again, once Ray restarted the actor, for the models still owed.
        Returns whether the source's population changed."""
        for call in calls:
            call.start(self._work)
        threads = widen_threads(self.cfg.ray, len(self.actors)) if any(c.generic for c in calls) else 1
        holdouts: list = []
        widened = False
        while pending := [c for c in calls if not c.done]:
            pool_done = all(c.done for c in calls if not c.generic)
            generic_done = all(c.done for c in calls if c.generic)
            if not widened and should_widen(threads=threads, pool_done=pool_done, generic_done=generic_done):
                widened = True
                granted = ray.get(self.generic_actor.widen_fit.remote(threads, fit_id))
                result.generic_widened_at_s = round(time.perf_counter() - self._message_started, 3)
                result.generic_widened_threads = granted
                log.info("pool done: the generic model's fit continues on %d threads", granted)
            ready, _ = ray.wait([c.gen for c in pending], num_returns=1)
            call = next(c for c in pending if c.gen is ready[0])
            try:
                res: TrainResult = _get(next(call.gen))
            except StopIteration:
                call.done = True
                continue
            except ray.exceptions.RayActorError as exc:
                call.restart(self._work, exc, self.cfg.ray.max_restarts, result)
                continue
            call.received(res)
            if res.holdout is not None:
                holdouts.append(res.holdout)
                res = res.model_copy(update={"holdout": None})  # the summary need not carry them
            result.record_training(res)
            self.progress_state.add(users_done=1)
        return bool(holdouts) and self._store_population(holdouts, result)

    def _store_population(self, holdouts: list, result: MessageResult) -> bool:
        """Pool the new user models' held-out scores into the source's population in the
        registry (:mod:`dfp_ray.registry.population`), so every scorer reads the same one.
        Returns whether it was stored."""
        try:
            if self._registry is None:
                self._registry = ModelRegistry.from_config(self.cfg)
            merged = merge_population(self._registry.population(self.cfg.source), holdouts)
            if merged is not None:
                self._registry.set_population(self.cfg.source, merged)
                return True
        except Exception as exc:  # noqa: BLE001 - the models are registered; thresholds use the last population
            log.warning("message %s: the population of %s was not updated: %s", result.message_id,
                        self.cfg.source, exc)
        return False

    # ---- inference ------------------------------------------------------------------------
    def _infer(self, infos: list[LoadInfo], refs: list[list], result: MessageResult, data_type: str) -> None:
        """Each owner scores the parts its loaders sent it and writes detections to the sink;
        the message is done once every owner returned (its rows durably written)."""
        n = len(self.actors)
        owners = owners_with_rows(infos, n)
        users = users_per_owner(infos, n)
        self.progress_state.stage("inference")
        self.progress_state.add(users_total=sum(users[j] for j in owners))
        run_id = self._work.run_id
        before: SinkWrite = ray.get(self.sink.rows.remote(run_id))
        calls = [self.actors[j].infer_parts.remote(self.sink, run_id, *(r[j] for r in refs), work=self._work,
                                                   data_type=data_type) for j in owners]
        pending = list(calls)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            batch: InferBatch = _get(ready[0])
            result.record_inference(batch)
            self.progress_state.add(users_done=len(batch.users))
        # What is durably in the run's files, not what the calls said: a call retried after a
        # crash writes its rows once but reports them again.
        after: SinkWrite = ray.get(self.sink.rows.remote(run_id))
        result.detections += after.detections - before.detections


class _TrainCall:
    """One actor's training call of a message, and what it still owes (for a resend)."""

    def __init__(self, actor, args: list, frames: list, owed: list[str | None], *, generic: bool):
        self.actor, self.args, self.frames, self.generic = actor, args, frames, generic
        self.owed: list[str | None] = list(owed)
        self.done = False
        self.gen = None
        self.attempts = 0

    def start(self, work: WorkKey, *, retry: bool = False) -> None:
        key = work.model_copy(update={"only": self.owed if (retry or work.retry) else None,
                                      "retry": retry or work.retry})
        self.gen = self.actor.train_parts.remote(*self.args, key, *self.frames)
        self.attempts += 1

    def received(self, res: TrainResult) -> None:
        user = None if res.generic else res.user
        if user in self.owed:
            self.owed.remove(user)

    def restart(self, work: WorkKey, exc: Exception, max_restarts: int, result: MessageResult) -> None:
        """The actor died mid-call: send the models still owed again (Ray restarts the actor and
        queues the call), or give up on them after ``max_restarts`` attempts."""
        if self.attempts > max_restarts or not self.owed:
            for user in self.owed:
                result.record_training(TrainResult(
                    user=user_label(user), generic=user is None, rows=0, trained=False,
                    reason=f"error: its actor died {self.attempts} time(s): {type(exc).__name__}"))
            self.owed, self.done = [], True
            return
        log.warning("a user actor died while training (%s); sending %d model(s) again", type(exc).__name__,
                    len(self.owed))
        try:  # Ray holds this call until the actor is back (or gives up when it cannot restart)
            ray.get(self.actor.ping.remote(), timeout=600)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass  # the resend fails at once and counts as another attempt
        self.start(work, retry=True)


def _get(refs: Any) -> Any:
    """``ray.get`` that raises an actor's own exception, not Ray's wrapper around it."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        raise (getattr(exc, "cause", None) or exc) from None
