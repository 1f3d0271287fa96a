"""Options of the ``habits`` scenario family (`dfp-ray datagen --family habits`)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

HabitsKind = Literal["new_app_at_night", "new_location", "new_browser", "off_hours", "mfa_fatigue"]
HABITS_KINDS: tuple[str, ...] = ("new_app_at_night", "new_location", "new_browser", "off_hours", "mfa_fatigue")
HABITS_SOURCES: tuple[str, ...] = ("duo", "azure")


class HabitsConfig(BaseModel):
    """What the ``habits`` family writes. Same layout as `dfp-ray datagen` (see docs/datagen.md)."""

    model_config = ConfigDict(extra="forbid")

    out: str = Field(description="Output folder (local path).")
    sources: list[Literal["duo", "azure"]] = Field(default_factory=lambda: ["duo", "azure"])
    users: int = Field(48, ge=4, le=100_000, description="Users per source.")
    train_days: int = Field(28, ge=7, le=3660, description="Days in the training window.")
    infer_days: int = Field(2, ge=1, le=60, description="Days in the inference window.")
    start_date: dt.date = Field(dt.date(2023, 10, 2), description="First UTC day of training.")
    attack_fraction: float = Field(0.3, ge=0, le=1, description="Share of users attacked in inference.")
    attack_kinds: list[HabitsKind] = Field(default_factory=lambda: list(HABITS_KINDS))
    file_interval_hours: int = Field(4, ge=1, le=24, description="One file per this many hours (divides 24).")
    seed: int = Field(7, ge=0)

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
