"""Raw throughput of the Kafka layer against a local Tansu broker, beside plain kafka-python doing the same.

Three figures, each with its peer measured in the same run:

- publish: ``publish_files`` (one Kafka message per input, each acknowledged before the next)
  vs a kafka-python producer doing ``send(...).get()`` per message;
- consume: ``KafkaControlSource`` with a handler that does nothing (parse, validate, hand over,
  synchronous commit per message) vs a kafka-python consumer loop that parses with the same
  parser and commits each message synchronously; the consumer-group join is excluded;
- sink: ``KafkaDetectionSink.publish`` of a detection frame (render JSON, key, headers, flush,
  check every send) vs a kafka-python producer sending pre-rendered rows and flushing.

Figures depend on the machine and its load (a 2-core shared machine is noisy): compare the
ratios, which are measured side by side.

    .venv/bin/python benchmarks/bench_kafka.py
    .venv/bin/python benchmarks/bench_kafka.py --messages 5000 --rows 100000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from kafka_broker import CONSUMER_SETTINGS, running_broker  # noqa: E402

from dfp_ray.messages import parse_control_messages  # noqa: E402
from dfp_ray.streaming import KafkaConfig, KafkaControlSource, KafkaDetectionSink  # noqa: E402
from dfp_ray.streaming.clients import ensure_topics  # noqa: E402
from dfp_ray.streaming.publisher import publish_files  # noqa: E402


def control_file(path: Path, count: int) -> Path:
    inputs = [{"tasks": [{"type": "load", "properties": {"files": [f"data/duo/day-{i:05d}/*.json"]}},
                         {"type": "inference", "properties": {}}],
               "metadata": {"data_type": "payload"}} for i in range(count)]
    path.write_text(json.dumps({"inputs": inputs}))
    return path


def bench_publish(bootstrap: str, path: Path, count: int, rounds: int) -> tuple[float, float]:
    from kafka import KafkaProducer

    from dfp_ray.streaming.publisher import split_document

    values = split_document(path.read_bytes())
    ensure_topics(bootstrap, ["bench-publish", "bench-publish-raw"], timeout_s=10)
    ours, raw = [], []
    for _ in range(rounds):  # alternated, so both see the same machine load
        t0 = time.perf_counter()
        publish_files(bootstrap, "bench-publish", [path])
        ours.append(count / (time.perf_counter() - t0))

        t0 = time.perf_counter()
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        for value in values:
            producer.send("bench-publish-raw", value=value).get(timeout=30)
        producer.close()
        raw.append(count / (time.perf_counter() - t0))
    return float(np.median(ours)), float(np.median(raw))


def bench_consume(bootstrap: str, count: int) -> tuple[float, float]:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    starts: list[float] = []  # when each message reached the handler

    def handler(messages, origin):
        starts.append(time.perf_counter())

    cfg = KafkaConfig(bootstrap_servers=bootstrap, input_topics=["bench-publish"], group_id="bench-source",
                      stop_after=count, poll_interval="100ms", progress_interval="1h")
    source = KafkaControlSource(cfg, handler, handle_signals=False)
    guard = threading.Timer(600, source.stop)
    guard.start()
    stats = source.run()
    guard.cancel()
    assert stats.committed == count, stats
    ours = (count - 1) / (starts[-1] - starts[0])  # first to last message: the group join is excluded

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id="bench-raw", enable_auto_commit=False,
                             auto_offset_reset="earliest", max_poll_records=1, **CONSUMER_SETTINGS)
    consumer.subscribe(["bench-publish-raw"])
    raw_starts: list[float] = []
    deadline = time.monotonic() + 600
    while len(raw_starts) < count and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=100, max_records=1).items():
            for record in records:
                raw_starts.append(time.perf_counter())
                parse_control_messages(record.value, origin=f"kafka:{tp.topic}/{tp.partition}@{record.offset}")
                consumer.commit({TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(record.offset + 1, "", -1)})
    raw = (len(raw_starts) - 1) / (raw_starts[-1] - raw_starts[0])
    consumer.close(autocommit=False)
    return ours, raw


def detection_frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    features = ["accessdevicebrowser", "accessdeviceos", "device", "result", "reason", "logcount",
                "locincrement"]
    frame = {
        "event_id": [f"tx-{i:08d}" for i in range(rows)],
        "username": [f"user{u:04d}@example.com" for u in rng.integers(0, 300, rows)],
        "timestamp": (pd.Timestamp("2022-08-30T00:00:00Z") + pd.to_timedelta(rng.integers(0, 86_400, rows), "s"))
        .strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "mean_abs_z": rng.gamma(4.0, 0.8, rows).round(4),
        "max_abs_z": rng.gamma(6.0, 0.9, rows).round(4),
        "model_version": "DFP-duo-user:3",
    }
    for name in features:
        frame[f"{name}_z_loss"] = rng.normal(0, 1.5, rows).round(4)
    return pd.DataFrame(frame)


def bench_sink(bootstrap: str, rows: int, rounds: int) -> tuple[float, float]:
    from kafka import KafkaProducer

    frame = detection_frame(rows)
    ensure_topics(bootstrap, ["bench-detections", "bench-detections-raw"], timeout_s=10)
    ours, raw = [], []
    with KafkaDetectionSink(bootstrap, "bench-detections", source="duo") as sink:
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=256 * 1024)
        sink.publish(frame.iloc[:100])  # connections and metadata warm
        producer.send("bench-detections-raw", value=b"{}").get(timeout=30)
        for _ in range(rounds):  # alternated, so both see the same machine load
            t0 = time.perf_counter()
            sink.publish(frame)
            ours.append(rows / (time.perf_counter() - t0))

            # The peer is handed rows already rendered: only sends and one flush are timed.
            values = [line.encode() for line in frame.to_json(orient="records", lines=True).splitlines()]
            keys = [u.encode() for u in frame["username"]]
            t0 = time.perf_counter()
            for value, key in zip(values, keys, strict=True):
                producer.send("bench-detections-raw", value=value, key=key)
            producer.flush()
            raw.append(rows / (time.perf_counter() - t0))
        producer.close()
    return float(np.median(ours)), float(np.median(raw))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1000, help="control messages to publish and consume")
    ap.add_argument("--rows", type=int, default=20_000, help="detection rows for the sink")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of publish and sink (median reported)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, running_broker() as broker:
        path = control_file(Path(tmp) / "messages.json", args.messages)
        pub, pub_raw = bench_publish(broker.bootstrap, path, args.messages, args.rounds)
        con, con_raw = bench_consume(broker.bootstrap, args.messages)
        sink, sink_raw = bench_sink(broker.bootstrap, args.rows, args.rounds)
    print(f"Kafka layer vs plain kafka-python, Tansu on loopback ({args.messages} control messages, "
          f"{args.rows:,} detection rows; publish and sink: median of {args.rounds} alternated rounds)")
    print(f"{'':34}{'dfp_ray':>12}{'kafka-python':>14}{'ratio':>8}")
    for name, ours, raw, unit in (
        ("publish (acked one by one)", pub, pub_raw, "msg/s"),
        ("consume + commit each", con, con_raw, "msg/s"),
        ("sink publish (acks=all, flush)", sink, sink_raw, "rows/s"),
    ):
        print(f"{name + ' ' + unit:34}{ours:>12,.0f}{raw:>14,.0f}{ours / raw:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
