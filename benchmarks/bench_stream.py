"""Streaming benchmark: Kafka-delivered control messages through ``dfp-ray stream``'s service, beside
the batch run of the same messages on the same warm pipeline.

For each size (users; default 20 and 300), on data from ``dfp-ray datagen``, the embedded sqlite
MLflow and a local Tansu broker:

1. train once (payload; ``autoencoder.epochs=2``: scoring cost does not depend on epochs);
2. **batch**: ``run_message`` of one inference message per inference day, one after another
   (the batch run, ``dfp-ray run``, of the same messages); one warm-up pass first, so every
   model is cached in the actors in both modes; each pass writes a run of its own, so every
   pass writes all its detections;
3. **stream, backlog**: the same messages published first, then consumed by the stream (the
   service of ``dfp-ray stream``: parse, validate, run, commit each): sustained events/s from
   the first message's start to the last message's commit;
4. **stream, paced**: the messages published one every ``pace`` x the mean batch message time
   while the stream runs, starting once the consumer group has assigned the stream its
   partitions: end-to-end latency per message, from publish (the Kafka record's timestamp) to
   its detections durably written (p50 / p99 over all paced messages), split into the wait
   (publish -> the handler has it) and the handling (-> durable). The group join every start
   pays once (~3 s, the broker's rebalance wait) is reported apart (``group_join_s``):
   publishing before it ends would time the join, not the stream.

The load cache is off, so every message reads and parses its JSON files in every mode. The
streaming overhead is the ratio of the stream's events/s to the batch's, measured alternately
in the same run. The machine is shared: the load average is printed beside the figures, and
every figure is one sample of a noisy quantity (repeat with ``--rounds``).

    python benchmarks/bench_stream.py [--users 20,300] [--infer-days 8] [--events 20] [--rounds 1]
                                      [--fetch-max-wait-ms MS]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from kafka_broker import running_broker  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def day_messages(data: Path, work: Path, infer_days: list[str]) -> Path:
    """One inference message per inference day (its files, that day's batching window)."""
    inputs = [{
        "tasks": [{"type": "load", "properties": {"files": [str(data / "duo" / "inference" / "*.json")]}},
                  {"type": "inference", "properties": {}}],
        "metadata": {"data_type": "payload",
                     "batching_options": {"period": "D", "start_time": day, "end_time": day},
                     "file_to_df_options": {"parser_kwargs": {"lines": False, "orient": "records"}}},
    } for day in infer_days]
    path = work / "days.json"
    path.write_text(json.dumps({"inputs": inputs}))
    return path


class Timed:
    """The stream's handler, timed: when each Kafka message began and became durable."""

    def __init__(self, inner):
        self.inner = inner
        self.spans: list[tuple[float, float, int, int | None]] = []  # start, end, events, record ms

    def handle(self, messages, origin):
        start = time.time()
        result = self.inner.handle(messages, origin)
        self.spans.append((start, time.time(), result.events, origin.timestamp_ms))
        return result


def run_stream_phase(cfg, pipe, run_id: str, topic: str, count: int, publish=None) -> tuple[list, float]:
    """The stream's service on ``topic`` until ``count`` messages are committed; writes run ``run_id``.

    With ``publish``, it runs on a thread that starts once the consumer group has assigned the
    source its partitions: the paced phase measures a running stream's latency, not the group
    join that every start pays once (~3 s: the broker's rebalance wait), which is returned
    apart (seconds from ``run()`` to the assignment)."""
    from dfp_ray.streaming.progress import ProgressDisplay
    from dfp_ray.streaming.service import PipelineHandler
    from dfp_ray.streaming.source import KafkaControlSource

    kcfg = cfg.kafka.model_copy(update={"input_topics": [topic], "stop_after": count})
    handler = Timed(PipelineHandler(pipe, run_id))
    source = KafkaControlSource(kcfg, handler, handle_signals=False,
                                progress=ProgressDisplay(interval_s=3600, tty=False))
    started = time.time()
    joined: list[float] = []

    def publish_when_assigned() -> None:
        if not source.assigned.wait(120):
            source.stop("no partitions assigned within 120 s")
            return
        joined.append(time.time() - started)
        publish()

    publisher = threading.Thread(target=publish_when_assigned, daemon=True) if publish else None
    if publisher:
        publisher.start()
    stats = source.run()
    if publisher:
        publisher.join(60)
    assert stats.committed == count, stats
    return handler.spans, (joined[0] if joined else float("nan"))


def bench_size(users: int, args, broker) -> dict:
    from dfp_ray.config import load_config
    from dfp_ray.messages import parse_control_messages
    from dfp_ray.runner import Pipeline, run
    from dfp_ray.streaming.clients import ensure_topics
    from dfp_ray.streaming.publisher import publish_files
    from dfp_ray.tools.datagen import DatagenConfig, generate

    work = Path(tempfile.mkdtemp(prefix="dfp_bench_stream_"))
    try:
        generate(DatagenConfig(out=str(work / "data"), sources=["duo"], users=users, train_days=args.train_days,
                               infer_days=args.infer_days, events_per_user_per_day=args.events, seed=7),
                 progress=False)
        cfg = load_config(None, {
            "source": "duo", "state_dir": str(work / "state"), "output.directory": str(work / "out"),
            "cache_loaded_files": False, "autoencoder.epochs": 2, "input.data_roots": [str(work)],
            "kafka.bootstrap_servers": broker.bootstrap, "kafka.group_id": f"bench-{users}",
            "kafka.poll_interval": "100ms", **({"kafka.fetch_max_wait_ms": args.fetch_max_wait_ms}
                                               if args.fetch_max_wait_ms else {})})
        pipe = Pipeline(cfg)
        try:
            t0 = time.perf_counter()
            train = run(cfg, [str(work / "data" / "control_messages" / "duo_payload_training.json")], pipeline=pipe,
                        progress=False)
            train_s = time.perf_counter() - t0
            import pandas as pd

            start = pd.Timestamp(DatagenConfig(out=".", train_days=args.train_days).infer_start)
            days = [(start + pd.Timedelta(days=i)).date().isoformat() for i in range(args.infer_days)]
            doc = day_messages(work / "data", work, days)
            messages = parse_control_messages(doc).messages
            batch_rounds, backlog_rounds, latencies = [], [], []
            waits: list[float] = []
            handling: list[float] = []
            joins: list[float] = []
            # warm-up: every model read from MLflow once into the actors' caches
            for msg in messages:
                pipe.run_message(msg, "warmup", progress=False)
            for r in range(args.rounds):
                # batch: the same messages, one after another, on the warm pipeline
                t = time.time()
                results = [pipe.run_message(msg, f"batch{r}", progress=False, retry=True,
                                            work_id=f"{msg.message_id}~b{r}") for msg in messages]
                batch_s = time.time() - t
                events = sum(x.rows for x in results)
                batch_rounds.append((events, batch_s, [x.seconds for x in results]))
                # stream, backlog: published first, then consumed
                topic = f"backlog-{users}-{r}"
                publish_files(broker.bootstrap, topic, [doc])
                spans, _ = run_stream_phase(cfg, pipe, f"backlog{r}", topic, len(messages))
                backlog_rounds.append((sum(s[2] for s in spans), spans[-1][1] - spans[0][0]))
                # stream, paced: published while the stream runs, one every pace x mean batch message time
                interval = args.pace * batch_s / len(messages)
                topic = f"paced-{users}-{r}"
                ensure_topics([broker.bootstrap], [topic], timeout_s=10)
                spans, join_s = run_stream_phase(
                    cfg, pipe, f"paced{r}", topic, len(messages),
                    publish=lambda t=topic, i=interval: publish_files(broker.bootstrap, t, [doc], interval_s=i))
                joins.append(join_s)
                latencies.extend(end - ts / 1000 for _, end, _, ts in spans if ts)
                waits.extend(start - ts / 1000 for start, _, _, ts in spans if ts)  # publish -> handler starts
                handling.extend(end - start for start, end, *_ in spans)
        finally:
            pipe.shutdown()
        per_msg_events = batch_rounds[0][0] / len(messages)
        return {
            "users": users, "messages": len(messages), "events_per_message": round(per_msg_events),
            "train_s": round(train_s, 1), "models": train.users_trained,
            "batch_events_per_s": [round(e / s) for e, s, _ in batch_rounds],
            "batch_message_s_p50": round(percentile([x for *_, xs in batch_rounds for x in xs], 50), 3),
            "stream_events_per_s": [round(e / s) for e, s in backlog_rounds],
            "latency_p50_s": round(percentile(latencies, 50), 3),
            "latency_p99_s": round(percentile(latencies, 99), 3),
            "latency_samples": len(latencies),
            "wait_p50_s": round(percentile(waits, 50), 3),  # publish -> the handler has the message
            "wait_p99_s": round(percentile(waits, 99), 3),
            "handle_p50_s": round(percentile(handling, 50), 3),  # handler start -> durable
            "group_join_s": [round(j, 2) for j in joins],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", default="20,300", help="sizes, comma-separated")
    ap.add_argument("--train-days", type=int, default=5)
    ap.add_argument("--infer-days", type=int, default=8, help="inference days = messages per pass")
    ap.add_argument("--events", type=float, default=20, help="mean events per user per day")
    ap.add_argument("--rounds", type=int, default=1, help="batch / stream passes per size (alternated)")
    ap.add_argument("--pace", type=float, default=1.5,
                    help="paced phase: publish one message every PACE x the mean batch message time")
    ap.add_argument("--fetch-max-wait-ms", type=int, default=None,
                    help="kafka.fetch_max_wait_ms for the stream (default: the config's, 100)")
    args = ap.parse_args()

    import ray

    from dfp_ray.runner import init_ray

    rows = []
    with running_broker() as broker:
        for users in (int(u) for u in args.users.split(",") if u):
            load_before = os.getloadavg()[0]
            init_ray(None)
            try:
                row = bench_size(users, args, broker)
            finally:
                ray.shutdown()
            row["load_avg"] = f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}"
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{'users':>6} {'msgs':>5} {'events/msg':>10} {'batch ev/s':>11} {'stream ev/s':>12} {'stream/batch':>12} "
          f"{'batch msg s':>11} {'e2e p50 s':>10} {'e2e p99 s':>10} {'wait p50 s':>10} {'join s':>6} {'load avg':>12}")
    for r in rows:
        batch = sum(r["batch_events_per_s"]) / len(r["batch_events_per_s"])
        stream = sum(r["stream_events_per_s"]) / len(r["stream_events_per_s"])
        print(f"{r['users']:>6} {r['messages']:>5} {r['events_per_message']:>10} {batch:>11,.0f} {stream:>12,.0f} "
              f"{stream / batch:>12.2f} {r['batch_message_s_p50']:>11} {r['latency_p50_s']:>10} "
              f"{r['latency_p99_s']:>10} {r['wait_p50_s']:>10} {max(r['group_join_s']):>6} {r['load_avg']:>12}")
    print("\nstream/batch < 1 is the streaming overhead (Kafka poll, parse, commit per message); e2e latency is "
          "publish -> detections fsync'd, at a publishing pace the pipeline keeps up with, once the stream has joined "
          "its group (wait = publish -> handler starts; join = start -> partitions assigned). One sample per round on "
          "a shared machine: expect +-20% between runs.")


if __name__ == "__main__":
    main()
