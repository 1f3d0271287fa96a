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
from dfp_ray.controllers.placement import Workload, alive_nodes, check_shared_state, pin_to_driver
from dfp_ray.messages import ControlMessage, DeadLetterWriter, Rejection, parse_control_messages
from dfp_ray.pipeline.write_to_file import new_run_id
from dfp_ray.results import MessageResult, Progress, RunSummary
from dfp_ray.schemas import SourceSchema, load_schema

log = logging.getLogger(__name__)
STARTUP_TIMEOUT_S = 600.0  # actors importing torch and MLflow on a busy machine take a while


def init_ray(address: str | None, *, quiet: bool = True) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"log_to_driver": not quiet, "configure_logging": quiet}
    if address:
        kwargs["address"] = address
    elif not os.environ.get("RAY_ADDRESS"):  # a `ray job submit` entrypoint joins its cluster
        # a new local Ray, never one some other `ray start` left running on this machine
        kwargs.update(address="local", include_dashboard=False)
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
    """A warm pipeline: actors stay up between :meth:`run_message` calls (benchmarks, tests).

    Every actor is restarted by Ray when it dies (``ray.max_restarts``): user actors restore
    their state from the registry and checkpoints, the sink reopens its run's files, and the
    work they held is sent again.

    ``live_run_id`` (a stream): that run's output files are published at once and appended to
    in place, so detections are visible while the stream runs (see
    :mod:`dfp_ray.pipeline.write_to_file`).

    On a cluster of several nodes it refuses to start while state the actors share is on one
    node's disk (:mod:`dfp_ray.controllers.placement`; ``workload`` says what the messages will
    use, default: everything), and places the sink and router on the driver's node.
    """

    def __init__(self, cfg: DFPConfig, schema: SourceSchema | None = None, *, live_run_id: str | None = None,
                 workload: Workload | None = None):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from dfp_ray.actors.router import RouterActor
        from dfp_ray.actors.sink import SinkActor
        from dfp_ray.actors.user_actor import UserActor

        init_ray(cfg.ray.address)
        cfg = cfg.model_copy(deep=True)
        cfg.input.data_roots = cfg.input.roots()  # resolved here, in the driver's working directory
        # Local folders too: actors may run elsewhere (a cluster's workers, a job's working dir).
        cfg.state_dir = str(cfg.state_path)
        if "://" not in cfg.output.directory:
            cfg.output.directory = os.path.abspath(os.path.expanduser(cfg.output.directory))
        if cfg.labels.directory and "://" not in cfg.labels.directory:
            cfg.labels.directory = str(cfg.labels_path)
        if cfg.window.checkpoint_dir and "://" not in cfg.window.checkpoint_dir:
            cfg.window.checkpoint_dir = os.path.abspath(os.path.expanduser(cfg.window.checkpoint_dir))
        self.cfg = cfg
        self.schema = schema or load_schema(cfg.schema_ref)
        # Several nodes: refuse state that would stay on one node's disk (see controllers.placement).
        nodes = alive_nodes(ray.nodes())
        check_shared_state(cfg, nodes, workload)
        make_private_dir(cfg.state_path)
        # Open (and for a new sqlite file, create) the registry once, here, before the actors
        # race to do it; an unreachable tracking server fails the run now, not per user.
        from dfp_ray.registry import ModelRegistry

        ModelRegistry.from_config(cfg).client  # noqa: B018
        resources = ray.available_resources()
        gpus = int(resources.get("GPU", 0))
        n = cfg.ray.num_user_actors or (gpus if gpus and cfg.ray.num_gpus_per_actor else
                                        max(1, int(resources.get("CPU", 1))))
        restarts = {"max_restarts": cfg.ray.max_restarts}
        spread = {"scheduling_strategy": "SPREAD"} if cfg.ray.actor_scheduling == "spread" else {}
        opts = {"num_cpus": cfg.ray.num_cpus_per_actor, "max_concurrency": cfg.ray.actor_concurrency,
                **restarts, **spread}
        if cfg.ray.num_gpus_per_actor:
            opts["num_gpus"] = cfg.ray.num_gpus_per_actor
        if cfg.ray.resources_per_actor:
            opts["resources"] = dict(cfg.ray.resources_per_actor)
        self.user_actors = [UserActor.options(**opts).remote(cfg, self.schema, i) for i in range(n)]
        # The generic model's own actor (CPU pools; see RayConfig.generic_actor). Index n: it
        # owns generic_user only. No CPU reserved: it runs beside the pool, not instead of it.
        self.generic_actor = None
        if cfg.ray.generic_actor and not cfg.ray.num_gpus_per_actor and cfg.train_users in ("all", "generic"):
            # two calls at once: the router's widen_fit arrives while train runs
            self.generic_actor = UserActor.options(num_cpus=0, max_concurrency=2, **restarts, **spread).remote(
                cfg, self.schema, n)
        self.live_run_id = live_run_id
        # On several nodes the sink and router run on the driver's node: local output files land
        # where the driver publishes and reads them (both reserve no CPU).
        here = {"scheduling_strategy": NodeAffinitySchedulingStrategy(
            node_id=ray.get_runtime_context().get_node_id(), soft=False)} if pin_to_driver(nodes) else {}
        self.nodes = nodes
        self.sink = SinkActor.options(**restarts, **here).remote(cfg, live_run_id, self.schema.user_column)
        self.router = RouterActor.options(**restarts, **here).remote(
            cfg, self.schema, self.user_actors, self.sink, self.generic_actor)
        # Fail fast if an actor can't start, and pay one-time import costs now, in parallel.
        # Bounded: actors the cluster has no room for (CPUs held by another pipeline) never start.
        try:
            ray.get([a.warm_up.remote() for a in self._actors()], timeout=STARTUP_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            self.shutdown()
            raise RuntimeError(
                f"the user actors did not start within {STARTUP_TIMEOUT_S:.0f} s: the cluster has "
                f"{ray.available_resources().get('CPU', 0):g} CPU(s) free for {n} actor(s) of "
                f"{cfg.ray.num_cpus_per_actor:g} CPU each{_resources_note(cfg)} (another pipeline holding "
                "them?); lower ray.num_user_actors or ray.num_cpus_per_actor, or stop the other pipeline") from None

    def _actors(self) -> list:
        return [*self.user_actors, *([self.generic_actor] if self.generic_actor is not None else [])]

    def run_message(self, msg: ControlMessage, run_id: str, *, progress: bool = True,
                    retry: bool = False, work_id: str | None = None) -> MessageResult:
        """Run one message to completion (its models registered, its rows written, its windows
        checkpointed).

        The router may die mid-message: Ray restarts it and the message is sent again, marked
        as a retry (no model trained twice, no row written twice), up to ``ray.max_restarts``
        times. ``retry=True`` marks it so from the start (a stream that may have processed it
        before a crash); ``work_id`` names the work (see :meth:`RouterActor.process`). A message still running after ``ray.message_timeout_s`` is abandoned:
        the router is restarted (stopping its work) and the result is a rejection saying so."""
        import ray

        attempts = 0
        while True:
            self._router_up()
            ref = self.router.process.remote(msg, run_id, retry or attempts > 0, work_id)
            try:
                return self._wait_with_progress(ref, msg, progress)
            except ray.exceptions.RayActorError as exc:
                attempts += 1
                if attempts > self.cfg.ray.max_restarts:
                    return _failed(msg, f"its router died {attempts} time(s) ({type(exc).__name__}); "
                                   "see the Ray logs of RouterActor")
                log.warning("router died during %s (%s); sending the message again", msg.message_id,
                            type(exc).__name__)
            except TimeoutError as exc:
                ray.kill(self.router, no_restart=False)  # stops the message's work; Ray restarts it
                return _failed(msg, str(exc))

    def _router_up(self, timeout: float = 600) -> None:
        """Wait until the router answers (it may be restarting after a crash or a timeout)."""
        import ray

        try:
            ray.get(self.router.ping.remote(), timeout=timeout)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass  # it cannot come back: the next call fails and is reported with the message

    def run_messages(self, messages: list[ControlMessage], *, progress: bool = True,
                     run_id: str | None = None) -> list[MessageResult]:
        """Run messages one after another (a training message finishes before the inference
        message after it); each result arrives once its work is durable."""
        run_id = run_id or new_run_id()
        return [self.run_message(msg, run_id, progress=progress) for msg in messages]

    def _wait_with_progress(self, ref, msg: ControlMessage, progress: bool) -> MessageResult:
        import ray
        from tqdm import tqdm

        show = progress and sys.stderr.isatty()
        bars: dict[str, tqdm] = {}
        limit = self.cfg.ray.message_timeout_s
        deadline = time.monotonic() + limit
        try:
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"did not finish within ray.message_timeout_s={limit:g} s; "
                                       "raise it for larger inputs, or look for a storage that does not answer")
                done, _ = ray.wait([ref], timeout=0.25)
                if show:
                    try:
                        self._draw(bars, ray.get(self.router.progress.remote(), timeout=5), msg)
                    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                        pass  # the router is restarting; the result says what happened
                if done:
                    return ray.get(ref)
        finally:
            for bar in bars.values():
                bar.close()

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

    def publish(self, run_id: str) -> dict:
        """Make the run's output files the published ones (see dfp_ray.pipeline.write_to_file)."""
        import ray

        return ray.get(self.sink.publish.remote(run_id))

    def live_paths(self) -> dict:
        """Where a live run's detections are published (empty without a live run)."""
        import ray

        return ray.get(self.sink.live_paths.remote())

    def shutdown(self) -> None:
        import ray

        try:  # flush and close the Kafka detection sink's producer, if any
            ray.get(self.sink.close.remote(), timeout=30)
        except Exception as exc:  # noqa: BLE001 - the actors are killed anyway
            log.debug("closing the sink: %s", exc)
        for a in [self.router, self.sink, *self._actors()]:
            ray.kill(a)


def _failed(msg: ControlMessage, reason: str) -> MessageResult:
    return MessageResult(message_id=msg.message_id, kind=msg.kind, data_type=msg.metadata.data_type,
                         rejection=Rejection.for_message(msg, reason))


def _resources_note(cfg: DFPConfig) -> str:
    """The custom resources a pool actor waits for, as the start-up timeout names them."""
    import ray

    wanted = cfg.ray.resources_per_actor
    if not wanted:
        return ""
    free = ray.available_resources()
    return " and " + ", ".join(f"{k}={v:g} ({free.get(k, 0):g} free)" for k, v in wanted.items())


def _verdicts_stored(cfg: DFPConfig) -> bool:
    """Whether the verdict store holds anything (training reads it: on several nodes it must be shared)."""
    from dfp_ray.labels import LabelStore

    return LabelStore(cfg.labels_path, cfg.source).stamp() != (0, 0)


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) readable by its owner only: state holds models, windows and
    dead letters with raw log rows."""
    existed = path.exists()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not existed:
        path.chmod(0o700)


def run(
    cfg: DFPConfig,
    input_files: list[str],
    *,
    start_time: str | None = None,
    duration: str | None = None,
    progress: bool = True,
    pipeline: Pipeline | None = None,
) -> RunSummary:
    """Run control-message files, in order, and return what was durably done.

    Each file is parsed on its own: a file that cannot be parsed, or a message that is
    rejected, becomes a dead letter at once (``<state_dir>/dead_letters_<source>.jsonl``) and
    the other messages still run. When at least one inference message completed, the run's
    output files are published (see :mod:`dfp_ray.pipeline.write_to_file`); otherwise the
    files an earlier run published stay as they were.
    """
    started = time.perf_counter()
    summary = RunSummary()
    make_private_dir(cfg.state_path)
    dead_path = Path(cfg.state_dir) / f"dead_letters_{cfg.source}.jsonl"
    dead = DeadLetterWriter(dead_path)
    messages: list[ControlMessage] = []
    unparsed = 0
    for path in input_files:
        parsed = parse_control_messages(path)
        for rej in parsed.rejections:
            dead.write(rej)
            summary.rejections.append(rej)
        unparsed += len(parsed.rejections)
        messages.extend(parsed.messages)
    apply_time_window(messages, start_time, duration)
    owned = pipeline is None
    pipe = pipeline or Pipeline(cfg, workload=Workload.of_messages(messages, verdicts_stored=_verdicts_stored(cfg)))
    run_id = new_run_id()
    scored_any = False
    try:
        for msg in messages:
            res = pipe.run_message(msg, run_id, progress=progress)
            if res.failure is not None and res.rejection is None:  # a batch run reports it like a rejection
                res.rejection = Rejection.for_message(msg, f"not completed: {res.failure}")
            if res.rejection is not None:
                dead.write(res.rejection)
            for err in res.errors:
                log.warning("%s: %s", res.message_id, err)
            summary.add(res)
            scored_any |= res.kind == "inference" and res.rejection is None
        if scored_any:
            paths = pipe.publish(run_id)
            summary.detections_path, summary.scores_path = paths["detections"], paths["scores"]
            summary.run_folder = paths["run_folder"]
    finally:
        if owned:
            pipe.shutdown()
    summary.messages = len(messages) + unparsed
    summary.rejected = len(summary.rejections)
    summary.dead_letter_path = str(dead_path) if summary.rejected else None
    summary.seconds = time.perf_counter() - started
    return summary
