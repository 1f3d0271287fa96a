"""The router actor: control message -> files -> batches -> frames -> per-user work.

It expands a message's globs, batches the files, loads and maps them (with the on-disk
cache), splits the rows by user and sends each user's rows to the one user actor that owns
the user (stable crc32 assignment). Work in flight is bounded (``ray.max_in_flight``), and a
message counts as done only once its training results are registered and its detections
written by the sink. The actor is threaded so the driver can poll :meth:`progress`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
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
    def __init__(self, cfg: dict, schema: dict, user_actors: list, sink, generic_actor=None):
        self.cfg = DFPConfig.model_validate(cfg)
        self.schema = SourceSchema.model_validate(schema)
        self.actors = user_actors
        self.generic_actor = generic_actor  # owns generic_user when the pipeline made one
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
        start = self._message_started = time.perf_counter()
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
            chunks = self._chunks(batch.files)
            if msg.kind == "inference" and len(chunks) > 1:
                self._load_and_infer(chunks, file_opts, opts, result)
                continue
            loaded = self._load_batch(chunks, file_opts, opts)
            stages["load"] += time.perf_counter() - started
            if loaded.errors:
                raise _unreadable(loaded.errors)
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

    def _chunks(self, files: list) -> list[list]:
        """A batch's files in contiguous chunks (file order kept), one per loading actor.

        The actors are idle while their next work is being loaded (messages and batches run
        one after another), and JSON parsing is CPU work that one process cannot spread over
        cores. Small batches stay in one piece (``ray.load_chunk_files``).
        """
        cfg = self.cfg.ray
        n = min(cfg.load_parallelism or len(self.actors), len(self.actors), len(files) // cfg.load_chunk_files)
        if n < 2:
            return [files]
        bounds = [round(i * len(files) / n) for i in range(n + 1)]
        return [files[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    def _cache_key(self, files: list, file_opts) -> str | None:
        """The on-disk cache holds one mapped frame per chunk, keyed by every file's identity
        (url, size, mtime/etag), the parser options and the schema: a changed file, option or
        schema never serves a stale frame."""
        return self.cache.batch_key(files, file_opts, self.schema.fingerprint())

    def _load_batch(self, chunks: list[list], file_opts, storage_options: dict) -> LoadResult:
        """Read and map a batch (through the cache), its chunks in parallel on the user actors."""
        if len(chunks) == 1:
            return read_and_map(chunks[0], self.schema, options=file_opts, storage_options=storage_options,
                                cache=self.cache, cache_key=self._cache_key(chunks[0], file_opts))
        refs = [
            actor.load_chunk.remote(chunk, file_opts, storage_options, self._cache_key(chunk, file_opts))
            for actor, chunk in zip(self.actors, chunks, strict=False)
        ]
        parts: list[LoadResult] = _get(refs)
        errors = [e for part in parts for e in part.errors]
        if errors:
            return LoadResult(frame=pd.DataFrame(), files_loaded=0, files_from_cache=0, errors=errors)
        frames = [part.frame for part in parts if len(part.frame)]
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else (frames[0] if frames else parts[0].frame)
        return LoadResult(frame=frame, files_loaded=sum(p.files_loaded for p in parts),
                          files_from_cache=sum(p.files_from_cache for p in parts), errors=[])

    def _load_and_infer(self, chunks: list[list], file_opts, storage_options: dict, result: dict[str, Any]) -> None:
        """Inference on a batch loaded in chunks: every loader splits its rows by owner and each
        owner scores the parts meant for it, so the rows never pass through the router."""
        started = time.perf_counter()
        n = len(self.actors)
        refs = [
            actor.load_and_split.options(num_returns=n + 1).remote(
                chunk, file_opts, storage_options, self._cache_key(chunk, file_opts), n)
            for actor, chunk in zip(self.actors, chunks, strict=False)
        ]
        infos = _get([r[0] for r in refs])
        errors = [e for info in infos for e in info["errors"]]
        if errors:
            raise _unreadable(errors)
        files = sum(info["files"] for info in infos)
        rows = sum(info["rows"] for info in infos)
        result["files"] += files
        result["files_from_cache"] += sum(info["files_from_cache"] for info in infos)
        result["rows"] += rows
        self.progress_state.update(add_files_loaded=files, add_rows_loaded=rows, stage="inference")
        result["stage_seconds"]["load"] += time.perf_counter() - started
        started = time.perf_counter()
        first = len(result["inferred"])
        in_flight = [
            self.actors[j].infer_parts.remote(*(r[j + 1] for r in refs))
            for j in range(n) if any(info["rows_per_owner"][j] for info in infos)
        ]
        self._finish_inference(in_flight, result, first, users_known=False)
        result["stage_seconds"]["infer"] += time.perf_counter() - started

    def _train(self, frame: pd.DataFrame, data_type: str, result: dict[str, Any]) -> None:
        if self.cfg.train_users == "none":
            return
        user_col = self.schema.user_column
        work = list(split_by_user(frame, user_col, train_users=self.cfg.train_users, for_training=True))
        self.progress_state.update(stage="training", add_users_total=len(work))
        trainer = {user: self.actors[self.owner_of(user)] for user, _ in work}
        if GENERIC_USER in trainer and self.generic_actor is not None:
            trainer[GENERIC_USER] = self.generic_actor  # its own actor: the pool stays balanced
        elif data_type == "payload" and GENERIC_USER in trainer:
            # In payload mode the generic model holds no state (no rolling window), so it may
            # train anywhere: put the long pole on the pool actor with the fewest rows of its own.
            load = [0] * len(self.actors)
            for user, uframe in work:
                if user != GENERIC_USER:
                    load[self.owner_of(user)] += len(uframe)
            trainer[GENERIC_USER] = self.actors[load.index(min(load))]
        pending: list = []
        generic_ref = generic_fit = None
        # Largest frames first: the generic model is the long pole, start it early.
        limit = self.max_in_flight + (self.generic_actor is not None)
        for user, uframe in sorted(work, key=lambda w: -len(w[1])):
            if user == GENERIC_USER and trainer[user] is self.generic_actor:
                generic_fit = f"{result['message_id']}:{uuid.uuid4().hex}"
                ref = generic_ref = trainer[user].train.remote(user, uframe, data_type, generic_fit)
            else:
                ref = trainer[user].train.remote(user, uframe, data_type)
            pending.append(ref)
            pending = self._drain(pending, result, limit=limit)
        if generic_ref is not None:
            pending = self._widen_generic_when_pool_done(pending, generic_ref, generic_fit, result)
        self._drain(pending, result, limit=0)
        if GENERIC_USER in trainer:
            # Every actor may fall back to the generic model: drop any cached "not found" or
            # older version now rather than after mlflow.refresh_seconds.
            ray.get([a.invalidate.remote(GENERIC_USER) for a in self.actors])

    def _widen_generic_when_pool_done(self, pending: list, generic_ref, fit_id: str,
                                      result: dict[str, Any]) -> list:
        """Wait for the pool's users; if the generic model is still fitting then, give its fit
        the pool's CPUs (one thread each) for the rest of it, instead of letting them idle.
        The message detail says when (seconds into the message) and to how many threads, or
        None for both when it did not happen."""
        result["generic_widened_at_s"] = result["generic_widened_threads"] = None
        threads = self.cfg.ray.generic_threads_after_pool
        if threads is None:
            threads = max(1, int(len(self.actors) * self.cfg.ray.num_cpus_per_actor))
        if threads <= 1:
            return pending
        generic_id = generic_ref.hex()  # ray.wait may hand back new ref objects: compare ids
        while others := [r for r in pending if r.hex() != generic_id]:
            done, _ = ray.wait(others, num_returns=1)
            done_id = done[0].hex()
            pending = [r for r in pending if r.hex() != done_id]
            self._record_training(ray.get(done[0]), result)
        if pending:
            ready, _ = ray.wait(pending, timeout=0)
            if not ready:
                granted = ray.get(self.generic_actor.widen_fit.remote(threads, fit_id))
                result["generic_widened_at_s"] = round(time.perf_counter() - self._message_started, 3)
                result["generic_widened_threads"] = granted
                log.info("pool done: the generic model's fit continues on %d threads", granted)
        return pending

    def _record_training(self, res: dict, result: dict[str, Any]) -> None:
        (result["trained"] if res["trained"] else result["skipped_users"]).append(res)
        self.progress_state.update(add_users_done=1)

    def _drain(self, pending: list, result: dict[str, Any], limit: int) -> list:
        while len(pending) > limit:
            done, pending = ray.wait(pending, num_returns=1)
            self._record_training(ray.get(done[0]), result)
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
        self._finish_inference(in_flight, result, first, writes)

    def _finish_inference(self, in_flight: list[tuple], result: dict[str, Any], first: int,
                          writes: list | None = None, *, users_known: bool = True) -> None:
        """Collect the actors' results, hand their rows to the sink, wait until written.
        ``users_known=False``: the users were not counted up front (progress total grows)."""
        writes = writes if writes is not None else []
        while in_flight:
            before = len(result["inferred"])
            writes.append(self._collect(in_flight.pop(0), result))
            if not users_known:
                self.progress_state.update(add_users_total=len(result["inferred"]) - before)
        for w in ray.get([w for w in writes if w is not None]):  # durable before the message is done
            result["detections"] += w["detections"]
        result["scored"] += sum(r["rows"] for r in result["inferred"][first:] if not r.get("error"))

    def _collect(self, refs: tuple, result: dict[str, Any]):
        frame_ref, summary_ref = refs
        summaries = _get(summary_ref)
        result["inferred"].extend(summaries)
        result["errors"].extend(s["error"] for s in summaries if s.get("error"))
        self.progress_state.update(add_users_done=len(summaries))
        if any(not s.get("error") for s in summaries):
            return self.sink.write.remote(frame_ref)  # the sink resolves the frame from the object store
        return None


def _get(refs: Any) -> Any:
    """``ray.get`` that raises an actor's own exception, not Ray's wrapper around it."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        raise (getattr(exc, "cause", None) or exc) from None


def _unreadable(errors: list) -> ValueError:
    """The rejection reason for a batch with unreadable files: ``(url, reason)`` of each."""
    return ValueError("unreadable file(s): " + "; ".join(f"{url}: {reason}" for url, reason in errors))

