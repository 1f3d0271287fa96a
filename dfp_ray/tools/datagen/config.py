"""Options of `dfp-ray datagen`, validated in one place.

Everything that changes the bytes written is an option here (and is echoed into
``manifest.json``), so a data set can always be regenerated exactly from its manifest.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Source = Literal["duo", "azure"]
AnomalyKind = Literal["new_location", "new_device", "failed_burst", "unusual_app", "off_hours"]
ANOMALY_KINDS: tuple[str, ...] = ("new_location", "new_device", "failed_burst", "unusual_app", "off_hours")
SOURCES: tuple[str, ...] = ("duo", "azure")


class DatagenConfig(BaseModel):
    """What to generate. Defaults are shaped like Morpheus's DFP example data set."""

    model_config = ConfigDict(extra="forbid")

    out: str = Field(description="Output folder: a local path or an fsspec URL such as s3://bucket/prefix.")
    sources: list[Source] = Field(
        default_factory=lambda: ["duo", "azure"], description="Log sources to write."
    )
    users: int = Field(20, ge=1, le=1_000_000, description="Users per source.")
    train_days: int = Field(29, ge=1, le=3660, description="Days in the training window.")
    infer_days: int = Field(2, ge=1, le=3660, description="Days in the inference window (after training).")
    start_date: dt.date = Field(dt.date(2022, 8, 1), description="First UTC day of the training window.")
    events_per_user_per_day: float = Field(
        5.0, gt=0, le=10_000, description="Mean normal events per user per day, weekends included."
    )
    file_interval_hours: int = Field(
        3,
        ge=1,
        le=24,
        description="One file per this many hours (must divide 24); empty slots write no file.",
    )
    anomaly_users: int | None = Field(
        None, ge=0, description="Users attacked in the inference window; default: anomaly_fraction of users."
    )
    anomaly_fraction: float = Field(
        0.25, ge=0, le=1, description="Share of users attacked when anomaly_users unset."
    )
    anomaly_kinds: list[AnomalyKind] = Field(
        default_factory=lambda: list(ANOMALY_KINDS),
        description="Anomaly kinds injected, assigned round-robin.",
    )
    seed: int = Field(42, ge=0, description="Seed of every random choice: same seed, same bytes.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec storage options (for s3: client_kwargs.endpoint_url, key, ...).",
    )

    @field_validator("out")
    @classmethod
    def _out_not_empty(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("out must be a folder path or URL, got an empty string")
        return value.rstrip("/") or "/"

    @field_validator("sources", "anomaly_kinds")
    @classmethod
    def _unique_non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one value")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _check_interval(self) -> DatagenConfig:
        if 24 % self.file_interval_hours:
            raise ValueError(
                f"file_interval_hours={self.file_interval_hours} does not divide 24; use 1, 2, 3, 4, 6, 8, 12 or 24"
            )
        if self.anomaly_users is not None and self.anomaly_users > self.users:
            raise ValueError(f"anomaly_users={self.anomaly_users} is more than users={self.users}")
        return self

    # ---- derived values -----------------------------------------------------------------------
    @property
    def n_attacked(self) -> int:
        """Number of users attacked per source."""
        if self.anomaly_users is not None:
            return self.anomaly_users
        if self.anomaly_fraction == 0:
            return 0
        # Every kind at least once, as long as half the users stay unattacked.
        wanted = max(
            round(self.anomaly_fraction * self.users), min(len(self.anomaly_kinds), -(-self.users // 2))
        )
        return min(wanted, self.users)

    @property
    def train_start(self) -> dt.date:
        return self.start_date

    @property
    def train_end(self) -> dt.date:
        """Last day of the training window (inclusive)."""
        return self.start_date + dt.timedelta(days=self.train_days - 1)

    @property
    def infer_start(self) -> dt.date:
        return self.start_date + dt.timedelta(days=self.train_days)

    @property
    def infer_end(self) -> dt.date:
        """Last day of the inference window (inclusive)."""
        return self.start_date + dt.timedelta(days=self.train_days + self.infer_days - 1)

    @property
    def total_days(self) -> int:
        return self.train_days + self.infer_days
