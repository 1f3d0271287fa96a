"""`dfp-ray publish`: send control-message files to a Kafka topic, one Kafka message per input."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Send control-message files (the --input-file format of `dfp-ray run`) to a Kafka topic, for
`dfp-ray stream` to pick up. A file holding {"inputs": [a, b, ...]} becomes one Kafka
message per input ({"inputs": [a]}, {"inputs": [b]}, ...), sent in file order, each
acknowledged by the broker before the next, so each is committed, retried or dead-lettered
on its own. Every file is validated first; if any message is invalid nothing is sent.

Examples:
  dfp-ray publish --bootstrap-servers 127.0.0.1:9092 --topic dfp-control \\
      data/control_messages/duo_payload_training.json data/control_messages/duo_payload_inference.json
  dfp-ray publish --bootstrap-servers 127.0.0.1:9092 --topic dfp-control --interval 2s day_*.json
Exit code: 0 when everything was sent, 1 when a file is invalid or unreadable (nothing sent),
2 for bad options or brokers that do not answer.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="send control-message files to a Kafka topic (one message per input)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE", help="control-message JSON files, sent in the order given")
    p.add_argument("--bootstrap-servers", required=True, metavar="HOST:PORT[,HOST:PORT]",
                   help="Kafka brokers to bootstrap from")
    p.add_argument("--topic", required=True, help="topic to send to (the stream's --input-topic)")
    p.add_argument("--key", help="message key for every message (default: none); messages with one key "
                   "share a partition")
    p.add_argument("--interval", default="0s", metavar="DURATION",
                   help="pause between messages, e.g. 2s or 500ms (default: 0s), to pace a demo")
    p.add_argument("--no-validate", dest="validate", action="store_false",
                   help="send files as they are even when invalid (to exercise the dead-letter topic); a "
                   "file that is not a control-message document is sent as one message")
    p.add_argument("--no-create-topic", dest="create_topic", action="store_false",
                   help="do not create the topic when it is missing (default: create it with 1 partition, "
                   "which keeps messages in publish order)")
    p.add_argument("--timeout", default="30s", metavar="DURATION",
                   help="how long to wait for the brokers and for each acknowledgement (default: 30s)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dfp_ray.streaming.config import parse_duration
    from dfp_ray.streaming.publisher import InvalidControlFile, publish_files

    try:
        interval = parse_duration(args.interval)
        timeout = parse_duration(args.timeout)
        if timeout <= 0:
            raise ValueError("--timeout must be positive")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from kafka.errors import KafkaError

    try:
        sent = publish_files(args.bootstrap_servers, args.topic, args.files, validate=args.validate, key=args.key,
                             create_topic=args.create_topic, interval_s=interval, timeout_s=timeout)
    except InvalidControlFile as exc:
        for rejection in exc.rejections:
            print(f"invalid: {rejection}", file=sys.stderr)
        print("nothing sent: fix the messages above (or pass --no-validate to send them anyway)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot read {exc.filename or ''}: {exc.strerror or exc}; nothing sent", file=sys.stderr)
        return 1
    except KafkaError as exc:
        print(f"error: Kafka at {args.bootstrap_servers}: {exc}", file=sys.stderr)
        return 2
    for item in sent:
        print(f"{item.file}#{item.index} -> {item.topic}/{item.partition}@{item.offset}")
    print(f"sent {len(sent)} message(s) to {args.topic}", file=sys.stderr)
    return 0
