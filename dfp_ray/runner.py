"""The driver of a batch run: control-message files in, detections out, a summary back.

Starts (or joins) Ray, creates the user-actor pool, the sink and the router, feeds the
router one control message at a time (messages run in file order, so a training message
finishes before the inference message after it), shows progress bars, writes rejected
messages to a dead-letter file and returns a :class:`RunSummary`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from dfp_ray.config import DFPConfig
from dfp_ray.messages import ControlMessage, DeadLetterWriter, Rejection, parse_control_messages
from dfp_ray.results import MessageResult, Progress, RunSummary
from dfp_ray.schemas import SourceSchema, load_schema

log = logging.getLogger(__name__)


def init_ray(address: str | None, *, quiet: bool = True) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"log_to_driver": not quiet, "configure_logging": quiet}
    if address:
        kwargs["address"] = address
    else:
        kwargs["include_dashboard"] = False
    ray.init(**kwargs)


def apply_time_window(messages: list[ControlMessage], start: str | None, duration: str | None) -> None:
    """``--start-time``/``--duration`` override every message's batching window."""
    if not start and not duration:
        return
    from dfp_ray.messages import BatchingOptions

    for msg in messages:
        opts = msg.metadata.batching_options or BatchingOptions()
        begin = datetime.fromisoformat(start) if start else opts.start_time
        updates: dict[str, Any] = {}
        if start:
            updates["start_time"] = begin
        if duration:
            if begin is None:
                raise ValueError("--duration needs --start-time (or a start_time in the message)")
            import pandas as pd

            updates["end_time"] = (pd.Timestamp(begin) + pd.Timedelta(duration)).to_pydatetime() - timedelta(microseconds=1)
        msg.metadata.batching_options = BatchingOptions.model_validate({**opts.model_dump(), **updates})


class Pipeline:
    """A warm pipeline: actors stay up between :meth:`run_messages` calls (benchmarks, tests)."""

    def __init__(self, cfg: DFPConfig, schema: SourceSchema | None = None):
        import ray

        from dfp_ray.actors.router import RouterActor
        from dfp_ray.actors.sink import SinkActor
        from dfp_ray.actors.user_actor import UserActor

        init_ray(cfg.ray.address)
        self.cfg = cfg
        self.schema = schema or load_schema(cfg.schema_ref)
        cfg.state_path.mkdir(parents=True, exist_ok=True)
        # Open (and for a new sqlite file, create) the registry once, here, before the actors
        # race to do it; an unreachable tracking server fails the run now, not per user.
        from dfp_ray.registry import ModelRegistry

        ModelRegistry.from_config(cfg).client  # noqa: B018
        resources = ray.available_resources()
        gpus = int(resources.get("GPU", 0))
        n = cfg.ray.num_user_actors or (gpus if gpus and cfg.ray.num_gpus_per_actor else
                                        max(1, int(resources.get("CPU", 1))))
        opts = {"num_cpus": cfg.ray.num_cpus_per_actor, "max_concurrency": cfg.ray.actor_concurrency}
        if cfg.ray.num_gpus_per_actor:
            opts["num_gpus"] = cfg.ray.num_gpus_per_actor
        self.user_actors = [UserActor.options(**opts).remote(cfg, self.schema, i) for i in range(n)]
        # The generic model's own actor (CPU pools; see RayConfig.generic_actor). Index n: it
        # owns generic_user only. No CPU reserved: it runs beside the pool, not instead of it.
        self.generic_actor = None
        if cfg.ray.generic_actor and not cfg.ray.num_gpus_per_actor and cfg.train_users in ("all", "generic"):
            # two calls at once: the router's widen_fit arrives while train runs
            self.generic_actor = UserActor.options(num_cpus=0, max_concurrency=2).remote(cfg, self.schema, n)
        self.sink = SinkActor.remote(cfg)
        self.router = RouterActor.remote(cfg, self.schema, self.user_actors, self.sink, self.generic_actor)
        # Fail fast if an actor can't start, and pay one-time import costs now, in parallel.
        ray.get([a.warm_up.remote() for a in self._actors()])

    def _actors(self) -> list:
        return [*self.user_actors, *([self.generic_actor] if self.generic_actor is not None else [])]

    def run_messages(self, messages: list[ControlMessage], *, progress: bool = True) -> list[MessageResult]:
        """Run messages one after another (a training message finishes before the inference
        message after it); each result arrives once its work is durable."""
        results = []
        for msg in messages:
            ref = self.router.process.remote(msg)
            results.append(self._wait_with_progress(ref, msg, progress))
        return results

    def _wait_with_progress(self, ref, msg: ControlMessage, progress: bool) -> MessageResult:
        import ray
        from tqdm import tqdm

        show = progress and sys.stderr.isatty()
        bars: dict[str, tqdm] = {}
        limit = self.cfg.ray.message_timeout_s
        deadline = time.monotonic() + limit if limit else None
        while True:
            if deadline is not None and time.monotonic() > deadline:
                ray.cancel(ref)
                raise TimeoutError(
                    f"control message {msg.message_id} did not finish within ray.message_timeout_s={limit} s"
                )
            done, _ = ray.wait([ref], timeout=0.25)
            state = ray.get(self.router.progress.remote())
            if show:
                self._draw(bars, state, msg)
            if done:
                break
        for bar in bars.values():
            bar.close()
        return ray.get(ref)

    @staticmethod
    def _draw(bars: dict, state: Progress, msg: ControlMessage) -> None:
        from tqdm import tqdm

        if state.files_total:
            bar = bars.setdefault("load", tqdm(total=state.files_total, desc=f"load  {msg.message_id}",
                                               unit="file", leave=False))
            bar.n = state.files_loaded
            bar.refresh()
        if state.users_total:
            label = "train" if state.kind == "training" else "infer"
            bar = bars.setdefault(label, tqdm(total=state.users_total, desc=f"{label} {msg.message_id}",
                                              unit="user", leave=False))
            bar.total = state.users_total
            bar.n = state.users_done
            bar.refresh()

    def output_paths(self) -> dict:
        import ray

        return ray.get(self.sink.paths.remote())

    def shutdown(self) -> None:
        import ray

        for a in [self.router, self.sink, *self._actors()]:
            ray.kill(a)


def run(
    cfg: DFPConfig,
    input_files: list[str],
    *,
    start_time: str | None = None,
    duration: str | None = None,
    progress: bool = True,
    pipeline: Pipeline | None = None,
) -> RunSummary:
    started = time.perf_counter()
    summary = RunSummary()
    dead_path = Path(cfg.state_dir) / f"dead_letters_{cfg.source}.jsonl"
    dead = DeadLetterWriter(dead_path)
    messages: list[ControlMessage] = []
    rejections: list[Rejection] = []
    for path in input_files:
        parsed = parse_control_messages(path)
        messages.extend(parsed.messages)
        rejections.extend(parsed.rejections)
    apply_time_window(messages, start_time, duration)
    owned = pipeline is None
    pipe = pipeline or Pipeline(cfg)
    try:
        results = pipe.run_messages(messages, progress=progress)
        paths = pipe.output_paths()
    finally:
        if owned:
            pipe.shutdown()
    for rej in rejections:
        dead.write(rej)
        summary.rejections.append(rej)
    for res in results:
        if res.rejection is not None:
            dead.write(res.rejection)
        for err in res.errors:
            log.warning("%s: %s", res.message_id, err)
        summary.add(res)
    summary.messages = len(messages) + len(rejections)
    summary.rejected = len(summary.rejections)
    summary.detections_path = paths["detections"]
    summary.scores_path = paths["scores"]
    summary.dead_letter_path = str(dead_path) if summary.rejected else None
    summary.seconds = time.perf_counter() - started
    return summary
