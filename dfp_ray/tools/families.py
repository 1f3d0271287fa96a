"""The synthetic data families by name: one place that maps ``default`` / ``habits`` / ``roster``
to its configuration model and its generator, for the CLI, the benchmarks and the tests.

Each family is an independent generator (its own habits, vocabularies, rare-but-normal events
and attacks; docs/datagen.md), so quality figures are reported per family, never pooled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

from pydantic import BaseModel

Family = Literal["default", "habits", "roster"]
FAMILIES: tuple[str, ...] = get_args(Family)


def make_config(family: str, **options: Any) -> BaseModel:
    """``family``'s configuration from ``options`` (pydantic checks them; defaults are the family's)."""
    return _family(family)[0](**options)


def generate_family(
    family: str, config: BaseModel | None = None, *, overwrite: bool = False, progress: bool = False, **options: Any
):
    """Write a data set of ``family`` (``config``, or one made from ``options``); returns its summary.
    ``progress``: a progress bar on stderr (the default family's generator has one)."""
    config_cls, generate = _family(family)
    if config is None:
        config = config_cls(**options)
    elif options:
        raise TypeError("pass either config or options, not both")
    if not isinstance(config, config_cls):
        raise TypeError(f"family {family!r} takes a {config_cls.__name__}, got {type(config).__name__}")
    if family == "default":
        return generate(config, overwrite=overwrite, progress=progress)
    return generate(config, overwrite=overwrite)


def _family(family: str) -> tuple[type[BaseModel], Callable[..., Any]]:
    if family == "default":
        from .datagen import DatagenConfig, generate

        return DatagenConfig, generate
    if family == "habits":
        from .scenarios import HabitsConfig
        from .scenarios import generate as generate_habits

        return HabitsConfig, generate_habits
    if family == "roster":
        from .roster import RosterConfig
        from .roster import generate as generate_roster

        return RosterConfig, generate_roster
    raise ValueError(f"unknown data family {family!r}: use one of {', '.join(FAMILIES)}")
