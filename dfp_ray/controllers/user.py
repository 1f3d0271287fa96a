"""What a user actor does, without Ray: load its share of a batch, train, register, look up, score.

:class:`UserController` holds the state a user actor owns (rolling windows, a cache of loaded
models, the fit in progress) and calls the pipeline's steps in order. The Ray actor in
:mod:`dfp_ray.actors.user_actor` is a thin wrapper around it, so tests and notebooks run the
very same code without a cluster.

Which rows reach it: a loader (any pool actor) reads one chunk of a batch and splits its rows
by owning actor (:meth:`UserController.load_for_owners`); each owner receives its parts
directly, so rows never travel back through the router. The generic model's trainer
receives every chunk whole.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from dfp_ray import metrics
from dfp_ray.config import DFPConfig
from dfp_ray.messages import BatchingOptions, FileToDfOptions
from dfp_ray.pipeline.data_prep import prepare_features
from dfp_ray.pipeline.file_batcher import OUTSIDE_WINDOW, keep_rows_in_window
from dfp_ray.pipeline.file_to_df import read_and_map
from dfp_ray.pipeline.filter_detections import filter_detections
from dfp_ray.pipeline.frames import DetectionFrame, MappedFrame, ScoredFrame, UserFrame
from dfp_ray.pipeline.fsspec_loader import FileRef
from dfp_ray.pipeline.inference import score_users
from dfp_ray.pipeline.mlflow_model_writer import write_model
from dfp_ray.pipeline.rolling_window import RollingWindow
from dfp_ray.pipeline.split_users import filter_users, split_by_owner, split_by_user
from dfp_ray.pipeline.training import too_few_rows, train_model
from dfp_ray.readers.frame_cache import FrameCache
from dfp_ray.registry.names import GENERIC_SLOT, safe_user_name, user_label
from dfp_ray.results import FileProblem, InferResult, LoadInfo, TrainResult
from dfp_ray.schemas import SourceSchema

log = logging.getLogger(__name__)


class NoModelError(LookupError):
    """Neither the user nor the generic model is registered."""


WORK_TAG = "dfp_work"  # model-version tag: the run and message that trained the version


class WorkKey(BaseModel):
    """Which run and message a training call belongs to; on a retry, which models are still owed."""

    run_id: str
    message_id: str
    retry: bool = False
    only: list[str | None] | None = None  # models still owed (None in it: the generic model)

    @property
    def tag(self) -> str:
        return f"{self.run_id}/{self.message_id}"

    def wants(self, user: str | None) -> bool:
        return self.only is None or user in self.only


def concat_parts(parts: Sequence[pd.DataFrame | None]) -> pd.DataFrame | None:
    """The non-empty parts in order, as one frame (None when there are none)."""
    present = [p for p in parts if p is not None and len(p)]
    if not present:
        return None
    return pd.concat(present, ignore_index=True) if len(present) > 1 else present[0]


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
        self.windows: dict[str | None, RollingWindow] = {}  # None: the generic model's window
        self.users_seen: set[str] = set()
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
    ) -> tuple[LoadInfo, list[MappedFrame | None], MappedFrame | None]:
        """Read and map one chunk of a batch, keep the rows inside the message's time window
        (``batching``) and the configured users, split by owning actor.

        Returns the chunk's :class:`LoadInfo` (with the records dropped, per reason), one part
        per owner index, and (``keep_whole``) the whole chunk for the generic model's trainer.
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
        parts = split_by_owner(frame, s.user_column, pool_size)
        info.rows = len(frame)
        info.owner_users = [sorted(p[s.user_column].astype(str).unique()) for p in parts]
        info.owner_rows = [len(p) for p in parts]
        return info, parts, (frame.reset_index(drop=True) if keep_whole else None)

    # ---- rolling windows (streaming training) -------------------------------------------
    def _window_path(self, user: str | None) -> Path:
        name = GENERIC_SLOT if user is None else safe_user_name(user)
        return self.cfg.state_path / "windows" / self.cfg.source / f"{name}.parquet"

    def _window(self, user: str | None) -> RollingWindow:
        win = self.windows.get(user)
        if win is None:
            path = self._window_path(user)
            s = self.schema
            if path.exists():
                win = RollingWindow.load(path, self.cfg.window, s.time_column, s.event_id_column)
            else:
                win = RollingWindow(self.cfg.window, s.time_column, s.event_id_column)
            self.windows[user] = win
        return win

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
        for user, frame in sorted(todo, key=lambda w: -len(w[1])):
            yield self.train(user, frame, data_type, fit_id if user is None else None, work=work)

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
        start = time.perf_counter()
        base = {"user": user_label(user), "generic": user is None, "worker": self.worker_index}
        if user is not None:
            self.users_seen.add(user)
        try:
            if work is not None and work.retry:
                done = self.registry.version_with_tag(self.cfg.source, user, WORK_TAG, work.tag)
                if done is not None:
                    self.cache.invalidate(self.cfg.source, user)
                    return TrainResult(**base, rows=len(frame), trained=True, model_version=done.label,
                                       seconds=time.perf_counter() - start,
                                       reason="registered before its actor restarted; not trained again")
            with self._fit_lock:
                self._fit_id = fit_id
                try:
                    fitted = self._fit(user, frame, data_type)
                finally:
                    self._fit_id, self._finished_fit_id = None, fit_id
                    self._widen.pop(fit_id, None)  # type: ignore[arg-type]
            if isinstance(fitted, str):
                return TrainResult(**base, rows=len(frame), trained=False, reason=fitted)
            model, report, prepared = fitted
            registering = time.perf_counter()
            tags = {"data_type": data_type, **({WORK_TAG: work.tag} if work is not None else {})}
            ref = write_model(self.registry, source=self.cfg.source, user=user, model=model, report=report,
                              schema=self.schema, prepared=prepared, tags=tags)
            self.cache.put(self.cfg.source, user, model, ref)
            if data_type == "streaming":  # the emitted window is checkpointed only once registered
                self._window(user).save(self._window_path(user))
        except Exception as exc:  # noqa: BLE001 - reported in the result, the message goes on
            log.exception("training %s failed", user_label(user))
            return TrainResult(**base, rows=len(frame), trained=False, reason=f"error: {type(exc).__name__}: {exc}")
        return TrainResult(
            **base, rows=len(prepared), trained=True, model_version=ref.label,
            seconds=time.perf_counter() - start, fit_seconds=report.seconds,
            register_seconds=time.perf_counter() - registering,
            epochs_run=report.epochs_run, best_val_loss=report.best_val_loss,
            fit_threads=self._last_fit_threads,
        )

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

    def _fit(self, user: str | None, frame: UserFrame, data_type: str):
        """Rolling window (streaming) and the fit: ``(model, report, prepared rows)``, or the
        reason nothing was trained. Runs under the worker's fit lock."""
        if data_type == "streaming":
            win = self._window(user)
            due = win.append(frame)
            metrics.windows_held(self.worker_index, self.windows)
            if due is None:
                win.save(self._window_path(user))
                return (f"rolling window holds {len(win.rows)} rows, {win.new_since_emit} new "
                        f"(needs {self.cfg.window.min_history} and {self.cfg.window.min_increment} new)")
            # Due: the window is saved after the model is registered (see train), so an actor that
            # dies in between finds the rows still new when the batch is sent again.
            frame = due
        reason = too_few_rows(len(frame), self.cfg.min_train_rows)
        if reason:
            return reason
        return train_model(frame, self.schema, self.cfg.autoencoder, threads=self._fit_threads)

    # ---- inference ----------------------------------------------------------------------
    def model_for(self, user: str):
        """The user's latest model, else the generic one; raises NoModelError with advice."""
        found = self.cache.get(self.cfg.source, user)
        if found is None and self.cfg.fallback_to_generic:
            found = self.cache.get(self.cfg.source, None)
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
        wanted: list[str | None] = [*users, None] if self.cfg.fallback_to_generic else list(users)
        try:
            self.cache.prefetch(self.cfg.source, wanted)
        except Exception as exc:  # noqa: BLE001 - an optimisation: model_for() reports per user
            log.debug("model prefetch failed: %s", exc)
        scored, results = score_users(prepared, s, self.model_for, worker=self.worker_index)
        elapsed = time.perf_counter() - start
        for r in results:
            r.seconds = elapsed
        return scored, filter_detections(scored, self.cfg.detection), results

    def invalidate(self, user: str | None) -> None:
        """Forget the cached model (or cached absence) of ``user`` (``None``: the generic model)."""
        self.cache.invalidate(self.cfg.source, user)
