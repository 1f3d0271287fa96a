"""The router actor: control message -> files -> batches -> frames -> per-user work.

It expands a message's globs, batches the files, loads and maps them (with the on-disk
cache), splits the rows by user and sends each user's rows to the one user actor that owns
the user (stable crc32 assignment). Work in flight is bounded (``ray.max_in_flight``), and a
message counts as done only once its training results are registered and its detections
written by the sink. The actor is threaded so the driver can poll :meth:`progress`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any

import pandas as pd
import ray

from dfp_ray.config import GENERIC_USER, DFPConfig
from dfp_ray.files import FileSelectionError, plan_batches
from dfp_ray.loading import FrameCache, LoadResult, read_and_map
from dfp_ray.messages import ControlMessage, Rejection
from dfp_ray.schema import SourceSchema
from dfp_ray.users import filter_users, owner_index, split_by_user

log = logging.getLogger(__name__)


class _Progress:
    """Counters the driver turns into progress bars (thread-safe snapshot)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: dict[str, Any] = {}
        self.reset("")

    def reset(self, message_id: str) -> None:
        with self._lock:
            self.values = {
                "message_id": message_id, "stage": "starting", "files_total": 0, "files_loaded": 0,
                "rows_loaded": 0, "users_total": 0, "users_done": 0, "kind": "",
            }

    def update(self, **kw: Any) -> None:
        with self._lock:
            for k, v in kw.items():
                if k.startswith("add_"):
                    self.values[k[4:]] += v
                else:
                    self.values[k] = v

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.values)


@ray.remote(num_cpus=0, max_concurrency=4)
class RouterActor:
    def __init__(self, cfg: dict, schema: dict, user_actors: list, sink):
        self.cfg = DFPConfig.model_validate(cfg)
        self.schema = SourceSchema.model_validate(schema)
        self.actors = user_actors
        self.sink = sink
        self.cache = FrameCache(self.cfg.state_path / "cache", enabled=self.cfg.cache_loaded_files)
        self.max_in_flight = self.cfg.ray.max_in_flight or 2 * len(user_actors)
        self.progress_state = _Progress()

    def progress(self) -> dict[str, Any]:
        return self.progress_state.snapshot()

    def owner_of(self, user: str) -> int:
        return owner_index(user, len(self.actors))

    # ------------------------------------------------------------------------------------
    def process(self, message: dict) -> dict[str, Any]:
        """Run one control message to completion; never raises for bad input."""
        msg = ControlMessage.model_validate(message)
        self.progress_state.reset(msg.message_id)
        start = time.perf_counter()
        result: dict[str, Any] = {
            "message_id": msg.message_id, "kind": msg.kind, "data_type": msg.metadata.data_type,
            "files": 0, "files_from_cache": 0, "rows": 0, "trained": [], "skipped_users": [], "inferred": [],
            "scored": 0, "detections": 0, "rejection": None, "errors": [],
            "stage_seconds": {"load": 0.0, "train": 0.0, "infer": 0.0},
        }
        try:
            self._process(msg, result)
        except FileSelectionError as exc:
            result["rejection"] = self._reject(msg, exc.field, exc.reason)
        except Exception as exc:  # bad input must never kill the router
            log.exception("message %s failed", msg.message_id)
            result["rejection"] = self._reject(msg, None, f"{type(exc).__name__}: {exc}")
        result["seconds"] = time.perf_counter() - start
        self.progress_state.update(stage="done")
        return result

    def _reject(self, msg: ControlMessage, field: str | None, reason: str) -> dict:
        return Rejection.for_message(msg, reason, field).model_dump(mode="json")

    def _process(self, msg: ControlMessage, result: dict[str, Any]) -> None:
        opts = self.cfg.storage_options
        batches = plan_batches(msg, opts)
        total_files = sum(len(b.files) for b in batches)
        self.progress_state.update(stage="loading", files_total=total_files, kind=msg.kind)
        file_opts = msg.metadata.file_to_df_options
        stages = result["stage_seconds"]
        for batch in batches:
            started = time.perf_counter()
            loaded = self._load_batch(batch.files, file_opts, opts)
            stages["load"] += time.perf_counter() - started
            if loaded.errors:
                raise ValueError(
                    "unreadable file(s): " + "; ".join(f"{e.url}: {e.reason}" for e in loaded.errors)
                )
            frame = filter_users(loaded.frame, self.schema.user_column, self.cfg.only_users, self.cfg.skip_users)
            result["files"] += len(batch.files)
            result["files_from_cache"] += loaded.files_from_cache
            result["rows"] += len(frame)
            self.progress_state.update(add_files_loaded=len(batch.files), add_rows_loaded=len(frame))
            if frame.empty:
                continue
            started = time.perf_counter()
            if msg.kind == "training":
                self._train(frame, msg.metadata.data_type, result)
                stages["train"] += time.perf_counter() - started
            elif msg.kind == "inference":
                self._infer(frame, result)
                stages["infer"] += time.perf_counter() - started

    def _load_batch(self, files: list, file_opts, storage_options: dict) -> LoadResult:
        """Read a batch's files and map them with the schema, caching the mapped batch.

        The schema is applied once to the concatenated batch, not per file: a per-file
        mapping of hundreds of small files costs seconds of fixed pandas overhead. The cache
        holds one mapped frame per batch (as Morpheus caches batches), keyed by every file's
        identity (url, size, mtime/etag), the parser options and the schema, so a changed
        file, option or schema never serves a stale frame.
        """
        start = time.perf_counter()
        transform_id = self.schema.fingerprint()
        key = None
        if self.cache.enabled and files and all(self.cache.cacheable(f) for f in files):
            parts = "".join(self.cache.key(f, file_opts, transform_id) for f in files)
            key = hashlib.sha256(parts.encode()).hexdigest()
            cached = self.cache.get(key)
            if cached is not None:
                return LoadResult(frame=cached, files_loaded=len(files), files_from_cache=len(files),
                                  errors=[], seconds=time.perf_counter() - start)
        loaded = self._read_and_map(files, file_opts, storage_options)
        if loaded.errors:
            return loaded
        if key is not None:
            self.cache.put(key, loaded.frame)
        return LoadResult(frame=loaded.frame, files_loaded=loaded.files_loaded, files_from_cache=0, errors=[],
                          seconds=time.perf_counter() - start)

    def _read_and_map(self, files: list, file_opts, storage_options: dict) -> LoadResult:
        """Parse and map a batch, in contiguous chunks on the user actors when it is large.

        The actors are idle while their next work is being loaded (messages and batches run
        one after another), and JSON parsing is CPU work that one process cannot spread over
        cores; chunks keep file order, so the concatenation is the batch in time order.
        """
        cfg = self.cfg.ray
        chunks = min(cfg.load_parallelism or len(self.actors), len(self.actors), len(files) // cfg.load_chunk_files)
        if chunks < 2:
            return read_and_map(files, self.schema, options=file_opts, storage_options=storage_options)
        bounds = [round(i * len(files) / chunks) for i in range(chunks + 1)]
        refs = [
            actor.load_chunk.remote(files[lo:hi], file_opts, storage_options)
            for actor, lo, hi in zip(self.actors, bounds[:-1], bounds[1:], strict=False)
        ]
        try:
            parts: list[LoadResult] = ray.get(refs)
        except ray.exceptions.RayTaskError as exc:  # the actor's own exception, not Ray's wrapper
            raise (getattr(exc, "cause", None) or exc) from None
        errors = [e for part in parts for e in part.errors]
        if errors:
            return LoadResult(frame=pd.DataFrame(), files_loaded=0, files_from_cache=0, errors=errors)
        frames = [part.frame for part in parts if len(part.frame)]
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else (frames[0] if frames else parts[0].frame)
        return LoadResult(frame=frame, files_loaded=sum(p.files_loaded for p in parts), files_from_cache=0, errors=[])

    def _train(self, frame: pd.DataFrame, data_type: str, result: dict[str, Any]) -> None:
        if self.cfg.train_users == "none":
            return
        user_col = self.schema.user_column
        work = list(split_by_user(frame, user_col, train_users=self.cfg.train_users, for_training=True))
        self.progress_state.update(stage="training", add_users_total=len(work))
        owners = {user: self.owner_of(user) for user, _ in work}
        if data_type == "payload" and GENERIC_USER in owners:
            # In payload mode the generic model holds no state (no rolling window), so it may
            # train anywhere: put the long pole on the actor with the fewest rows of its own.
            load = [0] * len(self.actors)
            for user, uframe in work:
                if user != GENERIC_USER:
                    load[owners[user]] += len(uframe)
            owners[GENERIC_USER] = load.index(min(load))
        pending: list = []
        # Largest frames first: the generic model is the long pole, start it early.
        for user, uframe in sorted(work, key=lambda w: -len(w[1])):
            pending.append(self.actors[owners[user]].train.remote(user, uframe, data_type))
            pending = self._drain(pending, result, limit=self.max_in_flight)
        self._drain(pending, result, limit=0)
        if GENERIC_USER in owners:
            # Every actor may fall back to the generic model: drop any cached "not found" or
            # older version now rather than after mlflow.refresh_seconds.
            ray.get([a.invalidate.remote(GENERIC_USER) for a in self.actors])

    def _drain(self, pending: list, result: dict[str, Any], limit: int) -> list:
        while len(pending) > limit:
            done, pending = ray.wait(pending, num_returns=1)
            res = ray.get(done[0])
            (result["trained"] if res["trained"] else result["skipped_users"]).append(res)
            self.progress_state.update(add_users_done=1)
        return pending

    def _infer(self, frame: pd.DataFrame, result: dict[str, Any]) -> None:
        """One call per owning actor and chunk of users (not one per user): Ray's per-call
        overhead would otherwise dominate when users have a handful of events each."""
        user_col = self.schema.user_column
        users = frame[user_col].astype(str)
        unique = users.unique()
        owner_of_user = {u: self.owner_of(u) for u in unique}  # one crc32 per user, not per row
        owners = users.map(owner_of_user)
        self.progress_state.update(stage="inference", add_users_total=len(unique))
        first = len(result["inferred"])  # this batch's users start here (streaming: one call per batch)
        in_flight: list[tuple] = []
        writes: list = []
        chunk_users = self.cfg.ray.users_per_call
        for actor_idx, rows in frame.groupby(owners, sort=True):
            actor_users = rows[user_col].astype(str).unique()
            for start in range(0, len(actor_users), chunk_users):
                chunk = set(actor_users[start:start + chunk_users])
                part = rows[rows[user_col].astype(str).isin(chunk)] if len(actor_users) > chunk_users else rows
                frame_ref, summary_ref = self.actors[actor_idx].infer.remote(part)
                in_flight.append((frame_ref, summary_ref))
                while len(in_flight) > self.max_in_flight:
                    writes.append(self._collect(in_flight.pop(0), result))
        while in_flight:
            writes.append(self._collect(in_flight.pop(0), result))
        for w in ray.get([w for w in writes if w is not None]):  # durable before the message is done
            result["detections"] += w["detections"]
        result["scored"] += sum(r["rows"] for r in result["inferred"][first:] if not r.get("error"))

    def _collect(self, refs: tuple, result: dict[str, Any]):
        frame_ref, summary_ref = refs
        summaries = ray.get(summary_ref)
        result["inferred"].extend(summaries)
        result["errors"].extend(s["error"] for s in summaries if s.get("error"))
        self.progress_state.update(add_users_done=len(summaries))
        if any(not s.get("error") for s in summaries):
            return self.sink.write.remote(frame_ref)  # the sink resolves the frame from the object store
        return None
