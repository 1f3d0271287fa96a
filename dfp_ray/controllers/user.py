"""What a user actor does, without Ray: load its share of a batch, train, register, look up, score.

:class:`UserController` holds the state a user actor owns (rolling windows, a cache of loaded
models, the fit in progress) and calls the pipeline's steps in order. The Ray actor in
:mod:`dfp_ray.actors.user_actor` is a thin wrapper around it, so tests and notebooks run the
very same code without a cluster.

Which rows reach it: a loader (any pool actor) reads one chunk of a batch and splits its rows
by owning actor (:meth:`UserController.load_for_owners`); each owner receives its parts
directly, so rows never travel back through the router. The generic model's trainer
receives every chunk whole.

Why over ~400 lines: one controller whose training, inference, rolling-window and verdict
methods share the actor's state (model cache, windows, fit lock); each step itself is a
function of dfp_ray.pipeline.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dfp_ray import metrics
from dfp_ray.autoencoder.calibration import Calibration
from dfp_ray.config import CacheSettings, DFPConfig
from dfp_ray.durability import DurabilityError
from dfp_ray.labels import LabelStore, LabelView
from dfp_ray.messages import BatchingOptions, FileToDfOptions
from dfp_ray.pipeline.data_prep import prepare_features
from dfp_ray.pipeline.file_batcher import OUTSIDE_WINDOW, keep_rows_in_window
from dfp_ray.pipeline.file_to_df import read_and_map
from dfp_ray.pipeline.filter_detections import filter_detections
from dfp_ray.pipeline.frames import DetectionFrame, MappedFrame, ScoredFrame, UserFrame
from dfp_ray.pipeline.fsspec_loader import FileRef
from dfp_ray.pipeline.incidents import IncidentTracker, group_incidents, with_incidents
from dfp_ray.pipeline.inference import score_users
from dfp_ray.pipeline.mlflow_model_writer import write_model
from dfp_ray.pipeline.population_check import models_to_prefetch, population_check_model
from dfp_ray.pipeline.rolling_window import RollingWindow, is_passthrough
from dfp_ray.pipeline.split_users import filter_users, split_by_owner, split_by_user
from dfp_ray.pipeline.training import too_few_rows, train_model, train_models
from dfp_ray.readers.frame_cache import FrameCache
from dfp_ray.registry.errors import RegistryError
from dfp_ray.registry.names import GENERIC_SLOT, safe_user_name, user_label
from dfp_ray.results import FileProblem, InferResult, LoadInfo, TrainResult, WorkKey
from dfp_ray.row_keys import fill_event_ids, row_keys
from dfp_ray.schemas import SourceSchema

log = logging.getLogger(__name__)


class NoModelError(LookupError):
    """Neither the user nor the generic model is registered."""


WORK_TAG = "dfp_work"  # model-version tag: the run and message that trained the version


RETRYABLE = (RegistryError, OSError, DurabilityError)  # failures outside the data: another attempt may succeed


def concat_parts(parts: Sequence[pd.DataFrame | None]) -> pd.DataFrame | None:
    """The non-empty parts in order, as one frame (None when there are none)."""
    present = [p for p in parts if p is not None and len(p)]
    if not present:
        return None
    return pd.concat(present, ignore_index=True) if len(present) > 1 else present[0]


@dataclass
class _TrainJob:
    """One model to train, between :meth:`UserController._begin_train` and ``_end_train``."""

    user: str | None
    frame: UserFrame
    data_type: str
    work: WorkKey | None
    start: float
    base: dict
    streaming: bool
    counts: dict[str, int] = field(default_factory=dict)
    warm_from: str | None = None  # the registered version the fit was given to start from


class UserController:
    """Per-actor state and the load / train / infer logic for the users this actor owns."""

    def __init__(self, cfg: DFPConfig, schema: SourceSchema, worker_index: int = 0, threads: int | None = None):
        from dfp_ray.registry import ModelCache, ModelRegistry

        self.cfg = cfg
        self.schema = schema
        self.worker_index = worker_index
        self.registry = ModelRegistry.from_config(cfg)
        self.cache = ModelCache(
            self.registry, max_models=cfg.ray.max_models_cached, refresh_seconds=cfg.mlflow.refresh_seconds
        )
        self.file_cache = FrameCache(cfg.state_path / "cache", enabled=cfg.cache_loaded_files)
        # Rolling windows by (kind, user): kind "training" or "inference"; user None = the generic model.
        self.windows: dict[tuple[str, str | None], RollingWindow] = {}
        self.labels = LabelView(LabelStore(cfg.labels_path, cfg.source), schema.user_column,
                                limit=cfg.labels.max_benign_rows_per_user)
        self._lookup_failures: dict[str, BaseException] = {}
        self._pending_inference: set[str] = set()
        self.users_seen: set[str] = set()
        # Open incidents of the users this worker scores (pipeline/incidents.py); calls may overlap
        self.incidents = IncidentTracker.with_gap_hours(cfg.detection.incident_gap_hours)
        self._incident_lock = threading.Lock()
        # One fit at a time per worker: with ray.actor_concurrency > 1 a call registers its model
        # (database round trips, file copies, the store's lock) while the next call fits.
        self._fit_lock = threading.Lock()
        # Intra-op threads per fit (None: torch's current setting), and wider counts the owner
        # asked for (widen_fit), by fit id, taken up from that fit's next epoch.
        self.threads = threads
        self._widen: dict[str, int] = {}
        self._fit_id: str | None = None
        self._finished_fit_id: str | None = None
        self._last_fit_threads = 0

    def warm_up(self) -> float:
        """Pay one-time costs at start-up, not on the first user: the first fit imports
        torch's optimizer machinery and the first registration MLflow's model flavours
        (seconds each). Fits a throw-away model on a few synthetic rows and prepares the
        registry's one-time work (see :meth:`ModelRegistry.warm_up`); nothing is registered."""
        from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder

        start = time.perf_counter()
        import mlflow.pyfunc  # noqa: F401  (heavy import, used by every registration)

        s = self.schema
        rows = 8
        frame = pd.DataFrame(
            {**{c: ["a", "b"] * (rows // 2) for c in s.features.categorical},
             **{c: [True, False] * (rows // 2) for c in s.features.binary},
             **{c: np.arange(rows, dtype="float64") for c in s.features.numeric}}
        )
        params = AutoencoderParams.model_validate(
            {**self.cfg.autoencoder.model_dump(), "epochs": 1, "encoder_layers": [8], "decoder_layers": [8]}
        )
        model = DFPAutoencoder(s.features.categorical, s.features.numeric, s.features.binary, params)
        model.fit(frame)
        model.score(frame)
        self.registry.warm_up(model, s)
        return time.perf_counter() - start

    # ---- file to DataFrame, split by owner -------------------------------------------------
    def load_for_owners(
        self,
        files: list[FileRef],
        file_opts: FileToDfOptions | None,
        storage_options: dict,
        cache_key: str | None,
        pool_size: int,
        *,
        batching: BatchingOptions | None = None,
        keep_whole: bool = False,
        users: list[str] | None = None,
    ) -> tuple[LoadInfo, list[MappedFrame | None], MappedFrame | None]:
        """Read and map one chunk of a batch, keep the rows inside the message's time window
        (``batching``) and the configured users, split by owning actor.

        Returns the chunk's :class:`LoadInfo` (with the records dropped, per reason), one part
        per owner index, and (``keep_whole``) the whole chunk for the generic model's trainer.
        ``users``: keep only these users' rows (a message that names its users).
        On an unreadable file nothing is returned but the errors: the router rejects the
        message, naming every file."""
        loaded = read_and_map(files, self.schema, options=file_opts, storage_options=storage_options,
                              cache=self.file_cache, cache_key=cache_key)
        info = LoadInfo(files=len(files), files_from_cache=loaded.files_from_cache,
                        errors=[FileProblem(url=e.url, reason=e.reason) for e in loaded.errors],
                        owner_users=[[] for _ in range(pool_size)], owner_rows=[0] * pool_size,
                        skipped=dict(loaded.skipped))
        if loaded.errors:
            return info, [None] * pool_size, None
        s = self.schema
        frame, outside = keep_rows_in_window(loaded.frame, s.time_column, batching)
        if outside:
            info.skipped[OUTSIDE_WINDOW] = info.skipped.get(OUTSIDE_WINDOW, 0) + outside
        frame = filter_users(frame, s.user_column, self.cfg.only_users, self.cfg.skip_users)
        if users:  # the message names its users ("retrain alice on these files")
            frame = filter_users(frame, s.user_column, users, [])
        # Every row gets a stable key (its event id, else a hash of the record): what the sink,
        # the rolling windows and analyst verdicts recognise a row by.
        frame = fill_event_ids(frame, s.event_id_column)
        parts = split_by_owner(frame, s.user_column, pool_size)
        info.rows = len(frame)
        info.owner_users = [sorted(p[s.user_column].astype(str).unique()) for p in parts]
        info.owner_rows = [len(p) for p in parts]
        return info, parts, (frame.reset_index(drop=True) if keep_whole else None)

    # ---- rolling windows (streaming messages) ---------------------------------------------
    def _window_settings(self, kind: str) -> CacheSettings:
        return self.cfg.window if kind == "training" else self.cfg.window.inference

    def _window_url(self, kind: str, user: str | None) -> str:
        name = GENERIC_SLOT if user is None else safe_user_name(user)
        folder = f"{self.cfg.windows_dir}/{self.cfg.source}" + ("" if kind == "training" else "/inference")
        return f"{folder}/{name}.parquet"

    def _window(self, user: str | None, kind: str = "training") -> RollingWindow:
        """The user's window, restored from its checkpoint the first time it is needed (a
        restarted actor, a restarted stream)."""
        key = (kind, user)
        win = self.windows.get(key)
        if win is None:
            s, settings = self.schema, self._window_settings(kind)
            url = self._window_url(kind, user)
            try:
                win = RollingWindow.load(url, settings, s.time_column, s.event_id_column,
                                         storage_options=self.cfg.storage_options,
                                         applied_memory=self.cfg.window.applied_memory)
            except Exception as exc:  # noqa: BLE001 - a window we cannot read must not be replaced silently
                raise DurabilityError(f"cannot read the rolling-window checkpoint {url}: {exc}; fix or remove "
                                      "it (removing it starts the user's window afresh)") from exc
            if win is None:
                win = RollingWindow(settings, s.time_column, s.event_id_column,
                                    applied_memory=self.cfg.window.applied_memory)
            self.windows[key] = win
        return win

    def _save_window(self, user: str | None, kind: str = "training") -> None:
        url = self._window_url(kind, user)
        try:
            self.windows[(kind, user)].save(url, self.cfg.storage_options)
        except Exception as exc:
            self.windows.pop((kind, user), None)  # memory ran ahead of the checkpoint: reload it next time
            raise DurabilityError(f"cannot checkpoint the rolling window {url}: {exc}") from exc

    def _forget_window(self, user: str | None, kind: str = "training") -> None:
        """Drop the in-memory window (it ran ahead of its checkpoint): the next use reloads it."""
        self.windows.pop((kind, user), None)

    # ---- training -----------------------------------------------------------------------
    def train_parts(
        self,
        user_parts: Sequence[MappedFrame | None],
        generic_parts: Sequence[MappedFrame | None] = (),
        data_type: str = "payload",
        *,
        train_individual: bool = True,
        fit_id: str | None = None,
        work: WorkKey | None = None,
    ) -> Iterator[TrainResult]:
        """Train every model this actor was sent rows for, largest frame first.

        ``user_parts``: the parts of the users it owns (one per loaded chunk); ``generic_parts``:
        whole chunks, when this actor trains the generic model (whose fit is ``fit_id``).
        ``work`` says which run and message this is, and, when the work is sent again after an
        actor died, which models are still owed. Yields one :class:`TrainResult` per model as
        soon as it is registered."""
        todo: list[tuple[str | None, UserFrame]] = []
        generic = concat_parts(generic_parts)
        if generic is not None and (work is None or work.wants(None)):
            todo.append((None, generic))
        users = concat_parts(user_parts)
        if users is not None and train_individual:
            todo.extend((u, f) for u, f in split_by_user(users, self.schema.user_column)
                        if work is None or work.wants(u))
        # stable sort: equal sizes keep the generic model first, then users by name
        params = self.cfg.autoencoder
        group: list[tuple[str, UserFrame]] = []
        for user, frame in sorted(todo, key=lambda w: -len(w[1])):
            if user is not None and params.group_size > 1 and len(frame) < params.group_max_rows:
                group.append((user, frame))
                if len(group) == params.group_size:
                    yield from self.train_group(group, data_type, work=work)
                    group = []
                continue
            yield self.train(user, frame, data_type, fit_id if user is None else None, work=work)
        if group:
            yield from self.train_group(group, data_type, work=work)

    def train(
        self, user: str | None, frame: UserFrame, data_type: str = "payload", fit_id: str | None = None,
        *, work: WorkKey | None = None,
    ) -> TrainResult:
        """Train (and register) a model for ``user`` (``None``: the generic model) on ``frame``
        (mapped rows, any order). Never raises: a failure is a result with the reason, so one
        user's failure does not lose the others' work.

        ``fit_id`` names this call for :meth:`widen_fit` (any string unique per call). With a
        ``work`` key the version is tagged with it, and on a retry a version already tagged so
        (registered just before the actor died) is reported instead of training again."""
        job = self._begin_train(user, frame, data_type, work)
        if isinstance(job, TrainResult):
            return job
        try:
            with self._fit_lock:
                self._fit_id = fit_id
                try:
                    fitted = self._fit(user, job.frame, job)
                finally:
                    self._fit_id, self._finished_fit_id = None, fit_id
                    self._widen.pop(fit_id, None)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - reported in the result, the message goes on
            return self._failed(job, exc)
        return self._end_train(job, fitted)

    def train_group(
        self, users: Sequence[tuple[str, UserFrame]], data_type: str = "payload", *, work: WorkKey | None = None
    ) -> Iterator[TrainResult]:
        """:meth:`train` for several users whose models fit together as one stacked network
        (``autoencoder.group_size``; the same models as one at a time, see
        :mod:`dfp_ray.autoencoder.batched`). Yields one result per user, in order."""
        jobs = [self._begin_train(user, frame, data_type, work) for user, frame in users]
        pending = [j for j in jobs if not isinstance(j, TrainResult)]
        fitted: list = []
        failure: Exception | None = None
        if pending:
            try:
                with self._fit_lock:
                    fitted = self._fit_many(pending)
            except Exception as exc:  # noqa: BLE001 - every user of the group reports it
                failure = exc
        results = iter(fitted)
        for job in jobs:
            if isinstance(job, TrainResult):
                yield job
            elif failure is not None:
                yield self._failed(job, failure)
            else:
                yield self._end_train(job, next(results))

    def _begin_train(
        self, user: str | None, frame: UserFrame, data_type: str, work: WorkKey | None
    ) -> TrainResult | _TrainJob:
        """Everything before the fit: the rolling window (streaming) and the retry check. Returns
        the result when nothing is to be fitted, else the job to fit."""
        job = _TrainJob(user=user, frame=frame, data_type=data_type, work=work, start=time.perf_counter(),
                        base={"user": user_label(user), "generic": user is None, "worker": self.worker_index},
                        streaming=data_type == "streaming" and not is_passthrough(self.cfg.window))
        if user is not None:
            self.users_seen.add(user)
        try:
            if job.streaming:
                win = self._window(user)
                malicious = self.labels.malicious()
                win.exclude(malicious)  # verdicts that came after the rows did
                appended = win.append(frame, work=work.tag if work is not None else None, exclude=malicious)
                metrics.windows_held(self.worker_index, self.windows)
                job.counts = {"window_added": appended.added, "window_duplicates": appended.duplicates}
                if appended.already_applied:
                    return TrainResult(**job.base, rows=len(frame), trained=False,
                                       reason="already counted by the rolling window (a redelivered message): "
                                       "nothing to do")
                if appended.emitted is None:
                    self._save_window(user)
                    return TrainResult(**job.base, rows=len(frame), trained=False, reason=win.waiting_reason(),
                                       **job.counts)
                # Due: the window is saved only once the model is registered, so an actor or stream
                # that dies in between finds these rows still new when the batch comes again.
                job.frame = appended.emitted
            if work is not None and work.retry:
                done = self.registry.version_with_tag(self.cfg.source, user, WORK_TAG, work.tag)
                if done is not None:
                    self.cache.invalidate(self.cfg.source, user)
                    if job.streaming:
                        self._save_window(user)
                    return TrainResult(**job.base, rows=len(job.frame), trained=True, model_version=done.label,
                                       seconds=time.perf_counter() - job.start, **job.counts,
                                       reason="registered before a restart; not trained again")
        except Exception as exc:  # noqa: BLE001 - reported in the result, the message goes on
            return self._failed(job, exc)
        return job

    def _end_train(self, job: _TrainJob, fitted) -> TrainResult:
        """After the fit: register the model (or report why there is none)."""
        user = job.user
        try:
            if isinstance(fitted, str):
                if job.streaming:
                    self._save_window(user)
                return TrainResult(**job.base, rows=len(job.frame), trained=False, reason=fitted, **job.counts)
            model, report, prepared = fitted
            registering = time.perf_counter()
            tags = {"data_type": job.data_type, **({WORK_TAG: job.work.tag} if job.work is not None else {})}
            if report.warm_started and job.warm_from is not None:
                tags["warm_start_from"] = job.warm_from
            ref = write_model(self.registry, source=self.cfg.source, user=user, model=model, report=report,
                              schema=self.schema, prepared=prepared, tags=tags)
            self.cache.put(self.cfg.source, user, model, ref)
            if job.streaming:  # the emitted window is checkpointed only once registered
                self._save_window(user)
        except Exception as exc:  # noqa: BLE001 - reported in the result, the message goes on
            return self._failed(job, exc)
        return TrainResult(
            **job.base, rows=len(prepared), trained=True, model_version=ref.label,
            seconds=time.perf_counter() - job.start, fit_seconds=report.seconds,
            register_seconds=time.perf_counter() - registering,
            epochs_run=report.epochs_run, best_val_loss=report.best_val_loss,
            fit_threads=self._last_fit_threads, **job.counts,
            holdout=_holdout_of(model) if user is not None else None,
        )

    def _failed(self, job: _TrainJob, exc: BaseException) -> TrainResult:
        if job.streaming:
            self._forget_window(job.user)
        log.error("training %s failed", user_label(job.user), exc_info=exc)
        return TrainResult(**job.base, rows=len(job.frame), trained=False,
                           reason=f"error: {type(exc).__name__}: {exc}", retryable=isinstance(exc, RETRYABLE),
                           **job.counts)

    def widen_fit(self, threads: int, fit_id: str) -> int:
        """Let the fit of the train call ``fit_id`` use ``threads`` intra-op threads from its
        next epoch on (or from its start, if that call has not begun yet).

        Called (from another thread of the actor) when the CPUs around this worker fell idle:
        the router does it for the generic model once every pool actor has finished. Capped by
        the CPUs this process may run on. A request for a fit that already ended is ignored, so
        it never widens a later fit. Returns the thread count granted (0 when ignored).
        """
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not on Linux
            cpus = os.cpu_count() or 1
        granted = max(1, min(int(threads), cpus))
        if fit_id == self._finished_fit_id:
            return 0
        self._widen[fit_id] = granted
        return granted

    def _fit_threads(self) -> int:
        import torch

        widened = self._widen.get(self._fit_id) if self._fit_id is not None else None
        n = widened or self.threads or torch.get_num_threads()
        self._last_fit_threads = n
        return n

    def _previous(self, job: _TrainJob | None, user: str | None):
        """The user's registered model to warm-start from (``autoencoder.warm_start``), or None:
        warm start off, no version yet, or the registry could not give it (a cold fit then)."""
        if self.cfg.autoencoder.warm_start != "previous":
            return None
        try:
            found = self.cache.get(self.cfg.source, user)
        except Exception as exc:  # noqa: BLE001 - an optimisation: the fit goes on cold
            log.warning("warm start of %s: previous model unavailable (%s), cold fit", user_label(user), exc)
            return None
        if found is None:
            return None
        model, ref = found
        if job is not None:
            job.warm_from = ref.label
        return model

    def _fit(self, user: str | None, frame: UserFrame, job: _TrainJob | None = None):
        """Analyst verdicts, then the fit: ``(model, report, prepared rows)``, or the reason
        nothing was trained. Runs under the worker's fit lock.

        Rows with a malicious verdict are dropped; rows with a benign verdict (the user's, or
        everyone's for the generic model) are added, ``labels.benign_weight`` times each, in the
        training part of the fit (see :mod:`dfp_ray.labels`)."""
        rows = self._with_verdicts(user, frame)
        if isinstance(rows, str):
            return rows
        frame, extra = rows
        return train_model(frame, self.schema, self.cfg.autoencoder, threads=self._fit_threads, extra_rows=extra,
                           previous=self._previous(job, user))

    def _fit_many(self, jobs: Sequence[_TrainJob]) -> list:
        """:meth:`_fit` for a group of users, fitted together (see :meth:`train_group`)."""
        out: list = [None] * len(jobs)
        todo: list[tuple[int, UserFrame, pd.DataFrame | None]] = []  # (job, rows, benign rows)
        for i, job in enumerate(jobs):
            rows = self._with_verdicts(job.user, job.frame)
            if isinstance(rows, str):
                out[i] = rows
            else:
                todo.append((i, *rows))
        if todo and self.cfg.autoencoder.warm_start == "previous":
            try:  # one registry round trip for every previous version, not one per user under the fit lock
                self.cache.prefetch(self.cfg.source, [jobs[i].user for i, _, _ in todo])
            except Exception as exc:  # noqa: BLE001 - an optimisation: _previous() reports per user
                log.debug("previous-version prefetch failed: %s", exc)
        if todo:
            fitted = train_models([f for _, f, _ in todo], self.schema, self.cfg.autoencoder,
                                  threads=self._fit_threads, extra_rows=[e for _, _, e in todo],
                                  previous=[self._previous(jobs[i], jobs[i].user) for i, _, _ in todo])
            for (i, _, _), result in zip(todo, fitted, strict=True):
                out[i] = result
        return out

    def _with_verdicts(self, user: str | None, frame: UserFrame) -> tuple[UserFrame, pd.DataFrame | None] | str:
        """The rows to fit after the analyst verdicts, and the benign rows to add; or why no fit."""
        malicious = self.labels.malicious()
        if malicious and len(frame):
            keep = ~row_keys(frame, self.schema.event_id_column).isin(malicious)
            frame = frame[keep.to_numpy()]
        benign = self.labels.benign(user)
        if len(benign):
            ids = row_keys(frame, self.schema.event_id_column) if len(frame) else pd.Series([], dtype=object)
            benign = benign[~benign["event_id"].astype(str).isin(set(ids)) & ~benign["event_id"].isin(malicious)]
        reason = too_few_rows(len(frame) + len(benign), self.cfg.min_train_rows)
        if reason:
            return reason
        extra = None
        if len(benign):
            weight = self.cfg.labels.benign_weight
            extra = pd.concat([benign] * weight, ignore_index=True) if weight > 1 else benign
        return frame, extra

    # ---- inference ----------------------------------------------------------------------
    def _population(self):
        """The source's stored population (see :mod:`dfp_ray.registry.population`), or None
        for the fixed rule or before any user model was trained."""
        if self.cfg.detection.rule != "calibrated":
            return None
        found = self.cache.population(self.cfg.source)
        return found.calibration if found is not None else None

    def model_for(self, user: str):
        """The user's latest model, else the generic one; raises NoModelError with advice."""
        try:
            found = self.cache.get(self.cfg.source, user)
            if found is None and self.cfg.fallback_to_generic:
                found = self.cache.get(self.cfg.source, None)
        except RETRYABLE as exc:  # the registry, not the data: the result is marked retryable
            self._lookup_failures[user] = exc
            raise
        if found is None:
            raise NoModelError(
                f"no model registered for user '{user}' of source '{self.cfg.source}'"
                + (" and no generic model" if self.cfg.fallback_to_generic else "")
                + f" in the registry at {self.cfg.tracking_uri}; run a training message first "
                "(train_users=all or generic trains the fallback model)"
            )
        return found

    def infer(self, frame: MappedFrame) -> tuple[ScoredFrame, DetectionFrame, list[InferResult]]:
        """Score every row of ``frame`` (any number of users this actor owns): data prep,
        inference (own model, else generic), filter detections.

        Returns all scored rows, the detections among them and one result per user. Counters
        are computed once for the whole frame (they are per user anyway); one registry round
        trip resolves the users not cached (or due a refresh)."""
        start = time.perf_counter()
        s = self.schema
        prepared = prepare_features(frame, s).reset_index(drop=True)
        users = list(prepared[s.user_column].astype(str).unique())
        self.users_seen.update(users)
        try:
            self.cache.prefetch(self.cfg.source, models_to_prefetch(users, self.cfg))
        except Exception as exc:  # noqa: BLE001 - an optimisation: model_for() reports per user
            log.debug("model prefetch failed: %s", exc)
        self._lookup_failures = {}
        population = self._population()
        scored, results = score_users(prepared, s, self.model_for, worker=self.worker_index,
                                      detection=self.cfg.detection, population=population,
                                      population_model=population_check_model(self.cache, self.cfg.source,
                                                                              self.cfg.detection))
        elapsed = time.perf_counter() - start
        for r in results:
            r.seconds = elapsed
            r.retryable = bool(r.error) and r.user in self._lookup_failures
        with self._incident_lock:
            detections = group_incidents(filter_detections(scored, self.cfg.detection), s, self.incidents)
        return with_incidents(scored, detections), detections, results

    def infer_window(self, frame: MappedFrame, work: WorkKey | None) -> tuple[MappedFrame | None, dict[str, int]]:
        """Streaming inference through the users' inference windows (``window.inference``): the
        rows due to be scored now, and per user the rows held back. With Morpheus's default
        (batch mode, 1 / 0) every row is due at once and no window is kept.

        Call :meth:`save_inference_windows` once the scored rows are written."""
        if is_passthrough(self.cfg.window.inference):
            return frame, {}
        s = self.schema
        due, held = [], {}
        for user, rows in split_by_user(frame, s.user_column):
            win = self._window(user, "inference")
            appended = win.append(rows, work=work.tag if work is not None else None)
            if appended.emitted is not None:
                due.append(appended.emitted)
            else:
                held[user] = len(win.rows)
            self._pending_inference.add(user)
        metrics.windows_held(self.worker_index, self.windows)
        return concat_parts(due), held

    def save_inference_windows(self) -> None:
        """Checkpoint the inference windows changed since the last call (after the sink wrote)."""
        for user in sorted(self._pending_inference):
            self._save_window(user, "inference")
        self._pending_inference.clear()

    def forget_inference_windows(self) -> None:
        """A scoring call failed: drop the changed windows, so the retry starts from the checkpoints."""
        for user in self._pending_inference:
            self._forget_window(user, "inference")
        self._pending_inference.clear()

    def invalidate(self, user: str | None) -> None:
        """Forget the cached model (or cached absence) of ``user`` (``None``: the generic model)."""
        self.cache.invalidate(self.cfg.source, user)


def _holdout_of(model) -> Calibration | None:
    """A user model's held-out scores for the source's population (the router pools them)."""
    cal = getattr(model, "calibration", None)
    if cal is None or not cal.holdout:
        return None
    return Calibration(score=cal.score, holdout=cal.holdout, holdout_rows=cal.holdout_rows)
