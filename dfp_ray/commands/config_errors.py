"""One way for every command to load its configuration and report a bad one."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def load_or_report(load: Callable[[], T]) -> T | None:
    """``load()``, or None after printing why the configuration is unusable to stderr.

    Covers what a user can fix: a YAML file or field that is wrong (``ConfigError``, with the
    file and field), a file that is missing, and a ``--set`` override that fails validation
    (each failing field named with its dotted path). The caller exits with status 2.
    """
    from pydantic import ValidationError

    from dfp_ray.yaml_config import ConfigError

    try:
        return load()
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        text = str(exc)
        if isinstance(exc, ValidationError):
            text = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        print(f"error: {text}", file=sys.stderr)
        return None
