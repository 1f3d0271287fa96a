"""The `dfp-ray` command line.

Each subcommand lives in its own module under :mod:`dfp_ray.commands` and exposes
``register(subparsers)``, which adds an argparse parser whose defaults carry
``handler=<callable(args) -> int>``. Keeping the modules separate keeps start-up fast
(heavy imports happen inside handlers) and lets each command document its own options.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Before torch is imported (handlers import it lazily): OpenMP threads that spin-wait make
# small models 10-30x slower whenever another process shares the cores (measured here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Order here is the order shown by `dfp-ray --help`.
COMMAND_MODULES = [
    "dfp_ray.commands.demo",
    "dfp_ray.commands.run",
    "dfp_ray.commands.stream",
    "dfp_ray.commands.datagen",
    "dfp_ray.commands.fingerprint",
    "dfp_ray.commands.serve",
    "dfp_ray.commands.report",
    "dfp_ray.commands.publish",
    "dfp_ray.commands.labels",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfp-ray",
        description=(
            "dfp_ray: per-user behavioural anomaly detection for authentication logs "
            "(Digital Fingerprinting) and out-of-distribution detection for trained models, on Ray."
        ),
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="Logging verbosity for all subcommands (default: INFO).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command not built yet in this checkout
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
