"""Per-user DFP scoring of raw records, without Ray: the work behind ``POST /dfp/{source}/score``.

Every step is the batch pipeline's own function, called in the pipeline's order, so a record
scored here gets the scores ``dfp-ray run`` gives it when both see the same same-day history:

1. mapping: :func:`dfp_ray.schemas.mapping.flatten_any` + :func:`~dfp_ray.schemas.mapping.map_fields`
   (:meth:`SourceRuntime.map_records`; a record the mapping drops gets its own error);
2. data prep: :func:`dfp_ray.pipeline.data_prep.prepare_features` on the user's same-day
   history plus the new records, so ``logcount``, ``locincrement``, ... count what came
   before (:class:`UserSlot` keeps that history);
3. inference: :func:`dfp_ray.pipeline.inference.score_users` with the user's model, else the
   generic one, resolved through :class:`dfp_ray.registry.ModelCache` as the pipeline does;
4. filter detections: :func:`dfp_ray.pipeline.filter_detections.filter_detections` with the
   pipeline config's detection rule decides each record's ``detection``.

Whatever those functions add (thresholds, explanation columns, time features) reaches the
answer without a change here: the pipeline's detection rule is passed to :func:`score_users`,
and its explanation columns ``driver_<i>...`` are used when present (detections). Without
them the top features are the largest ``<f>_z_loss`` of the record (:func:`top_features`).

The Serve side (:mod:`.dfp_deployment`) and the in-process scorer (:mod:`.dfp_scorer`) hold
the slots; this module only computes.

Why over ~400 lines: the scorer's steps share the per-user slots (same-day history, resolved
models), and the column-wise answer builder is half of it; both read the same frames.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dfp_ray.config import DFPConfig
from dfp_ray.pipeline.data_prep import prepare_features
from dfp_ray.pipeline.filter_detections import filter_detections
from dfp_ray.pipeline.inference import score_users
from dfp_ray.pipeline.population_check import models_to_prefetch, population_check_model
from dfp_ray.registry import ModelCache, ModelRef, ModelRegistry
from dfp_ray.registry.names import GENERIC_LABEL
from dfp_ray.schemas import SourceSchema, load_schema
from dfp_ray.schemas.mapping import flatten_any, map_fields

from .config import DfpServiceConfig, DfpSourceConfig
from .dfp_fast import DayHistory, FastMapper, FastScored, MappedRows, score_rows, supported_model

log = logging.getLogger(__name__)

POS = "_source_file"
"""A mapped row's position in the request (history rows: -1). It rides in the one raw column
``map_fields`` carries through (in the batch pipeline, the file a row came from)."""
_SOURCE_FILE = POS
Z_SUFFIX = "_z_loss"
MAX_EXPLAINED_DROPS = 200  # dropped records whose reason is worked out one by one (error path only)


class NoModelError(LookupError):
    """Neither the user nor the generic model is registered (or the fallback is off)."""


@dataclass
class Resolution:
    """Which model scores a user, and why."""

    user: str
    model: Any | None  # DFPAutoencoder
    ref: ModelRef | None
    own: bool
    reason: str
    user_model_name: str
    generic_model_name: str
    generic: tuple[Any, ModelRef] | None = None  # the generic model (the calibration prior), when found
    checked: float = field(default_factory=time.monotonic)

    def describe(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "model": self.ref.label if self.ref else None,
            "name": self.ref.name if self.ref else None,
            "version": self.ref.version if self.ref else None,
            "own_model": self.own,
            "scored_by": (self.user if self.own else GENERIC_LABEL) if self.ref else None,
            "reason": self.reason,
            "user_model_name": self.user_model_name,
            "generic_model_name": self.generic_model_name,
        }


class UserSlot:
    """What a scorer holds for one user: the model resolution and the user's same-day history.

    ``day`` holds the user's records of the newest counter period (UTC day by default) this slot
    has scored, at most ``max_rows`` (the latest by time), as the times and counter columns'
    values that :func:`prepare_features` counts (:class:`~.dfp_fast.DayHistory`): a new record's
    ``logcount`` is the number of these records earlier than it, plus earlier ones in its own
    request. Both the pandas path and the fast path read and write it.
    """

    def __init__(self, source: str, user: str, resolution: Resolution, max_rows: int) -> None:
        self.source = source
        self.user = user
        self.resolution = resolution
        self.max_rows = max_rows
        self.day = DayHistory()
        self.refreshing = False
        self.on_release: Callable[[UserSlot], None] | None = None

    def __del__(self) -> None:
        """Called by Serve when it unloads the slot (LRU), and by the garbage collector."""
        release, self.on_release = self.on_release, None
        if release is not None:
            try:
                release(self)
            except Exception:  # noqa: BLE001 - never raise from a finaliser
                pass

    @property
    def history_rows(self) -> int:
        return len(self.day)


def period_starts(times: pd.Series, period: str) -> pd.Series:
    """Start (UTC) of the counter period holding each time: data prep's own expression."""
    utc = times.dt.tz_convert("UTC")
    if period in ("D", "h", "H", "min", "T"):
        return utc.dt.floor(period)
    return utc.dt.tz_localize(None).dt.to_period(period).dt.start_time.dt.tz_localize("UTC")


def period_start(when: pd.Timestamp, period: str) -> pd.Timestamp:
    """:func:`period_starts` of one time."""
    return period_starts(pd.Series([when]), period).iloc[0]


class SourceRuntime:
    """One source in one process: its pipeline config, schema, registry and model cache."""

    def __init__(self, name: str, source: DfpSourceConfig, service: DfpServiceConfig, *, max_models: int) -> None:
        # Resolved where the app was built (then this reads no file); a hand-made config is resolved here.
        self.name = name
        self.cfg = DFPConfig.model_validate(source.resolve(name).pipeline)
        self.schema: SourceSchema = load_schema(self.cfg.schema_ref)
        self.service = service
        self.registry = ModelRegistry.from_config(self.cfg)
        self.cache = ModelCache(self.registry, max_models=max_models, refresh_seconds=service.refresh_s, device="cpu")
        self.generic_name = self.registry.model_name(self.cfg.source, None)
        self.lock = threading.Lock()  # one scoring call at a time per source: histories are read and written
        self.fast = FastMapper(self.schema)  # plain records skip the pandas frames (see .dfp_fast)
        self.use_fast = True  # False: every request the pandas way (the benchmark's comparison)

    # ------------------------------------------------------------------ mapping
    def map_records(self, records: Sequence[Any]) -> tuple[pd.DataFrame | MappedRows, dict[int, dict[str, Any]]]:
        """Raw records -> (mapped rows with :data:`POS`, errors by position).

        Plain records (the usual request) are mapped by :class:`~.dfp_fast.FastMapper` into
        :class:`~.dfp_fast.MappedRows`; a request with any record it does not take goes the
        pandas way described next.

        The mapping is the pipeline's (``flatten_any`` + ``map_fields``) over all records at
        once; a record that is not a JSON object, that the mapping drops, or that has no user or
        time gets an error naming the field, and the others go on."""
        try:
            fast = self.fast.map(records) if self.use_fast else None
        except Exception as exc:  # noqa: BLE001 - the pandas path decides and explains
            log.debug("fast mapping failed (%s); mapping with pandas", exc)
            fast = None
        if fast is not None:
            return fast, {}
        errors: dict[int, dict[str, Any]] = {}
        good: list[int] = []
        for i, rec in enumerate(records):  # type check only; the mapping itself is vectorised
            if isinstance(rec, dict):
                good.append(i)
            else:
                errors[i] = record_error("invalid_record", f"the record is not a JSON object (got {_json_type(rec)}); "
                                         f"send a list of {self.name} log records")
        if not good:
            return _empty_mapped(self.schema), errors
        objs = [records[i] for i in good]
        try:
            raw = flatten_any(objs)
            raw[_SOURCE_FILE] = np.asarray(good, dtype=np.int64)
            mapped, report = _quiet(map_fields, raw, self.schema)
        except Exception as exc:  # noqa: BLE001 - one odd record must not fail the others: map one by one
            log.info("mapping %d records together failed (%s); mapping them one by one", len(objs), exc)
            mapped, report = self._map_one_by_one(records, good, errors)
        if report.skipped:
            self._explain_drops(records, good, set(mapped[POS].tolist()), errors)
        if not self._user_and_time_required:  # else map_fields already dropped records without them
            mapped = self._drop_lacking(mapped, errors)
        return mapped, errors

    @property
    def _user_and_time_required(self) -> bool:
        s = self.schema
        return all(f.required for f in s.fields if f.name in (s.user_column, s.time_column))

    def _drop_lacking(self, mapped: pd.DataFrame, errors: dict[int, dict[str, Any]]) -> pd.DataFrame:
        s = self.schema
        no_user = mapped[s.user_column].isna().to_numpy()
        no_time = mapped[s.time_column].isna().to_numpy()
        lacking = no_user | no_time
        if lacking.any():
            for pos, nu in zip(mapped.loc[lacking, POS].tolist(), no_user[lacking].tolist(), strict=True):
                what = s.user_column if nu else s.time_column
                errors[int(pos)] = record_error("invalid_record", f"the record has no '{what}' (the "
                                                f"{'user' if nu else 'time'} column of schema {s.name})",
                                                _field_path(s, what))
            mapped = mapped[~lacking].reset_index(drop=True)
        mapped[s.user_column] = mapped[s.user_column].astype(str)
        return mapped

    def _map_one_by_one(self, records: Sequence[Any], good: list[int], errors: dict[int, dict[str, Any]]):
        from dfp_ray.schemas.mapping import SkipReport

        parts, report = [], SkipReport()
        for i in good:
            try:
                raw = flatten_any([records[i]])
                raw[_SOURCE_FILE] = np.asarray([i], dtype=np.int64)
                part, rep = _quiet(map_fields, raw, self.schema)
            except Exception as exc:  # noqa: BLE001
                errors[i] = record_error("invalid_record", f"the record could not be read: {type(exc).__name__}: {exc}")
                continue
            report = report.merge(rep)
            parts.append(part)
        frames = [p for p in parts if len(p)]
        mapped = pd.concat(frames, ignore_index=True) if frames else _empty_mapped(self.schema)
        if _SOURCE_FILE not in mapped.columns:
            mapped[_SOURCE_FILE] = pd.Series(dtype=np.int64)
        return mapped, report

    def _explain_drops(self, records: Sequence[Any], good: list[int], kept: set[int],
                       errors: dict[int, dict[str, Any]]) -> None:
        """The reason of each dropped record (re-mapped alone: only on the error path, bounded)."""
        dropped = [i for i in good if i not in kept and i not in errors]
        for n, i in enumerate(dropped):
            reason = "the schema's mapping dropped it"
            if n < MAX_EXPLAINED_DROPS:
                try:
                    _, rep = _quiet(map_fields, flatten_any([records[i]]), self.schema)
                    reason = "; ".join(sorted(rep.skipped)) or reason
                except Exception as exc:  # noqa: BLE001
                    reason = f"{type(exc).__name__}: {exc}"
            errors[i] = record_error("invalid_record", f"{reason}; fix the record and send it again",
                                     _reason_field(reason))

    # ------------------------------------------------------------------ models
    def resolve(self, user: str) -> Resolution:
        """The user's latest model, else the generic one (the pipeline's rule, via its ModelCache).

        The generic model is looked up under :func:`registered_model_name(source, None)
        <dfp_ray.registry.registered_model_name>` only, never under a user name. Blocking:
        may query the registry and load a model."""
        source = self.cfg.source
        own_name = self.registry.model_name(source, user)
        found = self.cache.get(source, user)
        generic = self.cache.get(source, None) if self.cfg.fallback_to_generic else None
        if found is not None:
            return Resolution(user, found[0], found[1], True, f"the user has a registered model ({own_name})",
                              own_name, self.generic_name, generic)
        if generic is not None:
            return Resolution(user, generic[0], generic[1], False,
                              f"no model registered under {own_name}; the generic model scores the user",
                              own_name, self.generic_name, generic)
        why = (f"no model registered under {own_name}" + (f" and no generic model ({self.generic_name})"
               if self.cfg.fallback_to_generic else " (fallback_to_generic is off)"))
        return Resolution(user, None, None, False, why + f" in the registry at {self.registry.registry_uri}; run a "
                          "training message first (train_users=all or generic trains the fallback model)",
                          own_name, self.generic_name, None)

    def warm_up(self) -> None:
        """Open the registry and load the generic model now (MLflow's imports and the first query
        cost seconds), so the first request does not pay for them. Never raises: a registry that
        is down at start is reported per record when requests come."""
        try:
            self.cache.get(self.cfg.source, None)
        except Exception as exc:  # noqa: BLE001
            log.warning("source %s: the registry at %s is not usable yet: %s", self.name, self.registry.registry_uri, exc)

    def population_model(self) -> Any:
        """The generic model for the population check (see :func:`population_check_model`)."""
        return population_check_model(self.cache, self.cfg.source, self.cfg.detection)

    def prefetch(self, users: list[str]) -> None:
        """One registry round trip for users whose cache entries are missing or due (ModelCache.prefetch)."""
        try:
            self.cache.prefetch(self.cfg.source, models_to_prefetch(users, self.cfg))
        except Exception as exc:  # noqa: BLE001 - an optimisation; resolve() reports per user
            log.debug("model prefetch failed: %s", exc)

    def release(self, user: str) -> None:
        """A slot was dropped: forget its own model here too (the generic one stays)."""
        self.cache.invalidate(self.cfg.source, user)

    # ------------------------------------------------------------------ scoring
    def score(self, new: pd.DataFrame, slots: dict[str, UserSlot]) -> pd.DataFrame:
        """Score ``new`` (mapped rows with :data:`POS`, users all in ``slots``) against each
        user's history, remember the rows, and return one compact result row per new row.

        Callers hold :attr:`lock` (histories are read and written)."""
        s = self.schema
        if new.empty:
            return _empty_result()
        users = list(dict.fromkeys(new[s.user_column].tolist()))
        history = [self._history_frame(u, slots[u].day, new) for u in users if len(slots[u].day)]
        combined = _concat([*history, new]) if history else new.reset_index(drop=True)
        prepared = _quiet(prepare_features, combined, s)
        fresh = prepared[prepared[POS].to_numpy() >= 0].reset_index(drop=True) if history else prepared

        def resolver(user: str):
            r = slots[user].resolution
            if r.model is None or r.ref is None:
                raise NoModelError(r.reason)
            return r.model, r.ref

        population = None  # the source's, as the batch pipeline reads it: same thresholds for the same user
        if self.cfg.detection.rule == "calibrated":
            found = self.cache.population(self.cfg.source)
            population = found.calibration if found is not None else None
        scored, results = _quiet(score_users, fresh, s, resolver, detection=self.cfg.detection,
                                 population=population, population_model=self.population_model())
        detected = np.zeros(len(scored), dtype=bool)
        if len(scored):
            detections = filter_detections(scored, self.cfg.detection)
            detected = scored.index.isin(detections.index)
        out = self._compact(scored, detected)
        failed = {r.user: r.error for r in results if r.error}
        if failed:  # users whose model could not score: one error row per record
            rows = fresh[fresh[s.user_column].isin(list(failed))]
            out = pd.concat([out, pd.DataFrame({
                POS: rows[POS].to_numpy(), "event_id": _event_ids(rows, s), "user": rows[s.user_column].to_numpy(),
                "error": rows[s.user_column].map(failed).to_numpy(),
            })], ignore_index=True)
        self._remember(new, slots, users)
        return out

    def _history_frame(self, user: str, day: DayHistory, like: pd.DataFrame) -> pd.DataFrame:
        """A user's day history as mapped rows (user, time, counter columns; :data:`POS` -1)."""
        s = self.schema
        h = len(day)
        frame = pd.DataFrame({s.user_column: pd.Series([user] * h, dtype=object),
                              s.time_column: pd.to_datetime(np.asarray(day.times, dtype=np.int64), utc=True)})
        for c, values in day.values.items():
            frame[c] = pd.Series(values, dtype=object)
        frame[POS] = np.int64(-1)
        return frame

    # ------------------------------------------------------------------ the fast path
    def score_fast(self, rows: MappedRows, slots: dict[str, UserSlot]) -> FastScored | None:
        """:meth:`score` for rows the fast mapper mapped (see :mod:`.dfp_fast`): the same
        values without pandas frames; None when a user's model needs features it does not
        compute (then :meth:`score` runs on ``rows.to_frame()``). Callers hold :attr:`lock`."""
        s = self.schema
        users = rows.columns[s.user_column]
        by_user: dict[str, list[int]] = {}
        for i, u in enumerate(users):
            by_user.setdefault(u, []).append(i)
        for u in by_user:
            model = slots[u].resolution.model
            if model is not None and not supported_model(model, s):
                return None
        cols = [c.column for c in s.counters if c.column]
        counters: dict[str, list[int]] = {c.name: [0] * len(rows) for c in s.counters}
        parts = {}
        for u, idx in by_user.items():
            times = rows.times[idx].tolist()
            values = {c: [rows.columns[c][i] for i in idx] for c in cols}
            parts[u] = (times, values)
            for name, got in slots[u].day.counters(s, times, values).items():
                dst = counters[name]
                for i, v in zip(idx, got, strict=True):
                    dst[i] = v

        def resolver(user: str):
            r = slots[user].resolution
            if r.model is None or r.ref is None:
                raise NoModelError(r.reason)
            return r.model, r.ref

        population = None
        if self.cfg.detection.rule == "calibrated":
            found = self.cache.population(self.cfg.source)
            population = found.calibration if found is not None else None
        result = score_rows(s, self.cfg.detection, rows, counters, resolver, population, self.generic_name,
                            self.service.top_features, population_model=self.population_model())
        cap = self.service.history_rows_per_user
        if cap:
            for u, (times, values) in parts.items():
                slots[u].day.remember(s, times, values, cap)
        return result

    def _own(self, labels: np.ndarray) -> np.ndarray:
        """Whether each ``name:version`` is a user's own model (not the generic one)."""
        uniq, inverse = np.unique(labels.astype(str), return_inverse=True)
        own = np.array([u.rsplit(":", 1)[0] != self.generic_name for u in uniq.tolist()], dtype=bool)
        return own[inverse]

    def _compact(self, scored: pd.DataFrame, detected: np.ndarray) -> pd.DataFrame:
        """The columns the answer needs, under stable names (z-scores as ``z:<feature>``)."""
        s = self.schema
        n = len(scored)
        if n == 0:
            return _empty_result()
        det = self.cfg.detection
        cols: dict[str, Any] = {
            POS: scored[POS].to_numpy(dtype=np.int64),
            "event_id": _event_ids(scored, s),
            "user": scored[s.user_column].to_numpy(dtype=object),
            "timestamp": _iso(scored[s.time_column]),
            "model": scored["model_version"].to_numpy(dtype=object),
            "own": self._own(scored["model_version"].to_numpy(dtype=object)),
            "mean_abs_z": scored["mean_abs_z"].to_numpy(dtype=np.float64),
            "max_abs_z": scored["max_abs_z"].to_numpy(dtype=np.float64),
            "detection": detected,
            "threshold": (scored["alert_threshold"].to_numpy(dtype=np.float64) if "alert_threshold" in scored.columns
                          else np.full(n, float(det.threshold))),
            "score_column": np.full(n, det.score_column, dtype=object),
        }
        for extra in ("anomaly_score", "threshold_source", "explanation", "population_score", "detected_by"):
            if extra in scored.columns:
                cols[extra] = scored[extra].to_numpy()
        for c in s.counters:  # what the record's day looked like to data prep
            if c.name in scored.columns:
                cols[f"counter:{c.name}"] = scored[c.name].to_numpy()
        features = [c[: -len(Z_SUFFIX)] for c in scored.columns if c.endswith(Z_SUFFIX)]
        for f in features:
            cols[f"z:{f}"] = scored[f + Z_SUFFIX].to_numpy(dtype=np.float64)
        for i, driver in enumerate(top_features(scored, features, self.service.top_features), start=1):
            for key, values in driver.items():
                cols[f"top{i}:{key}"] = values
        return pd.DataFrame(cols)

    def _remember(self, new: pd.DataFrame, slots: dict[str, UserSlot], users: list[str]) -> None:
        """Each user's day history gets its new rows; it keeps the rows of its newest counter
        period, at most ``history_rows_per_user`` (the latest by time; :meth:`DayHistory.remember`)."""
        s = self.schema
        cap = self.service.history_rows_per_user
        if cap == 0:
            return
        cols = [c.column for c in s.counters if c.column]
        times = new[s.time_column].dt.as_unit("ns").array.asi8
        values = {c: [None if _missing(v) else v for v in new[c].tolist()] for c in cols}
        if len(users) == 1:
            slots[users[0]].day.remember(s, times.tolist(), values, cap)
            return
        for user, idx in new.groupby(s.user_column, sort=False).indices.items():  # per user, not per row
            slots[user].day.remember(s, times[idx].tolist(), {c: [v[i] for i in idx] for c, v in values.items()}, cap)


def top_features(scored: pd.DataFrame | dict[str, Any], features: list[str], k: int,
                 n: int | None = None) -> list[dict[str, np.ndarray]]:
    """The ``k`` features that drove each row's score: ``feature``, ``z``, ``value``, ``expected``.

    Taken from the pipeline's explanation columns (``driver_<i>``, ``driver_<i>_z``,
    ``driver_<i>_value``, ``driver_<i>_expected``) where it wrote them, else (and for rows it
    left unexplained) the ``k`` largest ``<f>_z_loss`` of the row, vectorised over rows.
    ``scored``: a scored frame, or its columns as arrays (then ``n`` is the row count)."""
    n = len(scored) if n is None else n
    k = min(k, len(features))
    if k == 0 or n == 0:
        return []
    z = np.column_stack([np.asarray(scored[f + Z_SUFFIX], dtype=np.float64) for f in features])
    order = np.argsort(-np.nan_to_num(z, nan=-np.inf), axis=1, kind="stable")[:, :k]
    names = np.asarray(features, dtype=object)
    value = np.column_stack([_display(scored[f]) if f in scored else np.full(n, None, dtype=object)
                             for f in features])
    expected = np.column_stack([_display(scored[f + "_pred"]) if f + "_pred" in scored
                                else np.full(n, None, dtype=object) for f in features])
    out = []
    for i in range(k):
        idx = order[:, i : i + 1]
        driver = {
            "feature": names[idx[:, 0]],
            "z": np.take_along_axis(z, idx, axis=1)[:, 0],
            "value": np.take_along_axis(value, idx, axis=1)[:, 0],
            "expected": np.take_along_axis(expected, idx, axis=1)[:, 0],
        }
        col = f"driver_{i + 1}"
        if col in scored:  # the pipeline explained these rows: its words win
            given = np.asarray(scored[col], dtype=object)
            have = np.array([not _missing(v) and len(str(v)) > 0 for v in given.tolist()], dtype=bool)
            if have.any():
                driver["feature"] = np.where(have, given, driver["feature"])
                for key, suffix in (("z", "_z"), ("value", "_value"), ("expected", "_expected")):
                    if col + suffix in scored:
                        theirs = np.asarray(scored[col + suffix], dtype=np.float64 if key == "z" else object)
                        driver[key] = np.where(have, theirs, driver[key])
        out.append(driver)
    return out


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and v != v)


# ---------------------------------------------------------------------- answer formatting
Part = pd.DataFrame | dict[str, Any]
"""A scoring call's answer: a frame (the pandas path: scored rows and error rows, ``error`` set),
or columns as arrays (the fast path: compact scored columns, or error rows with ``error``)."""


def result_records(result: Part | list[Part], errors: dict[int, dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """One answer object per request record, in request order (scored ones and errors)."""
    with gc_paused():
        return _result_records(result, errors, n)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection for the duration (then it is back as it was).

    Building answers (or decoding a request) makes a few small containers per record and no
    reference cycles; at thousands of records a call that triggers collections of the
    youngest generations every 700 allocations, which cost more than the building
    (measured: the answer of 3,200 records 10 -> 4 us per record). Nothing is leaked:
    collections resume afterwards."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _result_records(result: Part | list[Part], errors: dict[int, dict[str, Any]], n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any] | None] = [None] * n
    for part in (result if isinstance(result, list) else [result]):
        if isinstance(part, pd.DataFrame):
            if not len(part):
                continue
            if "error" in part.columns:
                scored, failed = part[part["error"].isna()], part[part["error"].notna()]
            else:
                scored, failed = part, part.iloc[0:0]
            if len(scored):
                _scored_records({c: scored[c].to_numpy() for c in scored.columns}, len(scored), out)
            if len(failed):
                _error_records({c: failed[c].to_numpy() for c in (POS, "event_id", "user", "error")}, out)
        elif "error" in part:
            _error_records(part, out)
        elif len(part.get(POS, ())):
            _scored_records(part, len(part[POS]), out)
    for pos, err in errors.items():
        out[pos] = {"index": pos, "event_id": None, "user": None, "error": err}
    for pos, rec in enumerate(out):
        if rec is None:  # cannot happen; never answer a hole
            out[pos] = {"index": pos, "event_id": None, "user": None,
                        "error": record_error("scoring_failed", f"record {pos} was not scored (a bug; please report it)")}
    return out  # type: ignore[return-value]


def _error_records(failed: dict[str, Any], out: list[dict[str, Any] | None]) -> None:
    for pos, eid, user, msg in zip(np.asarray(failed[POS]).tolist(), list(failed["event_id"]), list(failed["user"]),
                                   list(failed["error"]), strict=True):
        out[int(pos)] = {"index": int(pos), "event_id": eid, "user": user,
                         "error": record_error("no_model" if "no model" in str(msg) else "scoring_failed", str(msg))}


def _scored_records(scored: dict[str, Any], n: int, out: list[dict[str, Any] | None]) -> None:
    """The answer objects of scored rows (compact columns), built column-wise (one comprehension
    per part, not per record and part: building them is most of the answer's cost)."""
    cnames = [c[len("counter:"):] for c in scored if c.startswith("counter:")]
    counters: list[Any] = [{}] * n
    if cnames:
        block = [np.asarray(scored[f"counter:{c}"]) for c in cnames]
        if all(np.issubdtype(b.dtype, np.integer) for b in block):
            values = np.column_stack(block).astype(np.int64).tolist()
        else:
            values = [[int(v) if v == v else None for v in row]
                      for row in np.column_stack([b.astype(np.float64) for b in block]).tolist()]
        counters = [dict(zip(cnames, row, strict=True)) for row in values]
    zfeat = [c[2:] for c in scored if c.startswith("z:")]
    zrows = (np.column_stack([np.asarray(scored[f"z:{f}"], dtype=np.float64) for f in zfeat]).tolist() if zfeat
             else [[]] * n)
    zscores = [dict(zip(zfeat, row, strict=True)) for row in zrows]
    k = 0
    while f"top{k + 1}:feature" in scored:
        k += 1
    per_slot = [[{"feature": f, "z": z, "value": v, "expected": e} for f, z, v, e in zip(
        *(np.asarray(scored[f"top{i}:{key}"]).tolist() for key in ("feature", "z", "value", "expected")), strict=True)]
        for i in range(1, k + 1)]
    tops = [list(t) for t in zip(*per_slot, strict=True)] if per_slot else [[] for _ in range(n)]
    columns = [np.asarray(scored[c]).tolist() for c in (POS, "event_id", "user", "timestamp", "model", "own",
                                                        "mean_abs_z", "max_abs_z", "detection", "threshold",
                                                        "score_column")]
    records = [
        {"index": pos, "event_id": eid, "user": user, "timestamp": ts, "model": model,
         "scored_by": user if own else GENERIC_LABEL, "z_scores": z, "mean_abs_z": mean, "max_abs_z": mx,
         "counters": cnt, "detection": det, "threshold": thr, "score_column": col, "top_features": top}
        for pos, eid, user, ts, model, own, mean, mx, det, thr, col, z, cnt, top
        in zip(*columns, zscores, counters, tops, strict=True)
    ]
    for name in ("anomaly_score", "threshold_source", "explanation", "population_score", "detected_by"):
        if name in scored:
            for rec, value in zip(records, np.asarray(scored[name]).tolist(), strict=True):
                rec[name] = None if value != value else value  # NaN (a row not checked): null
    for pos, rec in zip(columns[0], records, strict=True):
        out[pos] = rec


def record_error(code: str, detail: str, fld: str | None = None) -> dict[str, Any]:
    return {"code": code, "detail": detail, "field": fld}


# ---------------------------------------------------------------------- helpers
_QUIET = threading.local()


class _QuietInServe(logging.Filter):
    """Drops the mapping's per-batch "skipped N records" warnings while a request is mapped
    here: a request is not a batch, and each dropped record gets its own error instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_QUIET, "on", False)


logging.getLogger("dfp_ray.schemas.mapping").addFilter(_QuietInServe())
# Histories and new rows are concatenated with some columns all missing in one part.
warnings.filterwarnings("ignore", message=".*concatenation with empty or all-NA entries.*", category=FutureWarning)


def _quiet(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a pipeline step with its per-batch log warnings off (this thread only)."""
    _QUIET.on = True
    try:
        return fn(*args, **kwargs)
    finally:
        _QUIET.on = False


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True)


def _empty_mapped(schema: SourceSchema) -> pd.DataFrame:
    frame = pd.DataFrame({f.name: pd.Series(dtype=object) for f in schema.fields})
    frame[_SOURCE_FILE] = pd.Series(dtype=np.int64)
    return frame


def _empty_result() -> pd.DataFrame:
    return pd.DataFrame({POS: pd.Series(dtype=np.int64)})


def _event_ids(frame: pd.DataFrame, schema: SourceSchema) -> np.ndarray:
    col = schema.event_id_column
    if col and col in frame.columns:
        ids = frame[col].astype(object)
        return ids.where(ids.notna(), None).to_numpy(dtype=object)
    return np.full(len(frame), None, dtype=object)


def _iso(times: pd.Series) -> np.ndarray:
    """ISO-8601 UTC with milliseconds and Z, vectorised."""
    utc = times.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ms]")
    return np.char.add(np.datetime_as_string(utc, unit="ms"), "Z").astype(object)


def _display(values: pd.Series | np.ndarray) -> np.ndarray:
    """JSON-ready values (Python floats, bools, str; NaN becomes null when serialised)."""
    if isinstance(values, pd.Series):
        text = values.dtype == object or isinstance(values.dtype, pd.StringDtype)
        arr = values.to_numpy(dtype=object)
    else:
        text = values.dtype == object
        arr = values.astype(object)
    if text:
        missing = pd.isna(arr)
        if missing.any():
            arr[missing] = None
    return arr


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


_PATH_IN_REASON = re.compile(r"\(([^()]+)\)\s*$")


def _reason_field(reason: str) -> str | None:
    """The raw field a mapping reason names: ``missing required 'username' (user.name)`` -> ``user.name``."""
    first = reason.split(";")[0]
    m = _PATH_IN_REASON.search(first)
    return m.group(1) if m else None


def _field_path(schema: SourceSchema, column: str) -> str | None:
    for f in schema.fields:
        if f.name == column:
            return f.path or column
    return column
