"""User actors: each owns a stable subset of users, their rolling windows and loaded models."""

from __future__ import annotations

import logging
import os

import pandas as pd
import ray

from dfp_ray.config import DFPConfig
from dfp_ray.detections import filter_detections
from dfp_ray.loading import FrameCache, LoadResult, read_and_map
from dfp_ray.schema import SourceSchema
from dfp_ray.user_work import UserWorker
from dfp_ray.users import filter_users, split_by_owner

log = logging.getLogger(__name__)


@ray.remote
class UserActor:
    """Wraps :class:`~dfp_ray.user_work.UserWorker`; one process per actor."""

    def __init__(self, cfg: dict, schema: dict, index: int):
        import torch

        threads = max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        torch.set_num_threads(threads)
        self.index = index
        self.worker = UserWorker(
            DFPConfig.model_validate(cfg), SourceSchema.model_validate(schema), index, threads=threads
        )
        self.file_cache = FrameCache(self.worker.cfg.state_path / "cache", enabled=self.worker.cfg.cache_loaded_files)

    def train(self, user: str, frame: pd.DataFrame, data_type: str, fit_id: str | None = None) -> dict:
        try:
            return self.worker.train(user, frame, data_type, fit_id).model_dump()
        except Exception as exc:  # one user's failure must not lose the other users' work
            log.exception("training %s failed", user)
            return {"user": user, "rows": len(frame), "trained": False, "worker": self.index,
                    "reason": f"error: {type(exc).__name__}: {exc}"}

    @ray.method(num_returns=2)
    def infer(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
        """Score the rows of the users this actor owns; per-user failures are in the results.

        Returns the rows the sink needs (all scored rows with ``output.write_all_scores``,
        else the detections) and one result per user (rows scored, model used, error)."""
        try:
            scored, results = self.worker.infer(frame)
        except Exception as exc:  # e.g. a frame the schema cannot prepare: report every user
            log.exception("inference failed")
            users = frame[self.worker.schema.user_column].astype(str).value_counts()
            return None, [{"user": u, "rows": int(n), "model_version": None, "seconds": 0.0,
                           "worker": self.index, "error": f"{type(exc).__name__}: {exc}"} for u, n in users.items()]
        if not self.worker.cfg.output.write_all_scores:
            # only detections travel to the sink: ~1% of the rows at the default threshold
            scored = filter_detections(scored, self.worker.cfg.detection)
        return scored, [r.model_dump() for r in results]

    def load_chunk(self, files: list, file_opts, storage_options: dict, cache_key: str | None) -> LoadResult:
        """Read and map part of a batch for the router (this actor is idle while it loads)."""
        return read_and_map(files, self.worker.schema, options=file_opts, storage_options=storage_options,
                            cache=self.file_cache, cache_key=cache_key)

    def load_and_split(self, files: list, file_opts, storage_options: dict, cache_key: str | None,
                       pool_size: int) -> tuple:
        """Inference: read and map part of a batch, then split its rows by owning actor.

        Returns ``(info, part_0, ..., part_{pool_size-1})`` (call with ``num_returns=pool_size
        + 1``): the router hands each part's reference straight to its owner, so the rows go
        loader -> owner through the object store without passing through the router."""
        loaded = self.load_chunk(files, file_opts, storage_options, cache_key)
        info = {"files": len(files), "files_from_cache": loaded.files_from_cache, "rows": 0,
                "errors": [tuple(e) for e in loaded.errors], "rows_per_owner": [0] * pool_size}
        if loaded.errors:
            return (info, *([None] * pool_size))
        cfg, s = self.worker.cfg, self.worker.schema
        frame = filter_users(loaded.frame, s.user_column, cfg.only_users, cfg.skip_users)
        parts = split_by_owner(frame, s.user_column, pool_size)
        info.update(rows=len(frame), rows_per_owner=[len(p) for p in parts])
        return (info, *parts)

    @ray.method(num_returns=2)
    def infer_parts(self, *frames: pd.DataFrame | None) -> tuple[pd.DataFrame | None, list[dict]]:
        """:meth:`infer` on the concatenation of the parts several loaders sent this actor."""
        present = [f for f in frames if f is not None and len(f)]
        if not present:
            return None, []
        return self.infer(pd.concat(present, ignore_index=True) if len(present) > 1 else present[0])

    def widen_fit(self, threads: int, fit_id: str) -> int:
        """See :meth:`UserWorker.widen_fit` (needs an actor that runs two calls at once)."""
        return self.worker.widen_fit(threads, fit_id)

    def invalidate(self, user: str) -> None:
        """Forget the cached model (or cached absence) of ``user``; the next use asks MLflow."""
        self.worker.cache.invalidate(self.worker.cfg.source, user)

    def warm_up(self) -> float:
        return self.worker.warm_up()

    def users(self) -> list[str]:
        return sorted(self.worker.users_seen)

    def pid(self) -> int:
        return os.getpid()
