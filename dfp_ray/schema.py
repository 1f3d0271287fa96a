"""Log-source schemas declared in YAML, and the mapping of raw records to model features.

A schema says, for one log source, where each column comes from in the raw (nested) record,
how it is converted (string, number, boolean map, time), which per-user-per-day counters are
derived, and which columns the autoencoder sees as categorical / numeric / binary features.
Duo and Azure AD ship as ``dfp_ray/schemas/{duo,azure}.yaml``; a new log source needs only a
new YAML file (pass its path wherever a schema name is accepted).

Everything here is vectorised pandas: raw records are flattened once with
``pandas.json_normalize`` (nested keys joined by ``.``) and every field is a column operation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dfp_ray.yaml_config import load_yaml_model

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).with_name("schemas")
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


class SkipReport(BaseModel):
    """What the mapping dropped, and why (malformed records never stop a run)."""

    total: int = 0
    kept: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def merge(self, other: SkipReport) -> SkipReport:
        merged = Counter(self.skipped)
        merged.update(other.skipped)
        return SkipReport(total=self.total + other.total, kept=self.kept + other.kept, skipped=dict(merged))

    def describe(self) -> str:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items()))
        return f"skipped {self.skipped_total} of {self.total} records ({reasons})"


def _flatten(records: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """Dicts, or a frame that still holds nested dicts, -> dotted columns (the loader's rule)."""
    from dfp_ray.loading import flatten_records

    if isinstance(records, pd.DataFrame):
        obj_cols = [c for c in records.columns if records[c].dtype == object]
        if not any(records[c].map(lambda v: isinstance(v, dict)).any() for c in obj_cols):
            return records
        records = records.to_dict(orient="records")
    return flatten_records(list(records))


def _column(raw: pd.DataFrame, path: str, name: str) -> pd.Series:
    """A raw column by dotted path; an already-mapped column by name; else all-missing."""
    if path in raw.columns:
        return raw[path]
    if name in raw.columns:
        return raw[name]
    return pd.Series(np.nan, index=raw.index, dtype=object)


def _is_scalar_ok(values: pd.Series) -> pd.Series:
    """True where a value is missing or a scalar (lists/dicts in a scalar field are malformed)."""
    if values.dtype != object:
        return pd.Series(True, index=values.index)
    return ~values.map(lambda v: isinstance(v, (list, dict, tuple, set)))


def _to_string(values: pd.Series) -> pd.Series:
    """Text with None for missing and empty values (object dtype)."""
    if isinstance(values.dtype, pd.StringDtype):  # already text (pandas 3's default): no per-value str()
        keep = values.notna().to_numpy(dtype=bool) & (values != "").fillna(False).to_numpy(dtype=bool)
        return values.astype(object).where(keep, None)
    out = values.astype(object).where(values.notna(), None)
    mask = out.notna()
    out[mask] = out[mask].astype(str)
    out = out.where(out != "", None)
    return out


def _to_datetime(values: pd.Series, fmt: str) -> pd.Series:
    if fmt in ("epoch_s", "epoch_ms") or (fmt == "auto" and pd.api.types.is_numeric_dtype(values)):
        unit = "ms" if fmt == "epoch_ms" else "s"
        return pd.to_datetime(pd.to_numeric(values, errors="coerce"), unit=unit, utc=True, errors="coerce")
    text = values.astype(object).where(values.notna(), None)
    parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    if fmt == "auto":  # numeric strings in an otherwise text column: epoch seconds
        numeric = pd.to_numeric(values, errors="coerce")
        fallback = pd.to_datetime(numeric, unit="s", utc=True, errors="coerce")
        parsed = parsed.fillna(fallback)
    return parsed


def _to_bool(values: pd.Series, spec: FieldSpec) -> pd.Series:
    if isinstance(values.dtype, pd.StringDtype):  # text: vectorised lower-casing
        keys = values.str.lower().astype(object).where(values.notna(), None)
    else:
        keys = values.astype(object).map(lambda v: v.lower() if isinstance(v, str) else v)
    true = {v.lower() if isinstance(v, str) else v for v in spec.true_values}
    false = {v.lower() if isinstance(v, str) else v for v in spec.false_values}
    is_true = keys.isin(true)
    if not false:  # only true_values given: everything else is false
        return is_true
    out = pd.Series(pd.NA, index=values.index, dtype="boolean")
    out[is_true] = True
    out[keys.isin(false)] = False
    return out


def map_fields(raw: pd.DataFrame, schema: SourceSchema) -> tuple[pd.DataFrame, SkipReport]:
    """Map flattened raw records to the schema's columns; drop (and count) malformed records."""
    out: dict[str, pd.Series] = {}
    bad = np.full(len(raw), "", dtype=object)  # the first reason a record is malformed
    flagged = np.zeros(len(raw), dtype=bool)

    def flag(mask: pd.Series, reason: str) -> None:
        new = np.asarray(mask, dtype=bool) & ~flagged
        if new.any():
            bad[new] = reason
            flagged[new] = True

    for spec in schema.fields:
        if spec.join is not None:
            parts = [_to_string(_column(raw, p, p)).fillna("").astype(str) for p in spec.join]
            text = parts[0]
            for nxt in parts[1:]:
                sep = np.where((text != "") & (nxt != ""), spec.separator, "")
                text = text + sep + nxt
            out[spec.name] = text.where(text != "", None)
            continue
        values = _column(raw, spec.path or spec.name, spec.name)
        scalar_ok = _is_scalar_ok(values)
        flag(~scalar_ok, f"wrong type for '{spec.name}' ({spec.path})")
        values = values.where(scalar_ok, None)
        if spec.type == "string":
            conv = _to_string(values)
            invalid = pd.Series(False, index=raw.index)
        elif spec.type in ("float", "int"):
            conv = pd.to_numeric(values, errors="coerce")
            invalid = conv.isna() & values.notna()
        elif spec.type == "bool":
            conv = _to_bool(values, spec)
            invalid = pd.Series(False, index=raw.index)
        else:
            conv = _to_datetime(values, spec.time_format)
            invalid = conv.isna() & values.notna()
        flag(invalid, f"unparsable {spec.type} in '{spec.name}' ({spec.path})")
        if spec.required:
            flag(conv.isna() & ~invalid, f"missing required '{spec.name}' ({spec.path})")
        out[spec.name] = conv

    frame = pd.DataFrame(out, index=raw.index)
    if "_source_file" in raw.columns:
        frame["_source_file"] = raw["_source_file"]
    keep = ~flagged
    skipped = dict(Counter(bad[flagged].tolist()))
    report = SkipReport(total=len(raw), kept=int(keep.sum()), skipped=skipped)
    if skipped:
        log.warning("schema %s: %s", schema.name, report.describe())
        frame = frame[keep]
    return frame.reset_index(drop=True), report


def add_derived_features(df: pd.DataFrame, schema: SourceSchema) -> pd.DataFrame:
    """Sort by time and compute the per-user-per-UTC-day counters (vectorised groupby/cumsum).

    ``running_count`` is the user's events so far that day starting at 0 (Morpheus's
    ``logcount``); ``distinct_so_far`` is the number of distinct values so far that day,
    starting at 1 (``locincrement``, ``appincrement``). Missing values count as one value.
    """
    user, time = schema.user_column, schema.time_column
    df = df.sort_values(time, kind="stable").reset_index(drop=True)
    if not schema.counters or df.empty:
        for c in schema.counters:
            df[c.name] = pd.Series(dtype="int64")
        return df
    day = df[time].dt.tz_convert("UTC").dt.floor(schema.counter_period) if schema.counter_period in (
        "D", "h", "H", "min", "T"
    ) else df[time].dt.tz_convert("UTC").dt.to_period(schema.counter_period).dt.start_time
    keys = [df[user], day]
    grouped = df.groupby(keys, sort=False, dropna=False)
    for c in schema.counters:
        if c.kind == "running_count":
            df[c.name] = grouped.cumcount().astype("int64")
        else:
            values = df[c.column].astype(object).where(df[c.column].notna(), MISSING_CATEGORY)
            first_seen = ~pd.DataFrame({"u": df[user], "d": day, "v": values}).duplicated()
            df[c.name] = first_seen.astype("int64").groupby(keys, sort=False, dropna=False).cumsum()
    return df


def finalize_feature_types(df: pd.DataFrame, schema: SourceSchema) -> pd.DataFrame:
    """Missing categorical values become the category 'nan'; binaries bool; numerics float."""
    df = df.copy()
    for col in schema.features.categorical:
        df[col] = df[col].astype(object).where(df[col].notna(), MISSING_CATEGORY).astype(str)
    for col in schema.features.binary:
        df[col] = df[col].astype("boolean").fillna(False).astype(bool)
    for col in schema.features.numeric:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


def frame_from_records(
    records: list[dict] | pd.DataFrame, schema: SourceSchema, *, derive: bool = True
) -> tuple[pd.DataFrame, SkipReport]:
    """Raw records (dicts or a flattened frame) -> mapped, sorted frame with derived features.

    ``derive=False`` stops after the field mapping (the pipeline derives counters later, on
    the frame that reaches data preparation, as Morpheus does).
    """
    raw = _flatten(records)
    mapped, report = map_fields(raw, schema)
    if derive:
        mapped = finalize_feature_types(add_derived_features(mapped, schema), schema)
    return mapped, report


def prepare_features(mapped: pd.DataFrame, schema: SourceSchema) -> pd.DataFrame:
    """Data preparation step: counters + feature dtypes on an already-mapped frame."""
    return finalize_feature_types(add_derived_features(mapped, schema), schema)


def dump_schema(schema: SourceSchema) -> str:
    return yaml.safe_dump(schema.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
