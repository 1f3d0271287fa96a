"""The population check (part of inference): the generic model's opinion of the events of users
who have a model of their own (``detection.population_share``, docs/scoring.md section 2b).

A user's own model learns that user's habits, and the more varied they are, the more it forgives
a never-seen value. The generic model knows which values are new for *everyone*. Each event of a
user model is also scored by the generic model, gated by the user's model (a feature counts only
where it is unusual for the user too), and the two split the alert rate; an event either flags
is a detection. :func:`~dfp_ray.pipeline.inference.score_groups` and the Serve fast path
(:func:`dfp_ray.serve.dfp_fast.score_rows`) call the same functions here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dfp_ray.autoencoder import DFPAutoencoder, FeatureColumns
from dfp_ray.config import DetectionConfig, DFPConfig
from dfp_ray.registry import ModelCache
from dfp_ray.schemas import SourceSchema

if TYPE_CHECKING:
    from dfp_ray.pipeline.inference import ScoringGroup

log = logging.getLogger(__name__)
_WARNED: set[tuple[str, ...]] = set()


def models_to_prefetch(users: list[str], cfg: DFPConfig) -> list[str | None]:
    """The users' models to look up before scoring them, and the generic one (None) when it may
    score anyone: the fallback (``fallback_to_generic``) or the population check."""
    wanted: list[str | None] = list(users)
    if cfg.fallback_to_generic or population_check_on(cfg.detection):
        wanted.append(None)
    return wanted


def population_check_on(detection: DetectionConfig) -> bool:
    """Whether the rule asks for the population check (it runs when a generic model exists)."""
    return detection.rule == "calibrated" and detection.population_share > 0


def population_check_model(cache: ModelCache, source: str, detection: DetectionConfig) -> DFPAutoencoder | None:
    """The generic model for the population check, as the pipeline's user actors and the Serve
    scorer both take it from their model cache: None when the rule asks for no check, none is
    registered, or the registry does not answer (logged; each user's own model then gets the
    whole alert rate, and scoring goes on)."""
    if not population_check_on(detection):
        return None
    try:
        found = cache.get(source, None)
    except Exception as exc:  # noqa: BLE001 - a second opinion; scoring goes on without it
        log.warning("source %s: no population check this call, the generic model is not loadable: %s", source, exc)
        return None
    return found[0] if found is not None else None


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
        not population_check_on(detection) or population_model is None
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
        drivers = population_driver_columns(out.iloc[rows], self.opinion_at(rows), schema, top)
        for c, driven in drivers.items():
            values = out[c].to_numpy(copy=True)
            values[rows] = driven
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


def population_driver_columns(
    rows: pd.DataFrame | Mapping[str, np.ndarray], opinion: dict[str, np.ndarray], schema: SourceSchema, top: int
) -> dict[str, np.ndarray]:
    """:func:`~dfp_ray.pipeline.post_processing.explain` columns (arrays) of ``rows`` (their
    feature values, a frame or columns) with the generic model's z-scores and expectations
    ``opinion``; each explanation starts with ``new for the population:``. One definition for the
    pipeline's frames and the per-request scorer's arrays (no frame built and read back)."""
    from dfp_ray.pipeline.post_processing import Z_SUFFIX, explain_columns

    n = len(next(iter(opinion.values()))) if opinion else 0
    features = [k[: -len(Z_SUFFIX)] for k in opinion if k.endswith(Z_SUFFIX)]
    frame: dict[str, np.ndarray] = {f: np.asarray(rows[f]) for f in features if f in rows}
    frame.update({k: v for k, v in opinion.items() if k.endswith((Z_SUFFIX, "_pred"))})
    ex = explain_columns(frame, n, schema, top)
    ex["explanation"] = np.array(["new for the population: " + str(t) for t in ex["explanation"].tolist()], dtype=object)
    return ex
