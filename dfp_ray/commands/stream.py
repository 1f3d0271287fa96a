"""`dfp-ray stream`: the long-running streaming service (control messages from Kafka)."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Run the DFP pipeline as a service: read control messages from Kafka topics (each Kafka message
one control-message document, the --input-file format of `dfp-ray run`), run each one (train,
score, label) and commit its offset only once everything it caused is durable: detections
written, models registered, rolling windows and verdicts checkpointed. Runs until SIGINT or
SIGTERM, then finishes the message in flight, commits it and exits 0.

Detections are appended, as they are written, to <output>/dfp_detections_<source>.csv (the
stream's run, published when it starts); with kafka_sink.topic (--detections-topic) they are
also published to Kafka. A stream restarted with the same --group-id resumes its run and its
committed offset: nothing is lost, no row is written twice, no window row counted twice.
Invalid messages go to the dead-letter topic (<topic>.dlq) with the reason in headers.

Examples:
  dfp-ray stream --config configs/duo.yaml --bootstrap-servers 127.0.0.1:9092 \\
      --input-topic dfp-control --group-id dfp-duo --poll-interval 1s
  ray job submit --address http://HEAD:8265 --working-dir . -- \\
      dfp-ray stream --config configs/duo.yaml --bootstrap-servers kafka:9092 --input-topic dfp-control
Exit code: 0 after a clean stop, 1 when a message kept failing (left uncommitted; a restart
processes it again), 2 for a bad configuration.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from dfp_ray.streaming.cli_options import add_kafka_source_arguments

    p = sub.add_parser("stream", help="run as a service: control messages from Kafka, detections to files/Kafka",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="pipeline config YAML (e.g. configs/duo.yaml); its kafka: section sets the "
                   "source, flags override it")
    add_kafka_source_arguments(p)
    p.add_argument("--detections-topic", metavar="TOPIC",
                   help="also publish detections to this Kafka topic (kafka_sink.topic)")
    p.add_argument("--new-run", action="store_true",
                   help="start a new stream run (new output files) instead of resuming this group's run")
    p.add_argument("--data-root", action="append", metavar="DIR_OR_URL",
                   help="folder or s3:// prefix control messages may read files from (repeatable; default: the "
                   "working directory)")
    p.add_argument("--source", help="log source name; also selects the built-in schema (duo, azure)")
    p.add_argument("--schema", help="schema name or path to a schema YAML (default: the source name)")
    p.add_argument("--train-users", choices=["all", "generic", "individual", "none"],
                   help="which models training messages build (default: all)")
    p.add_argument("--output", help="directory for dfp_detections_{source}.csv (local or s3://)")
    p.add_argument("--format", choices=["csv", "jsonl"], help="detections file format (default: csv)")
    p.add_argument("--write-all-scores", action="store_true", default=None,
                   help="also write every scored row to dfp_scores_{source}.{csv,jsonl}")
    p.add_argument("--threshold", type=float, help="detection threshold on mean_abs_z (default: 2.0)")
    p.add_argument("--state-dir", help="state: embedded MLflow db, windows, verdicts, the stream's run id "
                   "(default .dfp_ray)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under --state-dir)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-actors", type=int, help="user-actor pool size (default: CPUs, or GPUs when present)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                   help="override any config field, e.g. --set window.min_history=100 (repeatable)")
    p.add_argument("--log-level", default=argparse.SUPPRESS, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="logging verbosity (same as the global option)")
    p.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace):
    """The pipeline config of ``dfp-ray run``'s flags, with the Kafka flags applied to ``kafka:``."""
    from dfp_ray.commands.run import config_from_args as pipeline_config
    from dfp_ray.streaming.cli_options import kafka_config_from_args

    cfg = pipeline_config(args)
    cfg.kafka = kafka_config_from_args(args, cfg.kafka)
    if args.detections_topic:
        cfg.kafka_sink = cfg.kafka_sink.model_copy(update={"topic": args.detections_topic})
    return cfg


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from dfp_ray.yaml_config import ConfigError

    try:
        cfg = config_from_args(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        text = str(exc)
        if isinstance(exc, ValidationError):
            text = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        print(f"error: {text}", file=sys.stderr)
        return 2
    if not cfg.kafka.input_topics:
        print("error: no input topic: give --input-topic (or kafka.input_topics in the config)", file=sys.stderr)
        return 2
    from dfp_ray.streaming.service import run_stream

    try:
        return run_stream(cfg, new_run=args.new_run)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
