"""Periods: pandas-style frequency aliases (``D``, ``6H``, ``W-MON``) parsed once, checked early."""
from __future__ import annotations

import re
from dataclasses import dataclass

_UNIT_ALIASES = {
    "s": "s", "S": "s", "sec": "s",
    "T": "min", "min": "min",
    "H": "h", "h": "h",
    "D": "D", "d": "D",
    "W": "W",
    "M": "M", "ME": "M", "MS": "M",
    "Y": "Y", "YE": "Y", "YS": "Y", "A": "Y", "AS": "Y",
}
_WEEKDAYS = ["MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"]
_PERIOD_RE = re.compile(r"^\s*(?P<n>\d+)?\s*(?P<unit>[A-Za-z]+)(?:-(?P<anchor>[A-Za-z]{3}))?\s*$")


@dataclass(frozen=True)
class PeriodSpec:
    """A parsed period: ``n`` units of ``unit`` (s, min, h, D, W, M, Y).

    ``week_end`` is the weekday (0=Monday .. 6=Sunday) a ``W`` period ends on; pandas' ``W``
    means weeks ending on Sunday, i.e. Monday..Sunday.
    """

    n: int
    unit: str
    week_end: int = 6


def parse_period(alias: str) -> PeriodSpec:
    """Parse a pandas-style frequency alias (``D``, ``12H``, ``15T``, ``W``, ``W-MON``, ``M``, ``Y``).

    Old aliases Morpheus's messages use (``T``, ``H``, ``M``, ``Y``) are accepted even though
    pandas 3 removed them, so Morpheus message files work unchanged.
    """
    match = _PERIOD_RE.match(alias) if isinstance(alias, str) else None
    unit = _UNIT_ALIASES.get(match.group("unit")) if match else None
    if match is None or unit is None:
        raise ValueError(
            f"unknown period {alias!r}: use a pandas frequency alias with an optional multiple, "
            "one of s, T/min, H/h, D, W (or W-MON..W-SUN), M, Y, e.g. 'D', '12H', '15T'"
        )
    n = int(match.group("n") or 1)
    if n < 1:
        raise ValueError(f"period {alias!r}: the multiple must be at least 1")
    anchor = match.group("anchor")
    week_end = 6
    if anchor is not None:
        if unit != "W" or anchor.upper() not in _WEEKDAYS:
            raise ValueError(f"period {alias!r}: only weeks take an anchor, e.g. 'W-SUN' (the day a week ends on)")
        week_end = _WEEKDAYS.index(anchor.upper())
    return PeriodSpec(n=n, unit=unit, week_end=week_end)

