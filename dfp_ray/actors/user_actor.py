"""User actors: each owns a stable subset of users, their rolling windows and loaded models."""

from __future__ import annotations

import logging
import os

import pandas as pd
import ray

from dfp_ray.config import DFPConfig
from dfp_ray.detections import filter_detections
from dfp_ray.loading import LoadResult, read_and_map
from dfp_ray.schema import SourceSchema
from dfp_ray.user_work import UserWorker

log = logging.getLogger(__name__)


@ray.remote
class UserActor:
    """Wraps :class:`~dfp_ray.user_work.UserWorker`; one process per actor."""

    def __init__(self, cfg: dict, schema: dict, index: int):
        import torch

        threads = max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        torch.set_num_threads(threads)
        self.index = index
        self.worker = UserWorker(DFPConfig.model_validate(cfg), SourceSchema.model_validate(schema), index)

    def train(self, user: str, frame: pd.DataFrame, data_type: str) -> dict:
        try:
            return self.worker.train(user, frame, data_type).model_dump()
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

    def load_chunk(self, files: list, file_opts, storage_options: dict) -> LoadResult:
        """Read and map part of a batch for the router (this actor is idle while it loads)."""
        return read_and_map(files, self.worker.schema, options=file_opts, storage_options=storage_options)

    def invalidate(self, user: str) -> None:
        """Forget the cached model (or cached absence) of ``user``; the next use asks MLflow."""
        self.worker.cache.invalidate(self.worker.cfg.source, user)

    def warm_up(self) -> float:
        return self.worker.warm_up()

    def users(self) -> list[str]:
        return sorted(self.worker.users_seen)

    def pid(self) -> int:
        return os.getpid()
