"""The schema models: how one log source's raw records become columns and features."""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
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
    separator: str = Field(", ", description="Separator used by `join`.")
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
        if (self.path is None) == (self.join is None):
            raise ValueError(f"field '{self.name}': give exactly one of 'path' or 'join'")
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

    @model_validator(mode="after")
    def _column_needed(self) -> CounterSpec:
        if self.kind == "distinct_so_far" and not self.column:
            raise ValueError(f"counter '{self.name}': distinct_so_far needs 'column'")
        return self


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    categorical: list[str] = Field(default_factory=list)
    numeric: list[str] = Field(default_factory=list)
    binary: list[str] = Field(default_factory=list)

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
    features: FeatureSpec

    @model_validator(mode="after")
    def _consistent(self) -> SourceSchema:
        names = [f.name for f in self.fields]
        dupes = [n for n, c in Counter(names + [c.name for c in self.counters]).items() if c > 1]
        if dupes:
            raise ValueError(f"column names defined twice: {dupes}")
        known = set(names) | {c.name for c in self.counters}
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
        return [f.name for f in self.fields] + [c.name for c in self.counters]

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
