"""The schema models: how one log source's raw records become columns and features."""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dfp_ray.yaml_config import load_yaml_model

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).parent  # the built-in schemas: duo.yaml, azure.yaml, ...
MISSING_CATEGORY = "nan"  # Morpheus's literal for a missing string feature


class FieldSpec(BaseModel):
    """One output column, read from the raw record."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Output column name.")
    path: str | None = Field(None, description="Dotted path into the raw record, e.g. 'user.name'.")
    join: list[str] | None = Field(
        None, description="Dotted paths whose string values are joined (missing parts are left out)."
    )
    hash: list[str] | None = Field(
        None,
        description="Dotted paths hashed into an id, for sources whose records carry none: 16 hex digits of "
        "a hash of the values, then '-<n>' for the n-th identical record of the same file (n from 0).",
    )
    separator: str = Field(", ", description="Separator used by `join`.")
    missing_values: list[Any] = Field(
        default_factory=list,
        description="Raw values that mean 'missing' (compared as text, e.g. ['?', '-', 'N/A']); they become "
        "missing before conversion (a categorical feature then sees 'nan').",
    )
    pattern: str | None = Field(
        None,
        description="For type=string: a regular expression; a value it matches is replaced by its first "
        "group (e.g. '^(.+?) [0-9][0-9.]*$' turns 'Chrome 118.0.5993' into 'Chrome'); other values stay.",
    )
    time_origin: datetime | None = Field(
        None,
        description="For epoch_s / epoch_ms: the instant the numbers count from (default 1970-01-01 UTC), "
        "e.g. '2015-01-01T00:00:00Z' for logs whose times are seconds since the start of a collection.",
    )
    scale: float | None = Field(
        None,
        gt=0,
        description="For a numeric feature: its meaningful unit; the model never scales it by a smaller "
        "standard deviation (see docs/scoring.md).",
    )
    type: Literal["string", "float", "int", "bool", "datetime"] = Field(
        "string", description="How the value is converted."
    )
    time_format: Literal["auto", "iso", "epoch_s", "epoch_ms"] = Field(
        "auto", description="For type=datetime: ISO-8601 text, epoch seconds / milliseconds, or auto."
    )
    true_values: list[Any] = Field(default_factory=list, description="For type=bool: values meaning true.")
    false_values: list[Any] = Field(default_factory=list, description="For type=bool: values meaning false.")
    required: bool = Field(False, description="Records where this field is missing/invalid are skipped.")

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        if sum(x is not None for x in (self.path, self.join, self.hash)) != 1:
            raise ValueError(f"field '{self.name}': give exactly one of 'path', 'join' or 'hash'")
        if self.pattern is not None:
            import re

            try:
                compiled = re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"field '{self.name}': pattern {self.pattern!r} is not a regular expression: {exc}") from None
            if compiled.groups < 1:
                raise ValueError(f"field '{self.name}': pattern {self.pattern!r} needs a group, e.g. '^(.+?) [0-9.]+$'")
        if self.time_origin is not None and self.time_format not in ("epoch_s", "epoch_ms"):
            raise ValueError(f"field '{self.name}': time_origin needs time_format epoch_s or epoch_ms")
        if self.type == "bool" and not (self.true_values or self.false_values):
            raise ValueError(f"field '{self.name}': type bool needs true_values and/or false_values")
        return self


class CounterSpec(BaseModel):
    """A per-user, per-UTC-day counter derived after mapping (rows in time order)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["running_count", "distinct_so_far"] = Field(
        description="running_count: events so far that day, starting at 0. "
        "distinct_so_far: distinct values of `column` so far that day, starting at 1."
    )
    column: str | None = Field(None, description="For distinct_so_far: the column whose values are counted.")
    scale: float = Field(1.0, gt=0, description="Meaningful unit of the counter (one event / one value).")

    @model_validator(mode="after")
    def _column_needed(self) -> CounterSpec:
        if self.kind == "distinct_so_far" and not self.column:
            raise ValueError(f"counter '{self.name}': distinct_so_far needs 'column'")
        return self


_TIME_SCALE = {"hour_of_day": 0.25, "day_of_week": 0.9}  # ~ one hour / one day on the unit circle


class TimeFeatureSpec(BaseModel):
    """When an event happened, as model features (computed by data prep from the time column).

    ``hour_of_day`` and ``day_of_week`` are cyclic: two columns ``<name>_sin`` and ``<name>_cos``
    (23:59 is next to 00:00, Sunday next to Monday); ``weekend`` is one boolean ``<name>``.
    Times are taken in ``timezone`` (an IANA name; default UTC). A per-user model learns its
    user's usual hours from these columns; list them under ``features`` (numeric, or binary for
    ``weekend``) to use them.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["hour_of_day", "day_of_week", "weekend"]
    timezone: str = Field("UTC", description="IANA time zone the hour / day is read in.")
    scale: float | None = Field(
        None, gt=0, description="Meaningful unit of each cyclic column (default: 0.25, about one hour, for "
        "hour_of_day; 0.9, about one day, for day_of_week)."
    )

    @model_validator(mode="after")
    def _known_zone(self) -> TimeFeatureSpec:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"time feature '{self.name}': unknown timezone {self.timezone!r} (use an IANA name "
                             "such as 'UTC' or 'Europe/Madrid')") from None
        return self

    @property
    def columns(self) -> list[str]:
        return [self.name] if self.kind == "weekend" else [f"{self.name}_sin", f"{self.name}_cos"]

    @property
    def unit(self) -> float:
        return self.scale if self.scale is not None else _TIME_SCALE.get(self.kind, 1.0)


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    categorical: list[str] = Field(default_factory=list)
    numeric: list[str] = Field(default_factory=list)
    binary: list[str] = Field(default_factory=list)
    min_count: dict[str, int] = Field(
        default_factory=dict,
        description="Per categorical feature: values seen fewer times than this in a model's training rows "
        "share the 'other' class, so the model learns how often its user meets a value it rarely sees. For "
        "open vocabularies (host names, IP-derived values) where something new is ordinary; default 1 (every "
        "value seen in training is its own class).",
    )
    above_only: list[str] | None = Field(
        None,
        description="Numeric features whose z-score counts only when the observed value is above the "
        "model's prediction (z 0 below it). Default (unset): the schema's counters, because fewer events or "
        "fewer distinct values so far today than the model expects is not a sign of misuse, yet scores as "
        "one. [] gives Morpheus's two-sided z on every feature.",
    )

    @model_validator(mode="after")
    def _counts_of_categoricals(self) -> FeatureSpec:
        unknown = [c for c in self.min_count if c not in self.categorical]
        if unknown:
            raise ValueError(f"features.min_count names {unknown}, which are not categorical features")
        bad = [c for c, n in self.min_count.items() if n < 1]
        if bad:
            raise ValueError(f"features.min_count must be >= 1, got {bad}")
        stray = [c for c in self.above_only or [] if c not in self.numeric]
        if stray:
            raise ValueError(f"features.above_only names {stray}, which are not numeric features")
        return self

    @property
    def all(self) -> list[str]:
        return [*self.categorical, *self.binary, *self.numeric]


class SourceSchema(BaseModel):
    """A log source: raw-record mapping, derived counters and the model's feature list."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Source name, used in model names (DFP-{source}-{user}) and file names.")
    description: str = ""
    user_column: str = "username"
    time_column: str = "timestamp"
    event_id_column: str | None = Field("event_id", description="Column holding the record's own id.")
    counter_period: str = Field("D", description="Counters restart at each UTC period (pandas alias).")
    fields: list[FieldSpec]
    counters: list[CounterSpec] = Field(default_factory=list)
    time_features: list[TimeFeatureSpec] = Field(default_factory=list)
    features: FeatureSpec

    @model_validator(mode="after")
    def _consistent(self) -> SourceSchema:
        names = [f.name for f in self.fields]
        derived = [c.name for c in self.counters] + [col for t in self.time_features for col in t.columns]
        dupes = [n for n, c in Counter(names + derived).items() if c > 1]
        if dupes:
            raise ValueError(f"column names defined twice: {dupes}")
        known = set(names) | set(derived)
        for col in (self.user_column, self.time_column):
            if col not in names:
                raise ValueError(f"'{col}' (user/time column) must be one of the fields")
        if self.event_id_column and self.event_id_column not in names:
            raise ValueError(f"event_id_column '{self.event_id_column}' is not one of the fields")
        for c in self.counters:
            if c.column and c.column not in names:
                raise ValueError(f"counter '{c.name}': column '{c.column}' is not one of the fields")
        missing = [f for f in self.features.all if f not in known]
        if missing:
            raise ValueError(f"features {missing} are neither fields nor counters")
        time_field = next(f for f in self.fields if f.name == self.time_column)
        if time_field.type != "datetime":
            raise ValueError(f"time column '{self.time_column}' must have type: datetime")
        return self

    @property
    def feature_columns(self) -> list[str]:
        return self.features.all

    @property
    def output_columns(self) -> list[str]:
        return [f.name for f in self.fields] + [c.name for c in self.counters] + [
            col for t in self.time_features for col in t.columns
        ]

    def numeric_scales(self) -> dict[str, float]:
        """Numeric feature -> its meaningful unit, where the schema says one (counters: 1)."""
        scales: dict[str, float] = {f.name: f.scale for f in self.fields if f.scale is not None}
        scales.update({c.name: c.scale for c in self.counters})
        for t in self.time_features:
            if t.kind != "weekend":
                scales.update({col: t.unit for col in t.columns})
        return {k: v for k, v in scales.items() if k in self.features.numeric}

    def above_only_features(self) -> list[str]:
        """Numeric features scored one-sided (``features.above_only``; unset: the counters)."""
        if self.features.above_only is not None:
            return list(self.features.above_only)
        counters = {c.name for c in self.counters}
        return [f for f in self.features.numeric if f in counters]

    def feature_groups(self) -> dict[str, tuple[str, list[str]]]:
        """Features explained together: ``<name>_sin``/``<name>_cos`` -> (name, kind, columns)."""
        groups: dict[str, tuple[str, list[str]]] = {}
        for t in self.time_features:
            cols = [c for c in t.columns if c in self.features.numeric]
            if t.kind != "weekend" and len(cols) == 2:
                groups[t.name] = (t.kind, cols)
        return groups

    def fingerprint(self) -> str:
        """A short hash of the schema, used to key caches of mapped frames."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def builtin_schema_names() -> list[str]:
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.yaml"))


def load_schema(name_or_path: str | Path) -> SourceSchema:
    """Load a built-in schema by name (``duo``, ``azure``, ...) or any schema YAML by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        candidate = SCHEMA_DIR / f"{name_or_path}.yaml"
        if not candidate.exists():
            raise FileNotFoundError(
                f"unknown schema '{name_or_path}': built-in schemas are {builtin_schema_names()}; "
                "or pass the path of a schema YAML file"
            )
        path = candidate
    return load_yaml_model(path, SourceSchema)



def dump_schema(schema: SourceSchema) -> str:
    return yaml.safe_dump(schema.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
