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
    from dfp_ray.commands.run import add_pipeline_arguments
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
    add_pipeline_arguments(p)
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
    from .config_errors import load_or_report

    cfg = load_or_report(lambda: config_from_args(args))
    if cfg is None:
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
