"""`dfp-ray labels`: analyst verdicts on detections (list the stored ones, add new ones)."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

DESCRIPTION = """\
Analyst verdicts on earlier detections, by event id: benign (the event's row joins its user's
next training data, so the same behaviour stops being flagged once the user is retrained) or
malicious (kept out of every future training). See docs/streaming.md.

  dfp-ray labels list --config configs/duo.yaml [--verdict benign] [--user alice] [--format csv]
  dfp-ray labels add --config configs/duo.yaml verdicts.csv
  dfp-ray labels add --bootstrap-servers 127.0.0.1:9092 --topic dfp-control verdicts.csv

A verdicts file is a CSV with columns event_id, verdict (benign | malicious) and optionally
user, note; or JSON: a list of such objects, {"verdicts": [...]}, or a label control message.
Without --bootstrap-servers the verdicts are stored at once in the state directory (the
detection rows are looked up in the output directory of --config); with it they are sent as one
label control message to the topic a running `dfp-ray stream` reads, which stores them in order
with the other messages. --verdict sets the verdict of rows that have none.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("labels", help="analyst verdicts on detections: list, add",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="labels_action", metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", help="pipeline config YAML (its source, state_dir, output, labels)")
        q.add_argument("--source", help="log source name (default: the config's)")
        q.add_argument("--state-dir", help="state directory (default: the config's, else .dfp_ray)")
        q.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                       help="override any config field (repeatable)")

    ls = actions.add_parser("list", help="print the verdicts in force (the newest per event id)")
    common(ls)
    ls.add_argument("--verdict", choices=["benign", "malicious"], help="only this verdict")
    ls.add_argument("--user", help="only this user's verdicts")
    ls.add_argument("--history", action="store_true", help="every stored verdict line, superseded ones too")
    ls.add_argument("--format", choices=["table", "csv", "jsonl"], default="table",
                    help="table (default, for people), csv or jsonl (for tools)")
    ls.set_defaults(handler=list_labels)

    add = actions.add_parser("add", help="store verdicts now, or send them to the stream's topic")
    common(add)
    add.add_argument("files", nargs="+", metavar="FILE", help="verdicts files (CSV or JSON, see above)")
    add.add_argument("--verdict", choices=["benign", "malicious"], help="verdict for rows that have none")
    add.add_argument("--user", help="user for rows that have none")
    add.add_argument("--note", help="note for rows that have none")
    add.add_argument("--bootstrap-servers", metavar="HOST:PORT", help="send to Kafka instead of storing here")
    add.add_argument("--topic", help="with --bootstrap-servers: the stream's input topic")
    add.add_argument("--timeout", default="30s", metavar="DURATION", help="Kafka acknowledgement timeout")
    add.set_defaults(handler=add_labels)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def _config(args: argparse.Namespace):
    from dfp_ray.config import load_config, overrides_from_strings

    overrides = {"source": args.source, "state_dir": args.state_dir}
    overrides.update(overrides_from_strings(args.overrides))
    return load_config(args.config, overrides)


def read_verdicts(path: str | Path, *, verdict: str | None = None, user: str | None = None,
                  note: str | None = None) -> list[dict]:
    """The verdict objects of a CSV or JSON verdicts file (see ``dfp-ray labels --help``)."""
    import pandas as pd

    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv" or not text.lstrip().startswith(("[", "{")):
        import io

        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        if "event_id" not in frame.columns:
            raise ValueError(f"{path}: a CSV of verdicts needs an event_id column (and verdict, unless --verdict)")
        rows = frame.to_dict("records")
    else:
        doc = json.loads(text)
        if isinstance(doc, dict) and "inputs" in doc:
            rows = [v for m in doc["inputs"] for t in m.get("tasks", []) if t.get("type") == "label"
                    for v in t.get("properties", {}).get("verdicts", [])]
        elif isinstance(doc, dict) and "tasks" in doc:
            rows = [v for t in doc["tasks"] if t.get("type") == "label" for v in t.get("properties", {}).get("verdicts", [])]
        elif isinstance(doc, dict):
            rows = doc.get("verdicts", [])
        else:
            rows = doc
    out = []
    for row in rows:
        item = {k: (v if v != "" else None) for k, v in dict(row).items()}
        item.setdefault("verdict", None)
        item["verdict"] = item["verdict"] or verdict
        item["user"] = item.get("user") or user
        item["note"] = item.get("note") or note
        out.append({k: v for k, v in item.items() if k in {"event_id", "verdict", "user", "note"} and v is not None})
    return out


def label_document(verdicts: list[dict]) -> dict:
    return {"inputs": [{"tasks": [{"type": "label", "properties": {"verdicts": verdicts}}]}]}


def add_labels(args: argparse.Namespace) -> int:
    from dfp_ray.messages import parse_control_messages

    from .config_errors import load_or_report

    documents = []
    for name in args.files:
        try:
            verdicts = read_verdicts(name, verdict=args.verdict, user=args.user, note=args.note)
        except (OSError, ValueError) as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            return 1
        doc = label_document(verdicts)
        parsed = parse_control_messages(json.dumps(doc), origin=Path(name).name)
        if parsed.rejections:
            for rejection in parsed.rejections:
                print(f"invalid: {name}: {rejection.reason}", file=sys.stderr)
            return 1
        documents.append((name, doc, parsed.messages[0]))
    if args.bootstrap_servers:
        if not args.topic:
            print("error: --bootstrap-servers needs --topic (the stream's input topic)", file=sys.stderr)
            return 2
        return _send(args, documents)
    cfg = load_or_report(lambda: _config(args))
    if cfg is None:
        return 2
    from dfp_ray.labels import apply_labels
    from dfp_ray.runner import make_private_dir
    from dfp_ray.schemas import load_schema

    schema = load_schema(cfg.schema_ref)
    make_private_dir(cfg.state_path)
    for name, doc, msg in documents:
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]
        outcome = apply_labels(cfg, schema, f"labels-add:{Path(name).name}:{digest}", msg.verdicts)
        print(f"{name}: {outcome.benign} benign ({outcome.rows_found} with their detection row), "
              f"{outcome.malicious} malicious, {outcome.unchanged} already stored")
        if outcome.rows_missing:
            print(f"  no detection row found for {len(outcome.rows_missing)} benign event(s) in "
                  f"{cfg.output.directory} (e.g. {outcome.rows_missing[0]}): stored, but nothing joins the training "
                  "data", file=sys.stderr)
    return 0


def _send(args: argparse.Namespace, documents: list) -> int:
    import tempfile

    from kafka.errors import KafkaError

    from dfp_ray.streaming.config import parse_duration
    from dfp_ray.streaming.publisher import publish_files

    with tempfile.TemporaryDirectory(prefix="dfp-labels-") as tmp:
        paths = []
        for i, (name, doc, _) in enumerate(documents):
            path = Path(tmp) / f"{i:03d}-{Path(name).stem}.json"
            path.write_text(json.dumps(doc))
            paths.append(path)
        try:
            sent = publish_files(args.bootstrap_servers, args.topic, paths, timeout_s=parse_duration(args.timeout))
        except (KafkaError, OSError) as exc:
            print(f"error: Kafka at {args.bootstrap_servers}: {exc}", file=sys.stderr)
            return 2
    for (name, _, msg), item in zip(documents, sent, strict=True):
        print(f"{name}: {len(msg.verdicts)} verdict(s) -> {item.topic}/{item.partition}@{item.offset}")
    return 0


def list_labels(args: argparse.Namespace) -> int:
    from dfp_ray.labels import LabelStore

    from .config_errors import load_or_report

    cfg = load_or_report(lambda: _config(args))
    if cfg is None:
        return 2
    store = LabelStore(cfg.labels_path, cfg.source)
    frame = store.lines() if args.history else store.latest()
    if args.verdict:
        frame = frame[frame["verdict"] == args.verdict]
    if args.user:
        frame = frame[frame["user"] == args.user]
    if args.format == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif args.format == "jsonl":
        for record in frame.to_dict("records"):
            print(json.dumps(record, default=str, ensure_ascii=False))
    else:
        if frame.empty:
            print(f"no verdicts stored for source {cfg.source} in {store.folder}")
            return 0
        shown = frame[["at", "event_id", "verdict", "user", "row", "note"]].fillna("")
        print(shown.to_string(index=False))
        counts = frame["verdict"].value_counts()
        print(f"\n{len(frame)} verdict(s): {int(counts.get('benign', 0))} benign, {int(counts.get('malicious', 0))} "
              f"malicious ({store.verdicts_path})")
    return 0
