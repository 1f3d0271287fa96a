"""`dfp-ray datagen`: write synthetic Duo and Azure AD sign-in logs with labelled anomalies."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys

NAME = "datagen"
_DEFAULT_KINDS = ["new_location", "new_device", "failed_burst", "unusual_app", "off_hours"]
log = logging.getLogger(__name__)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def register(subparsers) -> None:
    from dfp_ray.tools.families import FAMILIES

    parser = subparsers.add_parser(
        NAME,
        help="generate synthetic Duo / Azure AD logs with labelled anomalies",
        description=(
            "Write a data set shaped like Morpheus's DFP examples: raw Duo v2 and Azure AD sign-in "
            "records (JSON arrays, one file per batch named with its time) in a training window and a "
            "later inference window, injected attacks in the inference window listed in "
            "<source>/ground_truth.csv, control-message files for every workflow, and manifest.json. "
            "The same options and --seed always write the same bytes. See docs/datagen.md."
        ),
    )
    parser.add_argument("--out", required=True, help="output folder: a local path or s3://bucket/prefix")
    parser.add_argument(
        "--family",
        choices=FAMILIES,
        default="default",
        help="default: the Morpheus-shaped data set described below; habits: a second, independent family "
        "(other archetypes, vocabularies and time zones, rare-but-normal events listed in "
        "<source>/rare_normal.csv, subtle attacks: new_app_at_night, new_location, new_browser, off_hours, "
        "mfa_fatigue; local folders only; uses --users, --train-days, --infer-days, --start-date, --sources, "
        "--anomaly-fraction, --seed); roster: a third, independent family, a distributed workforce (six time "
        "zones, rotating shifts, sessions, help-desk, sparse and dormant accounts; rare-but-normal dst_shift, "
        "new_phone, conference_trip, weekend_oncall, password_reset_burst; attacks: impossible_travel, "
        "token_replay, credential_stuffing, new_device_enrolment, dormant_wakeup; local folders only; uses the "
        "same options as habits plus --anomaly-kinds and --file-interval-hours when given; its own defaults "
        "otherwise: 28 + 4 days from 2024-02-02). See docs/datagen.md",
    )
    parser.add_argument("--users", type=int, default=20, help="users per source (default: 20)")
    parser.add_argument(
        "--train-days", type=int, default=29, help="days in the training window (default: 29)"
    )
    parser.add_argument(
        "--infer-days", type=int, default=2, help="days in the inference window, after training (default: 2)"
    )
    parser.add_argument(
        "--start-date",
        type=dt.date.fromisoformat,
        default=dt.date(2022, 8, 1),
        help="first UTC day of the training window, YYYY-MM-DD (default: 2022-08-01)",
    )
    parser.add_argument(
        "--events-per-user-per-day",
        type=float,
        default=5.0,
        help="mean normal events per user per day, weekends included (default: 5)",
    )
    parser.add_argument(
        "--file-interval-hours",
        type=int,
        default=3,
        help="one file per this many hours; must divide 24; empty intervals write no file (default: 3)",
    )
    parser.add_argument(
        "--sources",
        type=_csv,
        default=["duo", "azure"],
        help="comma-separated sources to write (default: duo,azure)",
    )
    parser.add_argument(
        "--anomaly-users",
        type=int,
        default=None,
        help="users attacked per source (default: --anomaly-fraction of --users, and at least one per "
        "kind while that leaves half the users unattacked)",
    )
    parser.add_argument(
        "--anomaly-fraction",
        type=float,
        default=0.25,
        help="share of users attacked when --anomaly-users is unset (default: 0.25)",
    )
    parser.add_argument(
        "--anomaly-kinds",
        type=_csv,
        default=_DEFAULT_KINDS,
        help="comma-separated anomaly kinds to inject, assigned to attacked users in turn "
        "(default: all: new_location,new_device,failed_burst,unusual_app,off_hours)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="random seed; the same options and seed write the same bytes (default: 42)",
    )
    parser.add_argument(
        "--s3-endpoint-url",
        default=None,
        help="S3 endpoint for s3:// output (e.g. http://127.0.0.1:9000 for MinIO or moto_server)",
    )
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra fsspec storage option (repeatable), e.g. key=..., secret=..., anon=false",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace data an earlier run wrote to --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=run)


def _storage_options(args: argparse.Namespace) -> dict:
    options: dict = {}
    for item in args.storage_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--storage-option {item!r}: use KEY=VALUE, e.g. --storage-option anon=false")
        lowered = value.lower()
        options[key] = True if lowered == "true" else False if lowered == "false" else value
    if args.s3_endpoint_url:
        options.setdefault("client_kwargs", {})["endpoint_url"] = args.s3_endpoint_url
    return options


def _habits_options(args: argparse.Namespace) -> dict:
    options = {"out": args.out, "sources": args.sources, "users": args.users, "train_days": args.train_days,
               "infer_days": args.infer_days, "attack_fraction": args.anomaly_fraction, "seed": args.seed}
    if args.start_date != dt.date(2022, 8, 1):
        options["start_date"] = args.start_date
    return options


def _roster_options(args: argparse.Namespace) -> dict:
    """Options the user set are passed on; the family's own defaults otherwise (the default
    family's --train-days 29 / --infer-days 2 / start date are not the roster's)."""
    options = {"out": args.out, "sources": args.sources, "users": args.users,
               "attack_fraction": args.anomaly_fraction, "seed": args.seed}
    defaults = {"train_days": 29, "infer_days": 2, "start_date": dt.date(2022, 8, 1), "file_interval_hours": 3}
    for name, default in defaults.items():
        if getattr(args, name) != default:
            options[name] = getattr(args, name)
    if args.anomaly_kinds != _DEFAULT_KINDS:
        options["attack_kinds"] = args.anomaly_kinds
    return options


def _default_options(args: argparse.Namespace) -> dict:
    return dict(
        out=args.out,
        sources=args.sources,
        users=args.users,
        train_days=args.train_days,
        infer_days=args.infer_days,
        start_date=args.start_date,
        events_per_user_per_day=args.events_per_user_per_day,
        file_interval_hours=args.file_interval_hours,
        anomaly_users=args.anomaly_users,
        anomaly_fraction=args.anomaly_fraction,
        anomaly_kinds=args.anomaly_kinds,
        seed=args.seed,
        storage_options=_storage_options(args),
    )


_OPTIONS = {"default": _default_options, "habits": _habits_options, "roster": _roster_options}


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from dfp_ray.tools.families import generate_family, make_config

    family = getattr(args, "family", "default")
    label = "dfp-ray datagen" if family == "default" else f"dfp-ray datagen --family {family}"
    try:
        config = make_config(family, **_OPTIONS[family](args))
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "options"
            print(f"{label}: {where}: {err['msg']}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"dfp-ray datagen: {exc}", file=sys.stderr)
        return 2
    try:
        summary = generate_family(family, config, overwrite=args.overwrite, progress=not args.no_progress)
    except FileExistsError as exc:
        print(f"dfp-ray datagen: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary.model_dump(), indent=2) if args.json else summary.text())
    return 0
