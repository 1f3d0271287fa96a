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

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from dfp_ray.autoencoder import DFPAutoencoder, FeatureColumns
from dfp_ray.autoencoder.calibration import Calibration, pool
from dfp_ray.config import DetectionConfig
from dfp_ray.pipeline.frames import PreparedFrame, ScoredFrame
from dfp_ray.pipeline.population_check import add_population_check, population_rates
from dfp_ray.pipeline.post_processing import add_explanations, add_postprocessing, apply_rule
from dfp_ray.registry import ModelRef
from dfp_ray.registry.names import GENERIC_SLOT
from dfp_ray.results import InferResult
from dfp_ray.schemas import SourceSchema

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
    scored by their user's own model (see :func:`~dfp_ray.pipeline.population_check.add_population_check`).
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
    of the user models: the population check (:mod:`dfp_ray.pipeline.population_check`).
    Returns the scored rows (input columns, result columns, the detection rule's ``alert_threshold`` /
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
