"""Inference (Morpheus's ``DFPInference``): score each user's rows with the user's model, else the generic one.

:func:`score_users` resolves every user's model once and scores the rows that share a model
in one call; :func:`score_groups` scores one frame with many models into one output frame.

At inference a user actor holds rows of hundreds of users, most scored by their own model.
Decoding the feature columns is pandas work with a fixed cost per call; done per model it
dominated inference (~15 ms per model, so ~15 s for 1,000 users). Here the frame's features
are decoded once (:class:`~dfp_ray.autoencoder.FeatureColumns`), every model encodes and
scores its rows with numpy/torch only, and the result columns of all groups are written into
one set of arrays, so the output DataFrame is built once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from dfp_ray.autoencoder import DFPAutoencoder, FeatureColumns
from dfp_ray.autoencoder.calibration import Calibration, pool
from dfp_ray.config import DetectionConfig
from dfp_ray.pipeline.frames import PreparedFrame, ScoredFrame
from dfp_ray.pipeline.post_processing import add_explanations, add_postprocessing, apply_rule
from dfp_ray.registry import ModelRef
from dfp_ray.registry.names import GENERIC_SLOT
from dfp_ray.results import InferResult
from dfp_ray.schemas import SourceSchema

log = logging.getLogger(__name__)
_WARNED: set[tuple[str, ...]] = set()

ModelResolver = Callable[[str], tuple[DFPAutoencoder, ModelRef]]
"""A user's name -> the model that scores the user and its registry reference; raises when none."""


@dataclass
class ScoringGroup:
    """Rows scored by one model: ``rows`` are positions in the prepared frame."""

    model: DFPAutoencoder
    label: str  # model_version: name:version
    rows: np.ndarray
    generic: bool = False  # the generic model: calibrated by its own held-out rows


def _group(g: ScoringGroup | tuple) -> ScoringGroup:
    return g if isinstance(g, ScoringGroup) else ScoringGroup(*g)


def score_users(
    prepared: PreparedFrame,
    schema: SourceSchema,
    resolve: ModelResolver,
    *,
    worker: int = -1,
    detection: DetectionConfig | None = None,
    population: Calibration | None = None,
    population_model: DFPAutoencoder | None = None,
) -> tuple[ScoredFrame, list[InferResult]]:
    """Score every row of ``prepared`` (features computed, default index), user by user.

    Each user's model is resolved once; rows that share a model (e.g. every user on the
    generic model) are scored in one call, so thousands of users with a few events each cost
    a few model calls, not thousands. A user whose model cannot be resolved, or needs columns
    the frame lacks, is reported in its result and left out of the output. ``detection`` is
    the rule whose threshold columns and explanations the rows get; ``population``: the
    source's pooled user-model held-out scores the user models' thresholds blend with (see
    :func:`score_groups`; :meth:`dfp_ray.registry.ModelCache.population` reads it);
    ``population_model``: the source's generic model, for the population check of the rows
    scored by their user's own model (see :func:`add_population_check`).
    """
    available = set(prepared.columns)
    users = prepared[schema.user_column].astype(str)
    results: list[InferResult] = []
    by_model: dict[str, tuple[DFPAutoencoder, ModelRef, list[np.ndarray]]] = {}
    for user, idx in users.groupby(users, sort=False).indices.items():
        try:
            model, ref = resolve(user)
            lacking = [c for c in model.feature_columns if c not in available]
            if lacking:
                raise ValueError(f"model {ref.label} needs feature columns {lacking} that the schema does not produce")
        except Exception as exc:  # no model, registry down, another feature set: this user only
            results.append(InferResult(user=user, rows=len(idx), model_version=None, seconds=0.0, worker=worker,
                                       error=f"{type(exc).__name__}: {exc}"))
            continue
        by_model.setdefault(ref.label, (model, ref, []))[2].append(idx)
        results.append(InferResult(user=user, rows=len(idx), model_version=ref.label, seconds=0.0, worker=worker))
    groups = [
        ScoringGroup(model, label, np.concatenate(parts), generic=GENERIC_SLOT in ref.name)
        for label, (model, ref, parts) in by_model.items()
    ]
    scored = score_groups(prepared, schema, groups, detection=detection, population=population,
                          population_model=population_model)
    return scored, results


def population_of(groups: list[ScoringGroup], population: Calibration | None = None) -> Calibration | None:
    """``population`` (the source's, stored in the registry: the same whoever is scored
    beside a user) when given, else the pooled held-out scores of the user models among
    ``groups`` (a whole data set scored at once, as the quality benchmark does)."""
    if population is not None:
        return population
    return pool([g.model.calibration for g in groups if not g.generic])


def score_groups(
    prepared: pd.DataFrame,
    schema: SourceSchema,
    groups: list[ScoringGroup] | list[tuple],
    *,
    detection: DetectionConfig | None = None,
    population: Calibration | None = None,
    population_model: DFPAutoencoder | None = None,
    detected_at: datetime | None = None,
) -> pd.DataFrame:
    """Score ``prepared`` (features computed, default RangeIndex) group by group.

    ``groups``: :class:`ScoringGroup` (or ``(model, model_version label, row positions[,
    generic])`` tuples); rows in no group are left out. User models read their thresholds from
    ``population`` (the source's pooled user-model held-out scores; without it, the pool of
    the user models in ``groups``), blended with their own as their history grows; the
    generic model from its own. ``population_model`` (the generic model) also scores the rows
    of the user models: the population check (:func:`add_population_check`). Returns the
    scored rows (input columns, result columns, the detection rule's ``alert_threshold`` /
    ``anomaly_score`` / ``threshold_source``, with the check ``population_score`` /
    ``population_threshold`` / ``detected_by``, explanations of the detections, ``event_time``,
    ``model_version``) in time order (stable).
    """
    detection = detection or DetectionConfig()
    if not groups:
        return prepared.iloc[0:0]
    groups = [_group(g) for g in groups]
    pooled = population_of(groups, population)
    own_rate, check_rate = population_rates(detection, population_model, groups, prepared.columns)
    models = [g.model for g in groups] + ([population_model] if check_rate and population_model is not None else [])
    columns = FeatureColumns.from_frame(  # every feature any of the models uses, decoded once
        prepared,
        *(list(dict.fromkeys(c for m in models for c in getattr(m, group))) for group in ("categorical", "numeric", "binary")),
    )
    sizes = [len(g.rows) for g in groups]
    per_group = [
        g.model.score_columns(columns, g.rows, alert_rate=detection.alert_rate if g.generic else own_rate,
                              population=pooled, generic=g.generic)
        for g in groups
    ]
    names = list(dict.fromkeys(name for result in per_group for name in result))
    # Groups are contiguous in the output, so each column is the concatenation of its parts;
    # a model with another feature set contributes NaN for the columns it lacks.
    results = {
        name: np.concatenate(
            [result[name] if name in result else np.full(size, np.nan) for result, size in zip(per_group, sizes, strict=True)]
        )
        for name in names
    }
    rows = np.concatenate([g.rows for g in groups])
    check = add_population_check(results, columns, rows, groups, sizes, population_model, check_rate)
    versions = np.repeat(np.array([g.label for g in groups], dtype=object), sizes)
    out = pd.concat(
        [prepared.take(rows).reset_index(drop=True), pd.DataFrame(results, copy=False)], axis=1
    )
    out = apply_rule(out, detection)
    if check is not None:
        out["detected_by"] = check.detected_by(out["anomaly_score"].to_numpy(dtype=np.float64))
    out = add_explanations(out, detection, schema)
    if check is not None and detection.explain_top:
        check.explain_into(out, schema, detection.explain_top)
    out = add_postprocessing(out, model_version=pd.Series(versions, index=out.index), detected_at=detected_at)
    return out.sort_values(schema.time_column, kind="stable").reset_index(drop=True)


def population_rates(
    detection: DetectionConfig, population_model: DFPAutoencoder | None, groups: list[ScoringGroup],
    available: Iterable[str],
) -> tuple[float, float]:
    """``(alert rate of the user models, alert rate of the population check)``.

    The check runs with the calibrated rule when a calibrated generic model is given and some
    rows are scored by a user's own model; the two then split ``alert_rate`` by
    ``population_share``, so an event flagged by either keeps the false-positive rate at about
    ``alert_rate``. Otherwise the user models get all of it and the check's rate is 0; also when
    the generic model needs a feature column not in ``available`` (a model of another schema:
    logged, the rows are still scored by their own models).
    """
    share = detection.population_share
    if (
        detection.rule != "calibrated" or share <= 0 or population_model is None
        or getattr(population_model, "calibration", None) is None or all(g.generic for g in groups)
    ):
        return detection.alert_rate, 0.0
    lacking = sorted(set(population_model.feature_columns) - set(available))
    if lacking:
        if tuple(lacking) not in _WARNED:  # once per process and feature set, not once per batch
            _WARNED.add(tuple(lacking))
            log.warning("no population check: the generic model needs feature columns %s that the schema does "
                        "not produce; retrain it (train_users=generic) with the current schema", lacking)
        return detection.alert_rate, 0.0
    return detection.alert_rate * (1.0 - share), detection.alert_rate * share


@dataclass
class PopulationCheck:
    """The generic model's opinion of the rows scored by a user's own model.

    ``checked``: per output row, whether the generic model scored it (a user model's row);
    ``opinion``: the generic model's result columns for those rows, in output order;
    ``own_score``: the user models' ``anomaly_score`` before the check;
    ``population_score``: the generic model's, NaN on rows not checked.
    """

    checked: np.ndarray
    opinion: dict[str, np.ndarray]
    own_score: np.ndarray
    population_score: np.ndarray

    def detected_by(self, anomaly: np.ndarray) -> np.ndarray:
        """Per row: ``model`` (the model in ``model_version`` flagged it), ``population`` (only
        the generic model's check did), ``model+population``, or ``""`` (no detection)."""
        detected = anomaly > 1.0
        # a row of an uncalibrated model took no part in the check (its detection is the fixed rule's)
        by_pop = (np.nan_to_num(self.population_score, nan=0.0) > 1.0) & np.isfinite(self.own_score)
        by_own = ~(np.nan_to_num(self.own_score, nan=np.inf) <= 1.0)
        return np.select([detected & by_pop & ~by_own, detected & by_pop & by_own, detected],
                         ["population", "model+population", "model"], "").astype(object)

    def opinion_at(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The generic model's columns at output positions ``rows`` (all of them checked)."""
        where = np.cumsum(self.checked) - 1
        return {k: v[where[rows]] for k, v in self.opinion.items()}

    def explain_into(self, out: pd.DataFrame, schema: SourceSchema, top: int) -> None:
        """Re-explain, in place, the detections only the check made (``out`` in output order):
        their drivers are the generic model's z-scores (what is new for everyone)."""
        rows = np.flatnonzero(self.detected_by(out["anomaly_score"].to_numpy(dtype=np.float64)) == "population")
        if not len(rows):
            return
        drivers = population_drivers(out.iloc[rows], self.opinion_at(rows), schema, top)
        for c in drivers.columns:
            values = out[c].to_numpy(copy=True)
            values[rows] = drivers[c].to_numpy()
            out[c] = values


def add_population_check(
    results: dict[str, np.ndarray], columns: FeatureColumns, rows: np.ndarray, groups: list[ScoringGroup],
    sizes: list[int], population_model: DFPAutoencoder | None, rate: float,
) -> PopulationCheck | None:
    """The population check, in place on ``results`` (result columns in output order: the
    groups' rows concatenated): the generic model scores every row of a user model at alert
    rate ``rate``; ``population_score`` / ``population_threshold`` are its gated score over
    its threshold, and the threshold (NaN on rows the generic model scored as their only
    model), and ``anomaly_score`` becomes the larger of the two: a detection is an event
    either flags.

    **Gated:** a feature counts for the check only where it is unusual for the user too (the
    user model's z of it at least :data:`POPULATION_GATE_Z`); elsewhere its generic z is 0 in
    the check's ``mean_abs_z``. So what is new for everyone but this user's habit (a second
    home city, events an analyst marked benign and the user's model has since learnt) is not
    flagged; the check only lowers the generic model's score, so its false-positive rate stays
    under its share of the alert rate.

    Why: a user model learns one user's habits, and the more varied they are, the more a
    never-seen value is forgiven (the loss spread it is measured against grows). The generic
    model knows which values are new for *everyone* (a foreign country, an attacker's
    browser), while a failure reason or a late evening are common across users; measured in
    docs/scoring.md. None when ``rate`` is 0 (no check) or the user models are uncalibrated.
    """
    if rate <= 0 or population_model is None or "anomaly_score" not in results:
        return None
    checked = np.repeat(np.array([not g.generic for g in groups], dtype=bool), sizes)
    opinion = population_model.score_columns(columns, rows[checked], alert_rate=rate, generic=True)
    if "anomaly_score" not in opinion:
        return None
    opinion = _gated(opinion, results, checked)
    n = len(checked)
    pop_score = np.full(n, np.nan)
    pop_threshold = np.full(n, np.nan)
    pop_score[checked] = opinion["anomaly_score"]
    pop_threshold[checked] = opinion["alert_threshold"]
    own = np.asarray(results["anomaly_score"], dtype=np.float64)
    both = np.isfinite(own) & np.isfinite(pop_score)
    results["anomaly_score"] = np.where(both, np.fmax(own, pop_score), own)
    results["population_score"] = pop_score
    results["population_threshold"] = pop_threshold
    return PopulationCheck(checked=checked, opinion=opinion, own_score=own, population_score=pop_score)


POPULATION_GATE_Z = 1.0
"""A generic-model feature z counts for the population check only where the user model's z of
the same feature is at least this (one typical loss spread: unusual for the user as well)."""


def _gated(opinion: dict[str, np.ndarray], results: dict[str, np.ndarray], checked: np.ndarray) -> dict[str, np.ndarray]:
    """The generic model's columns with each feature's z set to 0 where the user's own model
    finds that feature usual, and ``mean_abs_z`` / ``max_abs_z`` / ``anomaly_score`` recomputed
    from the gated z (same threshold)."""
    from dfp_ray.pipeline.post_processing import Z_SUFFIX

    zcols = [k for k in opinion if k.endswith(Z_SUFFIX)]
    if not zcols:
        return opinion
    out = dict(opinion)
    for k in zcols:
        own = results.get(k)
        if own is None:  # the user models lack the feature: nothing says it is usual for the user
            continue
        out[k] = np.where(np.asarray(own, dtype=np.float64)[checked] >= POPULATION_GATE_Z, opinion[k], 0.0)
    z = np.column_stack([out[k] for k in zcols])
    out["mean_abs_z"] = z.mean(axis=1)
    out["max_abs_z"] = z.max(axis=1)
    threshold = np.asarray(opinion["alert_threshold"], dtype=np.float64)
    out["anomaly_score"] = out["mean_abs_z"] / threshold
    return out


def population_drivers(
    rows: pd.DataFrame | dict[str, np.ndarray], opinion: dict[str, np.ndarray], schema: SourceSchema, top: int
) -> pd.DataFrame:
    """:func:`~dfp_ray.pipeline.post_processing.explain` of ``rows`` (their feature values)
    with the generic model's z-scores and expectations ``opinion``; the explanation starts with
    ``new for the population:``. One definition for the pipeline's frames and the per-request
    scorer's arrays."""
    from dfp_ray.pipeline.post_processing import Z_SUFFIX, explain

    n = len(next(iter(opinion.values()))) if opinion else 0
    features = [k[: -len(Z_SUFFIX)] for k in opinion if k.endswith(Z_SUFFIX)]
    frame: dict[str, np.ndarray] = {f: np.asarray(rows[f]) for f in features if f in rows}
    frame.update({k: v for k, v in opinion.items() if k.endswith((Z_SUFFIX, "_pred"))})
    ex = explain(pd.DataFrame(frame, index=range(n)), schema, top)
    ex["explanation"] = "new for the population: " + ex["explanation"].astype(str)
    return ex
