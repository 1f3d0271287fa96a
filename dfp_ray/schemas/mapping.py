"""Raw records -> the schema's columns (the mapping file-to-DataFrame applies), vectorised.

Malformed records are dropped and counted per reason (:class:`SkipReport`); they never stop a run.
"""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from dfp_ray.schemas.model import FieldSpec, SourceSchema

log = logging.getLogger(__name__)


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


def flatten_any(records: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """Dicts, or a frame that still holds nested dicts, -> dotted columns (the loader's rule)."""
    from dfp_ray.readers.flatten import flatten_records

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


def _to_datetime(values: pd.Series, fmt: str, origin: pd.Timestamp | None = None) -> pd.Series:
    if fmt in ("epoch_s", "epoch_ms") or (fmt == "auto" and pd.api.types.is_numeric_dtype(values)):
        unit = "ms" if fmt == "epoch_ms" else "s"
        numbers = pd.to_numeric(values, errors="coerce")
        if origin is not None:  # numbers count from another instant than 1970-01-01
            return origin + pd.to_timedelta(numbers, unit=unit, errors="coerce")
        return pd.to_datetime(numbers, unit=unit, utc=True, errors="coerce")
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


def _without_missing(values: pd.Series, spec: FieldSpec) -> pd.Series:
    """Values listed in ``missing_values`` (compared as text) become missing."""
    if not spec.missing_values:
        return values
    text = values.astype(object).where(values.notna(), None).map(lambda v: v if v is None else str(v).strip())
    return values.astype(object).where(~text.isin([str(m) for m in spec.missing_values]), None)


def _apply_pattern(text: pd.Series, pattern: str) -> pd.Series:
    """Replace every value the pattern matches by its first group (vectorised ``str.extract``)."""
    present = text.notna()
    if not present.any():
        return text
    extracted = text[present].astype(str).str.extract(pattern, expand=False)
    if isinstance(extracted, pd.DataFrame):
        extracted = extracted.iloc[:, 0]
    out = text.copy()
    matched = extracted.notna()
    out.loc[matched[matched].index] = extracted[matched].astype(object)
    return out


def _hash_ids(raw: pd.DataFrame, paths: list[str]) -> pd.Series:
    """Row-hash ids: 16 hex digits of a stable hash of the values, '-n' for the n-th identical
    record of the same file (so repeated identical lines keep distinct ids)."""
    parts = pd.DataFrame({p: _to_string(_column(raw, p, p)).fillna("").astype(str) for p in paths}, index=raw.index)
    digest = pd.util.hash_pandas_object(parts, index=False).to_numpy(dtype=np.uint64)
    hexes = pd.Series([f"{int(d):016x}" for d in digest], index=raw.index, dtype=object)
    keys = [hexes]
    if "_source_file" in raw.columns:
        keys.append(raw["_source_file"].astype(str))
    nth = hexes.groupby(keys, sort=False).cumcount().astype(str)
    return hexes + "-" + nth


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
        if spec.hash is not None:
            out[spec.name] = _hash_ids(raw, spec.hash)
            continue
        if spec.join is not None:
            parts = [_to_string(_without_missing(_column(raw, p, p), spec)).fillna("").astype(str) for p in spec.join]
            text = parts[0]
            for nxt in parts[1:]:
                sep = np.where((text != "") & (nxt != ""), spec.separator, "")
                text = text + sep + nxt
            out[spec.name] = text.where(text != "", None)
            continue
        values = _without_missing(_column(raw, spec.path or spec.name, spec.name), spec)
        scalar_ok = _is_scalar_ok(values)
        flag(~scalar_ok, f"wrong type for '{spec.name}' ({spec.path})")
        values = values.where(scalar_ok, None)
        if spec.type == "string":
            conv = _to_string(values)
            if spec.pattern is not None:
                conv = _apply_pattern(conv, spec.pattern)
            invalid = pd.Series(False, index=raw.index)
        elif spec.type in ("float", "int"):
            conv = pd.to_numeric(values, errors="coerce")
            invalid = conv.isna() & values.notna()
        elif spec.type == "bool":
            conv = _to_bool(values, spec)
            invalid = pd.Series(False, index=raw.index)
        else:
            origin = pd.Timestamp(spec.time_origin) if spec.time_origin is not None else None
            if origin is not None and origin.tzinfo is None:
                origin = origin.tz_localize("UTC")
            conv = _to_datetime(values, spec.time_format, origin)
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

