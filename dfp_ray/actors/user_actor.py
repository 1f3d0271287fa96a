"""User actors: each owns a stable subset of users, their rolling windows and loaded models.

A thin Ray wrapper over :class:`~dfp_ray.controllers.user.UserController`: it owns the process
(torch threads, the controller's state) and concurrency; the controller does the work.
"""

from __future__ import annotations

import os

import ray

from dfp_ray import metrics
from dfp_ray.config import DFPConfig
from dfp_ray.controllers.user import UserController, WorkKey, concat_parts
from dfp_ray.messages import BatchingOptions, FileToDfOptions
from dfp_ray.pipeline.fsspec_loader import FileRef
from dfp_ray.results import InferBatch, InferResult, SinkWrite
from dfp_ray.schemas import SourceSchema


@ray.remote
class UserActor:
    """One process per actor; its calls run one at a time unless ``ray.actor_concurrency`` > 1."""

    def __init__(self, cfg: DFPConfig, schema: SourceSchema, index: int):
        import torch

        threads = max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        torch.set_num_threads(threads)
        self.index = index
        self.controller = UserController(cfg, schema, index, threads=threads)

    @ray.method(max_task_retries=-1)  # a pure read: safe to run again on a restarted actor
    @metrics.counts_in_flight("user_actor", "load")
    def load_and_split(self, files: list[FileRef], file_opts: FileToDfOptions | None, storage_options: dict,
                       cache_key: str | None, pool_size: int, batching: BatchingOptions | None,
                       keep_whole: bool, users: list[str] | None = None) -> tuple:
        """Read and map one chunk of a batch and split its rows by owning actor.

        Returns ``(LoadInfo, part_0, ..., part_{pool_size-1}, whole)`` (call with
        ``num_returns=pool_size + 2``): the router hands each part's reference straight to its
        owner, so rows go loader -> owner through the object store, never through the router."""
        info, parts, whole = self.controller.load_for_owners(
            files, file_opts, storage_options, cache_key, pool_size, batching=batching, keep_whole=keep_whole,
            users=users)
        return (info, *parts, whole)

    @metrics.counts_in_flight("user_actor", "train")
    def train_parts(self, data_type: str, n_user_parts: int, train_individual: bool, fit_id: str | None,
                    work: WorkKey, *frames):
        """Train the users of the first ``n_user_parts`` frames and, when more frames follow
        (whole chunks), the generic model; yields one :class:`TrainResult` per model (a Ray
        streaming generator, so the router sees each model as soon as it is registered).

        Not retried by Ray: after an actor died the router sends the models still owed again
        (``work.only``), and versions registered just before the crash are not trained twice."""
        yield from self.controller.train_parts(
            frames[:n_user_parts], frames[n_user_parts:], data_type,
            train_individual=train_individual, fit_id=fit_id, work=work)

    @ray.method(max_task_retries=-1)  # safe to run again: the sink skips rows it already wrote
    @metrics.counts_in_flight("user_actor", "infer")
    def infer_parts(self, sink, run_id: str, *frames, work: WorkKey | None = None,
                    data_type: str = "payload") -> InferBatch:
        """Score the parts several loaders sent this actor, in calls of at most
        ``ray.users_per_call`` users, and hand each call's detections (and, with
        ``output.write_all_scores``, every score) to the sink; returns once written.

        Streaming: the rows go through the users' inference windows first (``window.inference``;
        by default every row is scored at once); the windows are checkpointed after the sink
        wrote what they emitted."""
        frame = concat_parts(frames)
        batch = InferBatch()
        if frame is None:
            return batch
        c = self.controller
        held: dict[str, int] = {}
        if data_type == "streaming":
            try:
                frame, held = c.infer_window(frame, work)
            except Exception:
                c.forget_inference_windows()
                raise
        try:
            if frame is not None:
                self._score(frame, sink, run_id, batch)
        except Exception:
            c.forget_inference_windows()
            raise
        c.save_inference_windows()
        batch.users.extend(InferResult(user=u, rows=0, model_version=None, seconds=0.0, worker=self.index, held=n)
                           for u, n in held.items())
        return batch

    def _score(self, frame, sink, run_id: str, batch: InferBatch) -> None:
        c = self.controller
        users = frame[c.schema.user_column].astype(str)
        unique = users.unique()
        step = c.cfg.ray.users_per_call
        for start in range(0, len(unique), step):
            part = frame[users.isin(unique[start:start + step])] if len(unique) > step else frame
            try:
                scored, detections, results = c.infer(part)
            except Exception as exc:  # noqa: BLE001 - e.g. a frame the schema cannot prepare
                counts = part[c.schema.user_column].astype(str).value_counts()
                batch.users.extend(InferResult(user=u, rows=int(n), model_version=None, seconds=0.0, worker=self.index,
                                               error=f"{type(exc).__name__}: {exc}") for u, n in counts.items())
                continue
            batch.users.extend(results)
            if any(not r.error for r in results):
                scores = scored if c.cfg.output.write_all_scores else None
                written: SinkWrite = ray.get(sink.write.remote(run_id, detections, scores))
                batch.written.detections += written.detections
                batch.written.scores += written.scores

    def widen_fit(self, threads: int, fit_id: str) -> int:
        """See :meth:`UserController.widen_fit` (needs an actor that runs two calls at once)."""
        return self.controller.widen_fit(threads, fit_id)

    @ray.method(max_task_retries=-1)
    def ping(self) -> int:
        """Answers once the actor is up (Ray holds the call while a dead actor restarts)."""
        return self.index

    def invalidate(self, user: str | None) -> None:
        """Forget the cached model (or cached absence) of ``user``; the next use asks MLflow."""
        self.controller.invalidate(user)

    def warm_up(self) -> float:
        return self.controller.warm_up()

    def users(self) -> list[str]:
        return sorted(self.controller.users_seen)

    def pid(self) -> int:
        return os.getpid()

    @ray.method(max_task_retries=-1)
    def node_id(self) -> str:
        """The Ray node this actor runs on (where Ray placed, or re-placed, it)."""
        return ray.get_runtime_context().get_node_id()
