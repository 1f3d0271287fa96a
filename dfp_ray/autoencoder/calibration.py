"""Calibration: turn a model's raw score into an alert threshold that means the same for every model.

Morpheus flags ``mean_abs_z > 2`` for every model. Measured on data we did not generate, that
rule flags 0.1% of one user's events and 10% of another's. Here every model keeps the score
distribution of rows it did NOT train on: the validation tail its trainer already holds out
(the last rows in time order, the user's most recent behaviour). A threshold for an alert
rate ``a`` is the score that a share ``a`` of such held-out normal rows exceed.

A user with 150 events holds out 15 rows, far too few to read a 0.3% quantile from. But
the robust z-scores (see ``trainer.robust_scale``) put every user model on one absolute
scale, so the held-out rows of many user models can be **pooled** (the "population" of a
source): its quantile is the threshold for users with little history, and a user's own
tail takes over as its held-out rows grow::

    w = n / (n + 1 / a)          # n: the model's held-out rows; 1/a: rows for one alert
    threshold = exp(w * ln(own quantile) + (1 - w) * ln(population quantile))

The generic model (every user's rows, thousands held out) uses its own tail. Quantiles
beyond the data (fewer than 3 rows above them) are extrapolated with an exponential tail
fitted to the top tenth of the scores (peaks over threshold). docs/scoring.md measures the
choice against per-model alternatives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel, Field

DEFAULT_ALERT_RATE = 0.003
"""Share of normal events a model should flag by default (the detection config's default)."""
DEFAULT_POPULATION_SHARE = 1 / 3
"""Part of the alert rate the generic model's population check gets by default (docs/scoring.md:
a third kept the false-positive rate of every measured set at or under 1% while catching values
new for every user)."""
MAX_KEPT = 512  # points kept per distribution (quantiles when there are more rows)
MIN_OWN_ROWS = 20  # held-out rows a model needs before its own tail counts at all
MIN_POPULATION_ROWS = 50  # pooled held-out rows needed before the population is used


def _kept(scores: np.ndarray) -> list[float]:
    values = np.sort(np.asarray(scores, dtype=np.float64))
    values = values[np.isfinite(values)]
    if len(values) > MAX_KEPT:
        values = np.quantile(values, np.linspace(0.0, 1.0, MAX_KEPT))
    return [float(v) for v in values]


def tail_quantile(values: list[float] | np.ndarray, q: float) -> float:
    """Quantile ``q`` of sorted ``values``; extrapolated past the data when fewer than 3
    values lie above it: an exponential tail over the top tenth (at least 5 values).

    >>> round(tail_quantile(list(range(100)), 0.5), 1)
    49.5
    """
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n == 0:
        return float("nan")
    if n * (1.0 - q) >= 3.0 or n < 5:
        return float(np.quantile(v, min(max(q, 0.0), 1.0)))
    k = max(5, n // 10)
    base = v[n - k - 1] if n > k else v[0]
    excess = v[n - k :] - base
    beta = float(excess.mean()) if len(excess) else 0.0
    # P(X > base) = k / n; P(X > base + x) = k / n * exp(-x / beta)
    return float(base + beta * math.log(k / (n * (1.0 - q)))) if beta > 0 else float(v[-1])


class Calibration(BaseModel):
    """A model's score distributions, saved in its ``model.json`` (see io.py)."""

    score: str = Field("mean_abs_z", description="The raw score the distributions are of.")
    holdout: list[float] = Field(description="Sorted scores of the held-out validation rows (<= 512 quantiles).")
    holdout_rows: int = Field(description="Validation rows scored.")
    train: list[float] = Field(default_factory=list, description="Sorted scores of scored training rows.")
    train_rows: int = Field(0, description="Training rows scored.")

    @classmethod
    def from_scores(
        cls, holdout: np.ndarray, train: np.ndarray | None = None, score: str = "mean_abs_z"
    ) -> Calibration:
        holdout = np.asarray(holdout, dtype=np.float64)
        train = np.empty(0) if train is None else np.asarray(train, dtype=np.float64)
        return cls(score=score, holdout=_kept(holdout), holdout_rows=int(np.isfinite(holdout).sum()),
                   train=_kept(train), train_rows=int(np.isfinite(train).sum()))

    def own_threshold(self, rate: float) -> float | None:
        """This model's held-out ``1 - rate`` quantile, or None with fewer than 20 held-out rows."""
        if self.holdout_rows < MIN_OWN_ROWS or not self.holdout:
            return None
        return tail_quantile(self.holdout, 1.0 - rate)


def pool(calibrations: Iterable[Calibration | None]) -> Calibration | None:
    """The held-out scores of many models as one distribution (each row counts once)."""
    values, weights, rows = [], [], 0
    for cal in calibrations:
        if cal is None or not cal.holdout:
            continue
        kept = np.asarray(cal.holdout, dtype=np.float64)
        values.append(kept)
        weights.append(np.full(len(kept), cal.holdout_rows / len(kept)))
        rows += cal.holdout_rows
    if not values:
        return None
    v, w = np.concatenate(values), np.concatenate(weights)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    if rows <= MAX_KEPT:  # small pools: every row (weights are 1 when no sketch was subsampled)
        counts = np.maximum(np.rint(w).astype(np.int64), 1)
        return Calibration(holdout=[float(x) for x in np.repeat(v, counts)[:MAX_KEPT]], holdout_rows=rows)
    cum = (np.cumsum(w) - 0.5 * w) / w.sum()
    probs = np.linspace(0.0, 1.0, MAX_KEPT)
    return Calibration(holdout=[float(x) for x in np.interp(probs, cum, v)], holdout_rows=rows)


def _few_rows_threshold(cal: Calibration, rate: float) -> float:
    """Too few held-out rows and no population: the training rows' scores, extrapolated, scaled
    up by how much higher the held-out scores run than the training scores (the model's
    generalisation gap: rows it trained on score lower than new ones)."""
    both = sorted(cal.holdout + cal.train)
    if not both:
        return float("nan")
    value = tail_quantile(both, 1.0 - rate)
    if cal.holdout and cal.train:
        gap = float(np.median(cal.holdout)) / max(float(np.median(cal.train)), 1e-12)
        value *= max(gap, 1.0)
    return value


class Threshold(BaseModel):
    value: float = Field(description="Raw-score threshold (mean_abs_z above it is an alert).")
    source: str = Field(description="own | blend | population | fixed: where the value came from.")


def threshold_for(
    cal: Calibration | None, rate: float, population: Calibration | None = None, *, generic: bool = False
) -> Threshold | None:
    """The raw-score threshold at alert rate ``rate`` for a model calibrated by ``cal``.

    ``population``: the pooled held-out scores of the source's user models (see :func:`pool`);
    ``generic``: the model is the generic one (its own tail only). None when ``cal`` is None.
    """
    if cal is None:
        return None
    own = cal.own_threshold(rate)
    if generic or population is None or population.holdout_rows < MIN_POPULATION_ROWS:
        if own is None:
            own = _few_rows_threshold(cal, rate)
        return Threshold(value=own, source="own")
    pop = tail_quantile(population.holdout, 1.0 - rate)
    if own is None or own <= 0 or pop <= 0:
        return Threshold(value=pop, source="population")
    w = cal.holdout_rows / (cal.holdout_rows + 1.0 / rate)
    return Threshold(value=math.exp(w * math.log(own) + (1 - w) * math.log(pop)), source="blend")
