"""``python -m dfp_ray.streaming``: consume a control-message topic without running the pipeline.

Every valid control message is recorded as one JSON line (origin, message id, kind, data type,
files) on stdout or appended to ``--out`` (flushed and fsync'd before the offset is
committed); invalid ones go to the dead-letter topic. It is the Kafka source with a trivial
handler: use it to check a topic, a consumer group and the dead-letter routing before
starting ``dfp-ray stream``, or to rehearse shutdown and crash behaviour (``--work-seconds``
makes each message take that long, so there is one in flight to interrupt).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import TextIO

from dfp_ray.messages import ControlMessage
from dfp_ray.streaming.cli_options import add_kafka_source_arguments, kafka_config_from_args
from dfp_ray.streaming.source import HandleResult, KafkaControlSource, MessageOrigin


class RecordingHandler:
    """Writes one JSON line per control message, durably, then returns."""

    def __init__(self, out: TextIO, *, work_seconds: float = 0.0):
        self.out = out
        self.work_seconds = work_seconds

    def handle(self, messages: list[ControlMessage], origin: MessageOrigin) -> HandleResult:
        if self.work_seconds:
            time.sleep(self.work_seconds)
        for message in messages:
            line = {"origin": origin.id, "message_id": message.message_id, "kind": message.kind,
                    "data_type": message.data_type, "files": message.files}
            self.out.write(json.dumps(line) + "\n")
        self.out.flush()
        try:
            os.fsync(self.out.fileno())
        except (OSError, ValueError):  # a pipe or terminal: flushed is as durable as it gets
            pass
        return HandleResult()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dfp_ray.streaming",
        description=__doc__.split("\n\n", 1)[1].replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_kafka_source_arguments(parser)
    parser.add_argument("--out", metavar="FILE", help="append the JSON lines to FILE (default: stdout)")
    parser.add_argument("--work-seconds", type=float, default=0.0, metavar="S",
                        help="pretend each Kafka message takes S seconds to process (default 0)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pydantic import ValidationError

    try:
        cfg = kafka_config_from_args(args)
    except ValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not cfg.input_topics:
        print("error: give at least one --input-topic", file=sys.stderr)
        return 2
    out = open(args.out, "a", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        stats = KafkaControlSource(cfg, RecordingHandler(out, work_seconds=args.work_seconds)).run()
    finally:
        if out is not sys.stdout:
            out.close()
    return stats.exit_code


if __name__ == "__main__":
    sys.exit(main())
