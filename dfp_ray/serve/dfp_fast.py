"""The per-request fast path of DFP scoring: the pipeline's steps on Python lists and numpy arrays.

A scoring call through pandas (mapping -> prepare_features -> score_users -> filter_detections)
builds ~200 small Series whatever its size: ~110 ms CPU for one record, 0.14 ms per record at
3,200. The model arithmetic is a fraction of a millisecond. This module computes the same
values without those frames, for requests whose records are plain (every field missing or of
its schema type, nothing the mapping would drop):

* :class:`FastMapper` maps records field by field in Python (the rules of
  :func:`dfp_ray.schemas.mapping.map_fields` for string, join and bool fields; times through the
  mapping's own ``_to_datetime``), and says "use the pandas path" (``None``) for anything else:
  a record the mapping would drop or flag, a value of another type, a hashed id field;
* :class:`DayHistory` is a user's same-day history as arrays (times, counter columns' values,
  the distinct values seen), so a new record's ``logcount``/``locincrement`` need no re-run of
  data prep over the day (:meth:`DayHistory.counters`: the counters of
  :func:`~dfp_ray.pipeline.data_prep.add_derived_features`, same sort, same periods);
* :func:`score_rows` encodes and scores with the models' own
  :meth:`~dfp_ray.autoencoder.DFPAutoencoder.score_columns` (the call
  :func:`~dfp_ray.pipeline.inference.score_groups` makes, same row groups and order), applies
  the pipeline's :func:`~dfp_ray.pipeline.post_processing.rule_values`,
  :func:`~dfp_ray.pipeline.filter_detections.detection_mask` and, for detections only,
  :func:`~dfp_ray.pipeline.post_processing.explain`; time features are
  :func:`~dfp_ray.pipeline.data_prep.time_feature_values`, the pipeline's own.

Feature definitions stay in the schema and the pipeline's functions; what is re-expressed here
(field conversion, counters) is checked against the pipeline on Duo and Azure records in
tests/test_serve_dfp_fast.py, and anything outside it goes the pandas way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dfp_ray.autoencoder import FeatureColumns
from dfp_ray.config import DetectionConfig
from dfp_ray.pipeline.data_prep import time_feature_values
from dfp_ray.pipeline.filter_detections import detection_mask
from dfp_ray.pipeline.inference import ScoringGroup, population_of
from dfp_ray.pipeline.population_check import (
    add_population_check,
    population_driver_columns,
    population_rates,
)
from dfp_ray.pipeline.post_processing import explain_columns, rule_values
from dfp_ray.registry.names import GENERIC_SLOT
from dfp_ray.schemas.mapping import _to_datetime
from dfp_ray.schemas.model import MISSING_CATEGORY, FieldSpec, SourceSchema

_PERIOD_NS = {"D": 86_400 * 10**9, "h": 3600 * 10**9, "H": 3600 * 10**9, "min": 60 * 10**9, "T": 60 * 10**9}
_INT64 = 2**63
_TEXT_TYPES = {str, type(None)}
_NESTED = (dict, list, tuple, set)  # a leaf holding one of these is not a plain value: the pandas path
Z_SUFFIX = "_z_loss"


def period_of(ns: int, period: str) -> int:
    """Start (ns, UTC) of the counter period holding ``ns``: data prep's ``dt.floor(period)``."""
    step = _PERIOD_NS[period]
    return ns // step * step


@dataclass
class MappedRows:
    """Mapped records as columns of Python values (None = missing): what ``map_fields`` gives,
    without a frame. ``times`` is the time column as int64 nanoseconds (UTC)."""

    pos: list[int]
    columns: dict[str, list[Any]]
    times: np.ndarray

    def __len__(self) -> int:
        return len(self.pos)

    def take(self, idx: Sequence[int]) -> MappedRows:
        return MappedRows([self.pos[i] for i in idx], {c: [v[i] for i in idx] for c, v in self.columns.items()},
                          self.times[np.asarray(idx, dtype=np.int64)])

    def to_frame(self, schema: SourceSchema) -> pd.DataFrame:
        """The rows as the mapped frame of the pandas path (:data:`.dfp_scoring.POS` included)."""
        frame = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in self.columns.items()})
        frame[schema.time_column] = pd.to_datetime(self.times, utc=True)
        frame["_source_file"] = np.asarray(self.pos, dtype=np.int64)
        return frame[[f.name for f in schema.fields] + ["_source_file"]]


class FastMapper:
    """Raw records -> :class:`MappedRows` by the schema's rules, or None (use the pandas path)."""

    def __init__(self, schema: SourceSchema) -> None:
        self.schema = schema
        self.why_not = self._unsupported(schema)
        self._specs = [(s, self._paths(s)) for s in schema.fields]
        self._patterns = {s.name: re.compile(s.pattern) for s in schema.fields if s.pattern is not None}
        self._bools = {s.name: _BoolWords.of(s) for s in schema.fields if s.type == "bool"}
        # a record with a top-level key of a field's name: map_fields may read that column instead
        self._names = [s.name for s in schema.fields if s.path is not None and s.path != s.name]
        self._dotted_layouts: dict[tuple[str, ...], bool] = {}  # an object's keys -> any of them dotted
        self._compile_paths()

    @staticmethod
    def _unsupported(schema: SourceSchema) -> str | None:
        if schema.counter_period not in _PERIOD_NS:
            return f"counter period {schema.counter_period!r}"
        for s in schema.fields:
            if s.hash is not None or s.type in ("float", "int"):
                return f"field {s.name} ({'hash' if s.hash else s.type})"
        kinds = {s.name: s.type for s in schema.fields}
        weekend = {t.name for t in schema.time_features if t.kind == "weekend"}
        derived = {c.name for c in schema.counters} | {c for t in schema.time_features for c in t.columns} - weekend
        f = schema.features
        if any(c not in kinds or kinds[c] == "datetime" for c in f.categorical):
            return "a categorical feature that is not a string or bool field"
        if any(c not in derived for c in f.numeric):
            return "a numeric feature that is not a counter or time feature"
        if any(c not in weekend and kinds.get(c) != "bool" for c in f.binary):
            return "a binary feature that is not a bool field or weekend"
        return None

    @staticmethod
    def _paths(spec: FieldSpec) -> list[list[str]]:
        paths = spec.join if spec.join is not None else [spec.path or spec.name]
        return [p.split(".") for p in paths]

    def map(self, records: Sequence[Any]) -> MappedRows | None:
        """Column-wise: each record's leaves are read once (every object on a field's path
        checked once per record, not once per field through it), then each field's rules run
        over its whole column; any record it does not take gives None, as before."""
        if self.why_not is not None or not records:
            return None
        schema = self.schema
        raw = self._leaves(records)
        if raw is None:
            return None
        cols: dict[str, list[Any]] = {}
        times_raw: list[Any] = []
        for spec, leaf_ids in self._leaf_of:
            if spec.join is not None:
                parts = [self._texts(raw[j], spec) for j in leaf_ids]
                if any(p is None for p in parts):
                    return None
                sep = spec.separator
                cols[spec.name] = [sep.join([x for x in row if x is not None]) or None for row in zip(*parts, strict=True)]
                continue
            col = raw[leaf_ids[0]]
            if spec.type == "string":
                out = self._texts(col, spec)
                if out is None:
                    return None
                pat = self._patterns.get(spec.name)
                if pat is not None:
                    out = [_with_pattern(pat, v) for v in out]
            elif spec.type == "bool":
                out = self._bools[spec.name].read_all(_without_missing_all(col, spec))
                if out is None:
                    return None
            else:  # datetime: converted below, all at once, by the mapping's own function
                col = _without_missing_all(col, spec)
                if col is None or not all(v is None or type(v) is str or (type(v) is int and -_INT64 < v < _INT64)
                                          or (type(v) is float and math.isfinite(v)) for v in col):
                    return None
                if spec.name != schema.time_column:
                    return None  # a second datetime field: the pandas path
                times_raw = col
                cols[spec.name] = []
                continue
            if spec.required and None in out:
                return None
            cols[spec.name] = out
        time_spec = next(s for s in schema.fields if s.name == schema.time_column)
        origin = pd.Timestamp(time_spec.time_origin) if time_spec.time_origin is not None else None
        if origin is not None and origin.tzinfo is None:
            origin = origin.tz_localize("UTC")
        kinds = {type(v) for v in times_raw}
        if not (kinds <= {int, float} or kinds == {str}):
            return None  # missing times, or text mixed with numbers
        parsed = _to_datetime(pd.Series(times_raw), time_spec.time_format, origin)
        if parsed.isna().any():
            return None
        del cols[schema.time_column]
        return MappedRows(list(range(len(records))), cols, parsed.dt.as_unit("ns").array.asi8.copy())

    def _compile_paths(self) -> None:
        """The fields' paths as a tree: objects to read (parents first) and leaves (per field)."""
        nodes: dict[tuple[str, ...], int] = {(): 0}
        self._nodes: list[tuple[int, str]] = []  # (parent node, key) of each object on a path, parents first
        leaves: dict[tuple[int, str], int] = {}
        self._leaf_of: list[tuple[FieldSpec, list[int]]] = []
        for spec, paths in self._specs:
            ids = []
            for path in paths:
                parent = 0
                for depth in range(1, len(path)):
                    key = tuple(path[:depth])
                    if key not in nodes:
                        nodes[key] = len(nodes)
                        self._nodes.append((parent, path[depth - 1]))
                    parent = nodes[key]
                ids.append(leaves.setdefault((parent, path[-1]), len(leaves)))
            self._leaf_of.append((spec, ids))
        self._leaves_at = list(leaves)  # (node, key) of each leaf

    def _leaves(self, records: Sequence[Any]) -> list[list[Any]] | None:
        """Each leaf's values over the records (None where absent or under a null), or None when
        a record is not a plain object: not a dict, dotted keys in it or in an object on a
        field's path, an object on a path that is not one, a top-level key of a field's name.

        Per record this is dictionary lookups only: whether an object's keys hold a dot is
        decided once per key layout (records of one source share a few), and the leaves are
        checked for nested values once per column by their types."""
        names = self._names
        node_keys = self._nodes
        leaf_keys = self._leaves_at
        dotted = self._has_dotted_key
        if len(self._dotted_layouts) > 4096:  # bounded: sources whose key layouts vary a lot start afresh
            self._dotted_layouts.clear()
        cols: list[list[Any]] = [[] for _ in leaf_keys]
        appends = [c.append for c in cols]
        for rec in records:
            if type(rec) is not dict or dotted(rec):
                return None
            for name in names:  # a column of that name would exist: map_fields may read it
                v = rec.get(name)
                if v is not None and not (type(v) is dict and v):
                    return None
            nodes = [rec]
            for parent, key in node_keys:
                up = nodes[parent]
                v = None if up is None else up.get(key)
                if v is not None and (type(v) is not dict or dotted(v)):
                    return None
                nodes.append(v)
            for (at, key), add in zip(leaf_keys, appends, strict=True):
                up = nodes[at]
                add(None if up is None else up.get(key))
        for col in cols:
            if any(issubclass(t, _NESTED) for t in set(map(type, col))):
                return None
        return cols

    def _has_dotted_key(self, obj: dict) -> bool:
        """Whether a key of ``obj`` holds a dot, decided once per key layout (cached)."""
        layout = tuple(obj)
        bad = self._dotted_layouts.get(layout)
        if bad is None:
            bad = self._dotted_layouts[layout] = "." in "".join(layout)
        return bad

    @staticmethod
    def _texts(col: list[Any], spec: FieldSpec) -> list[Any] | None:
        """A string field's values (text; None for missing or empty), or None for another type."""
        col = _without_missing_all(col, spec)
        if col is None or not set(map(type, col)) <= _TEXT_TYPES:
            return None
        return [v or None for v in col]


def _with_pattern(pat: re.Pattern, v: Any) -> Any:
    if v is None:
        return None
    m = pat.search(v)
    return m.group(1) if m is not None and m.group(1) is not None else v


def _without_missing_all(col: list[Any], spec: FieldSpec) -> list[Any] | None:
    """:func:`_without_missing` of a column (its values as read: containers were refused)."""
    if not spec.missing_values:
        return col
    return [_without_missing(v, spec) for v in col]


_BAD = object()


def _without_missing(v: Any, spec: FieldSpec) -> Any:
    if v is None or not spec.missing_values:
        return v
    return None if str(v).strip() in {str(m) for m in spec.missing_values} else v


@dataclass(frozen=True)
class _BoolWords:
    """A bool field's true/false words, lower-cased once per schema (not once per value)."""

    true: frozenset[str]
    false: frozenset[str]
    has_false: bool  # the field declares false values: anything else is missing

    @classmethod
    def of(cls, spec: FieldSpec) -> _BoolWords:
        def lowered(values: Sequence[Any]) -> frozenset[str]:
            return frozenset(v.lower() for v in values if isinstance(v, str))

        return cls(lowered(spec.true_values), lowered(spec.false_values), bool(spec.false_values))

    def read_all(self, col: list[Any]) -> list[Any] | None:
        """:meth:`read` of a column; None when a value is not text (or missing)."""
        out = [self.read(v) for v in col]
        return None if any(v is _BAD for v in out) else out

    def read(self, v: Any) -> Any:
        if v is None:
            return None if self.has_false else False
        if type(v) is not str:
            return _BAD
        key = v.lower()
        if key in self.true:
            return True
        if not self.has_false:
            return False
        return False if key in self.false else None


@dataclass
class DayHistory:
    """A user's rows of the newest counter period: what the counters of a new row count.

    ``times`` (ns) and ``values`` (per distinct-counter column, mapped values, None = missing)
    are in arrival order (the order the pandas path concatenates them in); ``seen`` holds the
    distinct values of each column (missing as ``"nan"``, as data prep counts it)."""

    times: list[int] = field(default_factory=list)
    values: dict[str, list[Any]] = field(default_factory=dict)
    seen: dict[str, set] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.times)

    @property
    def last(self) -> int | None:
        return max(self.times) if self.times else None

    def counters(self, schema: SourceSchema, times: list[int], values: dict[str, list[Any]]) -> dict[str, list[int]]:
        """The counters of new rows (request order) of this user, after this history."""
        n = len(times)
        order = sorted(range(n), key=times.__getitem__)  # stable, as data prep's sort
        out = {c.name: [0] * n for c in schema.counters}
        period = schema.counter_period
        last = self.last
        if last is not None and min(times) < last:  # out of order: count over history + new, sorted
            h = len(self.times)
            all_t = self.times + times
            all_v = {c: self.values.get(c, [None] * h) + values[c] for c in values}
            rows = sorted(range(h + n), key=all_t.__getitem__)
            for c in schema.counters:
                _count(c, rows, all_t, all_v, period, out[c.name], h)
            return out
        hp = period_of(last, period) if last is not None else None
        for c in schema.counters:
            res = out[c.name]
            cur, count, seen = hp, len(self.times), set(self.seen.get(c.column or "", ()))
            for i in order:
                p = period_of(times[i], period)
                if p != cur:
                    cur, count, seen = p, 0, set()
                if c.kind == "running_count":
                    res[i] = count
                else:
                    v = values[c.column][i]
                    seen.add(MISSING_CATEGORY if v is None else v)
                    res[i] = len(seen)
                count += 1
        return out

    def remember(self, schema: SourceSchema, times: list[int], values: dict[str, list[Any]], cap: int) -> None:
        """Add new rows, keep the newest period's, at most ``cap`` (the latest by time)."""
        all_t = self.times + times
        h = len(self.times)
        cols = [c.column for c in schema.counters if c.column]
        all_v = {c: self.values.get(c, [None] * h) + values[c] for c in cols}
        start = period_of(max(all_t), schema.counter_period)
        keep = [i for i, t in enumerate(all_t) if t >= start]
        if len(keep) > cap:
            keep = sorted(keep, key=all_t.__getitem__)[-cap:]
        self.times = [all_t[i] for i in keep]
        self.values = {c: [v[i] for i in keep] for c, v in all_v.items()}
        self.seen = {c: {MISSING_CATEGORY if x is None else x for x in v} for c, v in self.values.items()}


def _count(c: Any, rows: list[int], times: list[int], values: dict[str, list[Any]], period: str,
           res: list[int], first_new: int) -> None:
    cur, count, seen = None, 0, set()
    for i in rows:
        p = period_of(times[i], period)
        if p != cur:
            cur, count, seen = p, 0, set()
        if c.kind == "running_count":
            value = count
        else:
            v = values[c.column][i]
            seen.add(MISSING_CATEGORY if v is None else v)
            value = len(seen)
        if i >= first_new:
            res[i - first_new] = value
        count += 1


Resolver = Callable[[str], tuple[Any, Any]]  # user -> (DFPAutoencoder, ModelRef); raises when none


@dataclass
class FastScored:
    """What :func:`score_rows` gives: the compact answer columns of scored rows (``cols``, the
    keys of :meth:`.dfp_scoring.SourceRuntime._compact`), and users it could not score, why."""

    cols: dict[str, np.ndarray]
    failed: dict[str, str]
    failed_rows: list[int]  # positions in the MappedRows of the failed users' rows


def supported_model(model: Any, schema: SourceSchema) -> bool:
    """Whether a model's features are all ones :func:`score_rows` computes."""
    known = set(schema.features.categorical) | set(schema.features.numeric) | set(schema.features.binary)
    return set(model.feature_columns) <= known


def score_rows(schema: SourceSchema, det: DetectionConfig, rows: MappedRows, counters: dict[str, list[int]],
               resolve: Resolver, population: Any, generic_name: str, top_k: int,
               population_model: Any = None) -> FastScored:
    """Score mapped rows (counters already computed, one list per counter in row order) as
    :func:`~dfp_ray.pipeline.inference.score_users` scores the prepared frame of those rows."""
    from .dfp_scoring import top_features

    n = len(rows)
    user_col = schema.user_column
    users = rows.columns[user_col]
    order = np.argsort(rows.times, kind="stable")  # prepared frame order: data prep sorts by time
    by_user: dict[str, list[int]] = {}
    for i in order.tolist():
        by_user.setdefault(users[i], []).append(i)
    failed: dict[str, str] = {}
    by_model: dict[str, tuple[Any, Any, list[int]]] = {}
    for user, idx in by_user.items():
        try:
            model, ref = resolve(user)
            lacking = [c for c in model.feature_columns if c not in _produced(schema)]
            if lacking:
                raise ValueError(f"model {ref.label} needs feature columns {lacking} that the schema does not produce")
        except Exception as exc:  # noqa: BLE001 - this user only, as score_users
            failed[user] = f"{type(exc).__name__}: {exc}"
            continue
        by_model.setdefault(ref.label, (model, ref, []))[2].extend(idx)
    failed_rows = [i for u in failed for i in by_user[u]]
    groups = [ScoringGroup(m, label, np.asarray(idx, dtype=np.int64), generic=GENERIC_SLOT in ref.name)
              for label, (m, ref, idx) in by_model.items()]
    if not groups:
        return FastScored({}, failed, failed_rows)
    # the prepared feature values (finalize_feature_types) of every row
    f = schema.features
    values: dict[str, np.ndarray] = {}
    cats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for c in f.categorical:
        text = [MISSING_CATEGORY if v is None else str(v) for v in rows.columns[c]]
        labels: dict[str, int] = {}
        codes = np.fromiter((labels.setdefault(t, len(labels)) for t in text), dtype=np.int64, count=n)
        cats[c] = (codes, np.array([*labels, MISSING_CATEGORY], dtype=object))
        values[c] = np.array(text, dtype=object)
    derived = time_feature_values(rows.times, schema.time_features)
    for name, counts in counters.items():
        derived[name] = np.asarray(counts, dtype=np.float64)
    numeric = {c: np.where(np.isfinite(derived[c]), derived[c], np.nan) for c in f.numeric}
    binary = {c: (np.asarray(derived[c], dtype=bool) if c in derived
                  else np.array([v is True for v in rows.columns[c]], dtype=bool)) for c in f.binary}
    values.update(numeric)
    values.update(binary)
    columns = FeatureColumns(rows=n, categorical=cats, numeric=numeric, binary=binary)
    pooled = population_of(groups, population)
    own_rate, check_rate = population_rates(det, population_model, groups, _produced(schema))
    per_group = [g.model.score_columns(columns, g.rows, alert_rate=det.alert_rate if g.generic else own_rate,
                                       population=pooled, generic=g.generic) for g in groups]
    sizes = [len(g.rows) for g in groups]
    names = list(dict.fromkeys(k for r in per_group for k in r))
    res = {k: np.concatenate([r[k] if k in r else np.full(s, np.nan) for r, s in zip(per_group, sizes, strict=True)])
           for k in names}
    take = np.concatenate([g.rows for g in groups])
    check = add_population_check(res, columns, take, groups, sizes, population_model, check_rate)
    labels_out = np.repeat(np.array([g.label for g in groups], dtype=object), sizes)
    m = len(take)
    raw = res[det.score_column]
    calibrated = det.rule != "fixed" and "alert_threshold" in res
    thr, src, anomaly = rule_values(raw, res.get("alert_threshold") if calibrated else None,
                                    res.get("threshold_source") if calibrated else None,
                                    res.get("anomaly_score") if calibrated else None, det)
    res.update({"alert_threshold": thr, "threshold_source": src, "anomaly_score": anomaly})
    if check is not None:
        res["detected_by"] = check.detected_by(anomaly)
    scored: dict[str, Any] = {c: v[take] for c, v in values.items()}
    scored.update(res)
    detected = detection_mask(scored, det)
    if det.explain_top:
        text = np.full(m, "", dtype=object)
        driver: dict[str, np.ndarray] = {}
        explained = anomaly > 1.0
        if explained.any():
            sel = np.flatnonzero(explained)
            # the explained rows as columns (the frame explain() would be given, without the frame)
            frame = {c: v[sel] for c, v in scored.items() if c.endswith((Z_SUFFIX, "_pred")) or c in values}
            ex = explain_columns(frame, len(sel), schema, det.explain_top)
            if check is not None:  # the check's own detections: the generic model's drivers
                only = np.flatnonzero(res["detected_by"][sel] == "population")
                if len(only):
                    by_pop = population_driver_columns({c: v[only] for c, v in frame.items()},
                                                       check.opinion_at(sel[only]), schema, det.explain_top)
                    for c, v in by_pop.items():
                        ex[c] = ex[c].copy()
                        ex[c][only] = v
            text[sel] = ex["explanation"]
            for i in range(1, det.explain_top + 1):
                for suffix in ("", "_value", "_expected", "_z"):
                    col = np.full(m, np.nan if suffix == "_z" else "", dtype=np.float64 if suffix == "_z" else object)
                    col[sel] = ex[f"driver_{i}{suffix}"]
                    driver[f"driver_{i}{suffix}"] = col
        scored.update(driver)
        scored["explanation"] = text
    pos = np.asarray(rows.pos, dtype=np.int64)[take]
    eid_col = schema.event_id_column
    cols: dict[str, Any] = {
        "_source_file": pos,
        "event_id": (np.array([rows.columns[eid_col][i] for i in take.tolist()], dtype=object) if eid_col
                     else np.full(m, None, dtype=object)),
        "user": np.array([users[i] for i in take.tolist()], dtype=object),
        "timestamp": np.char.add(np.datetime_as_string(rows.times[take].astype("datetime64[ns]").astype(
            "datetime64[ms]"), unit="ms"), "Z").astype(object),
        "model": labels_out,
        "own": np.array([lab.rsplit(":", 1)[0] != generic_name for lab in labels_out.tolist()], dtype=bool),
        "mean_abs_z": res["mean_abs_z"], "max_abs_z": res["max_abs_z"], "detection": detected,
        "threshold": thr, "score_column": np.full(m, det.score_column, dtype=object),
        "anomaly_score": anomaly, "threshold_source": src,
    }
    if check is not None:
        cols["population_score"] = res["population_score"]
        cols["detected_by"] = res["detected_by"]
    if det.explain_top:
        cols["explanation"] = scored["explanation"]
    for c in schema.counters:
        cols[f"counter:{c.name}"] = np.asarray(counters[c.name], dtype=np.int64)[take]
    features = [k[: -len(Z_SUFFIX)] for k in res if k.endswith(Z_SUFFIX)]
    for feat in features:
        cols[f"z:{feat}"] = res[feat + Z_SUFFIX]
    for i, drv in enumerate(top_features(scored, features, top_k, m), start=1):
        for key, v in drv.items():
            cols[f"top{i}:{key}"] = v
    return FastScored(cols, failed, failed_rows)


def _produced(schema: SourceSchema) -> set[str]:
    f = schema.features
    return set(f.categorical) | set(f.numeric) | set(f.binary)
