"""`dfp-ray run`: the batch pipeline (Morpheus's integrated-training batch pipeline, on Ray)."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Run control messages through the DFP pipeline: load files (local or s3:// globs), train
per-user models and register them in MLflow, score events, write detections.

Examples:
  dfp-ray run --config configs/duo.yaml --input-file data/control_messages/duo_payload_load_train_inference.json
  dfp-ray run --config configs/azure.yaml --input-file data/control_messages/azure_payload_inference.json \\
      --output out/ --write-all-scores
Exit code: 0 when every message succeeded, 1 when any was rejected (see the dead-letter
file named in the summary), 2 for a bad configuration.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run control messages: load, train, infer, write detections",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="pipeline config YAML (e.g. configs/duo.yaml); default: built-in defaults")
    p.add_argument("--input-file", action="append", required=True, metavar="PATH",
                   help="control-message JSON file (see docs/control_messages.md); repeat for several, run in "
                   "order; a file that cannot be parsed becomes a dead letter and the others still run")
    add_pipeline_arguments(p)
    p.add_argument("--start-time", help="only files batched at/after this UTC time (YYYY-MM-DD[THH:MM:SS])")
    p.add_argument("--duration", help="with --start-time: window length as a pandas offset, e.g. 60d, 12h")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    """The pipeline options ``dfp-ray run`` and ``dfp-ray stream`` share (one definition, one
    meaning; :func:`config_from_args` reads them)."""
    p.add_argument("--data-root", action="append", metavar="DIR_OR_URL",
                   help="folder or s3:// prefix the control messages may read files from (repeatable; "
                   "default: the working directory); a file outside every root rejects its message")
    p.add_argument("--source", help="log source name; also selects the built-in schema (duo, azure)")
    p.add_argument("--schema", help="schema name or path to a schema YAML (default: the source name)")
    p.add_argument("--train-users", choices=["all", "generic", "individual", "none"],
                   help="which models training messages build: all = generic + per user (default: all)")
    p.add_argument("--output", help="directory for dfp_detections_{source}.csv (local or s3://)")
    p.add_argument("--format", choices=["csv", "jsonl"], help="detections file format (default: csv)")
    p.add_argument("--write-all-scores", action="store_true", default=None,
                   help="also write every scored row to dfp_scores_{source}.{csv,jsonl}")
    p.add_argument("--threshold", type=float,
                   help="fixed detection threshold on mean_abs_z (Morpheus's rule, e.g. 2.0); without it each "
                        "model's calibrated threshold is used (detection.alert_rate, docs/scoring.md)")
    p.add_argument("--alert-rate", type=float,
                   help="share of each model's normal events to flag, calibrated rule (default: 0.003)")
    p.add_argument("--state-dir", help="local folder for state: embedded MLflow db, load cache, dead letters, "
                   "and by default window checkpoints and verdicts (default .dfp_ray). Not a URL: for object "
                   "storage set window.checkpoint_dir=s3://... and a tracking server (--tracking-uri); on a "
                   "multi-node cluster both are required (docs/scaling.md)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under --state-dir)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--num-actors", type=int, help="user-actor pool size (default: CPUs, or GPUs when present)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                   help="override any config field, e.g. --set autoencoder.epochs=10 (repeatable)")
    p.add_argument("--log-level", default=argparse.SUPPRESS, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="logging verbosity (same as the global option)")


def config_from_args(args: argparse.Namespace):
    from dfp_ray.config import load_config, overrides_from_strings

    overrides = {
        "source": args.source, "schema": args.schema, "train_users": args.train_users,
        "output.directory": args.output, "output.format": args.format,
        "output.write_all_scores": args.write_all_scores, "detection.threshold": args.threshold,
        "detection.rule": "fixed" if args.threshold is not None else None, "detection.alert_rate": args.alert_rate,
        "state_dir": args.state_dir, "mlflow.tracking_uri": args.tracking_uri,
        "ray.address": args.ray_address, "ray.num_user_actors": args.num_actors,
        "input.data_roots": args.data_root,
    }
    overrides.update(overrides_from_strings(args.overrides))
    return load_config(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    from .config_errors import load_or_report

    cfg = load_or_report(lambda: config_from_args(args))
    if cfg is None:
        return 2
    from dfp_ray.runner import run as run_pipeline

    try:
        summary = run_pipeline(cfg, args.input_file, start_time=args.start_time, duration=args.duration,
                               progress=not args.no_progress)
    except ValueError as exc:  # bad --start-time/--duration
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.table())
    return 0 if summary.ok else 1
