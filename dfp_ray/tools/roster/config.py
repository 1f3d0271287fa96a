"""Options of the ``roster`` scenario family (`dfp-ray datagen --family roster`).

A pydantic model with ``extra="forbid"`` so a misspelt option is an error naming the field,
as for the other two families; every value that shapes the bytes is here (seed included), so
the manifest can record it and the same options always write the same files.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

RosterKind = Literal[
    "impossible_travel", "token_replay", "credential_stuffing", "new_device_enrolment", "dormant_wakeup"
]
ROSTER_KINDS: tuple[str, ...] = (
    "impossible_travel", "token_replay", "credential_stuffing", "new_device_enrolment", "dormant_wakeup",
)
RARE_KINDS: tuple[str, ...] = ("dst_shift", "new_phone", "conference_trip", "weekend_oncall", "password_reset_burst")
ROSTER_SOURCES: tuple[str, ...] = ("duo", "azure")


class RosterConfig(BaseModel):
    """What the ``roster`` family writes. Same layout as `dfp-ray datagen` (docs/datagen.md)."""

    model_config = ConfigDict(extra="forbid")

    out: str = Field(description="Output folder (local path).")
    sources: list[Literal["duo", "azure"]] = Field(
        default_factory=lambda: list(ROSTER_SOURCES), description="Sources to write (duo, azure).")
    users: int = Field(72, ge=8, le=100_000, description="Users per source (the same people in both sources).")
    train_days: int = Field(28, ge=14, le=3660,
                            description="UTC days in the training window (at least 14: dormant users need a history).")
    infer_days: int = Field(4, ge=1, le=60, description="UTC days in the inference window, right after training.")
    start_date: dt.date = Field(
        dt.date(2024, 2, 2),
        description="First UTC day of training. The default (a Friday) makes the default inference window "
        "Friday to Monday, so weekend on-call logins and ordinary weekdays are both in it.")
    attack_fraction: float = Field(0.3, ge=0, le=1, description="Share of users attacked in the inference window.")
    attack_kinds: list[RosterKind] = Field(
        default_factory=lambda: list(ROSTER_KINDS),
        description="Attack kinds, assigned to victims in turn (each kind only to users it fits).")
    file_interval_hours: int = Field(6, ge=1, le=24, description="One file per this many UTC hours (divides 24).")
    seed: int = Field(2024, ge=0, description="Seed of every random choice.")

    @field_validator("attack_kinds", "sources")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one value")
        return list(dict.fromkeys(value))

    @field_validator("file_interval_hours")
    @classmethod
    def _divides_day(cls, value: int) -> int:
        if 24 % value:
            raise ValueError(f"file_interval_hours={value} does not divide 24")
        return value

    @property
    def total_days(self) -> int:
        return self.train_days + self.infer_days
