"""What a user actor does, without Ray: train, register, look up, score (REFERENCE A4 steps 7-13).

:class:`UserWorker` holds the state a user actor owns (rolling windows, a cache of loaded
models) and implements training and inference for one user's rows. The Ray actor in
:mod:`dfp_ray.actors.user_actor` is a thin wrapper, so tests and notebooks can run the very
same code without a cluster.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from dfp_ray.batch_scoring import score_groups
from dfp_ray.config import GENERIC_USER, DFPConfig
from dfp_ray.rolling_window import RollingWindow
from dfp_ray.schema import SourceSchema, prepare_features

log = logging.getLogger(__name__)


class TrainResult(BaseModel):
    user: str
    rows: int
    trained: bool
    model_version: str | None = None
    seconds: float = 0.0
    fit_seconds: float = 0.0
    register_seconds: float = 0.0
    reason: str = ""
    worker: int = -1
    epochs_run: int = 0
    best_val_loss: float | None = None
    fit_threads: int = 0  # intra-op threads at the end of the fit (more once widened, see widen_fit)


class InferResult(BaseModel):
    user: str
    rows: int
    model_version: str | None
    seconds: float
    worker: int
    error: str = ""


class NoModelError(LookupError):
    """Neither the user nor the generic model is registered."""


class UserWorker:
    """Per-actor state and the train / infer logic for the users this actor owns."""

    def __init__(self, cfg: DFPConfig, schema: SourceSchema, worker_index: int = 0, threads: int | None = None):
        from dfp_ray.registry import ModelCache, ModelRegistry

        self.cfg = cfg
        self.schema = schema
        self.worker_index = worker_index
        self.registry = ModelRegistry.from_config(cfg)
        self.cache = ModelCache(
            self.registry, max_models=cfg.ray.max_models_cached, refresh_seconds=cfg.mlflow.refresh_seconds
        )
        self.windows: dict[str, RollingWindow] = {}
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

    # ---- rolling windows (streaming training) -------------------------------------------
    def _window_path(self, user: str) -> Path:
        from dfp_ray.registry import safe_user_name

        return self.cfg.state_path / "windows" / self.cfg.source / f"{safe_user_name(user)}.parquet"

    def _window(self, user: str) -> RollingWindow:
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
    def train(
        self, user: str, frame: pd.DataFrame, data_type: str = "payload", fit_id: str | None = None
    ) -> TrainResult:
        """Train (and register) a model for ``user`` on ``frame`` (mapped rows, any order).

        ``fit_id`` names this call for :meth:`widen_fit` (any string unique per call)."""
        start = time.perf_counter()
        self.users_seen.add(user)
        with self._fit_lock:
            self._fit_id = fit_id
            try:
                fitted = self._fit(user, frame, data_type)
            finally:
                self._fit_id, self._finished_fit_id = None, fit_id
                self._widen.pop(fit_id, None)  # type: ignore[arg-type]
        if isinstance(fitted, TrainResult):
            return fitted
        model, report, prepared = fitted
        s = self.schema
        registering = time.perf_counter()
        times = prepared[s.time_column]
        ref = self.registry.register(
            source=self.cfg.source, user=user, model=model, report=report, schema=s,
            first_event=times.min().to_pydatetime(), last_event=times.max().to_pydatetime(),
            tags={"data_type": data_type},
        )
        self.cache.put(self.cfg.source, user, model, ref)
        return TrainResult(
            user=user, rows=len(prepared), trained=True, model_version=ref.label,
            seconds=time.perf_counter() - start, fit_seconds=report.seconds,
            register_seconds=time.perf_counter() - registering, worker=self.worker_index,
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

    def _fit(self, user: str, frame: pd.DataFrame, data_type: str):
        """Window bookkeeping and the fit: ``(model, report, prepared rows)``, or a TrainResult
        saying why nothing was trained. Runs under the worker's fit lock."""
        from dfp_ray.autoencoder import DFPAutoencoder

        if data_type == "streaming":
            win = self._window(user)
            due = win.append(frame)
            win.save(self._window_path(user))
            if due is None:
                return TrainResult(
                    user=user, rows=len(frame), trained=False, worker=self.worker_index,
                    reason=f"rolling window holds {len(win.rows)} rows, {win.new_since_emit} new "
                    f"(needs {self.cfg.window.min_history} and {self.cfg.window.min_increment} new)",
                )
            frame = due
        if len(frame) < self.cfg.min_train_rows:
            return TrainResult(
                user=user, rows=len(frame), trained=False, worker=self.worker_index,
                reason=f"{len(frame)} rows < min_train_rows={self.cfg.min_train_rows}",
            )
        s = self.schema
        prepared = prepare_features(frame, s)
        model = DFPAutoencoder(
            categorical=s.features.categorical, numeric=s.features.numeric, binary=s.features.binary,
            params=self.cfg.autoencoder,
        )
        report = model.fit(prepared, threads=self._fit_threads)
        return model, report, prepared

    # ---- inference ----------------------------------------------------------------------
    def model_for(self, user: str):
        """The user's latest model, else the generic one; raises NoModelError with advice."""
        found = self.cache.get(self.cfg.source, user)
        if found is None and self.cfg.fallback_to_generic and user != GENERIC_USER:
            found = self.cache.get(self.cfg.source, GENERIC_USER)
        if found is None:
            raise NoModelError(
                f"no model registered for user '{user}' of source '{self.cfg.source}'"
                + (" and no generic model" if self.cfg.fallback_to_generic else "")
                + f" in the registry at {self.cfg.tracking_uri}; run a training message first "
                "(train_users=all or generic trains the fallback model)"
            )
        return found

    def infer(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, list[InferResult]]:
        """Score every row of ``frame`` (any number of users this actor owns).

        Counters are computed once for the whole frame (they are per user anyway); each
        user's model is resolved (own model, else generic) and rows that share a model are
        scored in one call, so thousands of users with a few events each cost a few model
        calls, not thousands. A user without any model is reported in its result and skipped.
        """
        start = time.perf_counter()
        s = self.schema
        prepared = prepare_features(frame, s).reset_index(drop=True)
        available = set(prepared.columns)
        users = prepared[s.user_column].astype(str)
        by_user = users.groupby(users, sort=False).indices
        wanted = [*by_user, GENERIC_USER] if self.cfg.fallback_to_generic else list(by_user)
        try:  # one registry round trip for the users not cached (or due a refresh), not one each
            self.cache.prefetch(self.cfg.source, wanted)
        except Exception as exc:  # noqa: BLE001 - an optimisation: model_for() reports per user
            log.debug("model prefetch failed: %s", exc)
        results: dict[str, InferResult] = {}
        by_model: dict[str, tuple[object, list]] = {}
        for user, idx in by_user.items():
            self.users_seen.add(user)
            try:
                model, ref = self.model_for(user)
                lacking = [c for c in model.feature_columns if c not in available]
                if lacking:
                    raise ValueError(f"model {ref.label} needs feature columns {lacking} that the schema does not produce")
            except Exception as exc:  # no model, registry down, another feature set: this user only
                results[user] = InferResult(user=user, rows=len(idx), model_version=None, seconds=0.0,
                                            worker=self.worker_index, error=f"{type(exc).__name__}: {exc}")
                continue
            by_model.setdefault(ref.label, (model, []))[1].append(idx)
            results[user] = InferResult(user=user, rows=len(idx), model_version=ref.label, seconds=0.0,
                                        worker=self.worker_index)
        groups = [(model, label, np.concatenate(parts)) for label, (model, parts) in by_model.items()]
        out = score_groups(prepared, s, groups)
        elapsed = time.perf_counter() - start
        for r in results.values():
            r.seconds = elapsed
        return out, list(results.values())
