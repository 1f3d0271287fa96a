"""Turning per-layer reconstruction errors into one calibrated verdict.

Why not per-layer thresholds with a vote: layers disagree about what is unusual (early
convolutions react to almost any change of input statistics, late dense layers mostly do
not), so a majority vote misses nearly all outliers, and "flag if any layer passes its own
p-th percentile" flags far more than ``100 - p`` percent of in-distribution data (the layers'
false positives add up).

What we do instead:

1. **Normalise each layer.** On a held-out calibration split of the training data (rows the
   autoencoders never saw), take ``log(RMSE)`` per layer and fit a robust centre and scale
   (median, 1.4826 x median absolute deviation). A sample's layer score is
   ``z = (log RMSE - centre) / scale``: comparable across layers whatever their units.
2. **Combine** the layer scores with ``max`` (default) or ``mean``. ``max`` keeps the
   strongest evidence from any layer, which is what early layers provide for most outliers.
3. **Calibrate once, on the combined score.** The threshold for percentile ``p`` is the
   ``p``-th percentile of the combined scores of the calibration rows, so in-distribution data
   is flagged at about ``100 - p`` percent by construction, whatever the number of layers.

The full sorted calibration distribution is stored in the fingerprint, so any percentile can
be chosen at scoring time.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Combine = Literal["max", "mean"]

_MAD_TO_STD = 1.4826


def fit_normaliser(rmse: np.ndarray) -> tuple[float, float]:
    """Robust (centre, scale) of ``log(rmse)``; the scale never collapses to zero."""
    log = np.log(np.maximum(rmse, 1e-12))
    centre = float(np.median(log))
    scale = float(_MAD_TO_STD * np.median(np.abs(log - centre)))
    if not np.isfinite(scale) or scale < 1e-6:
        scale = max(float(np.std(log)), 1e-6)
    return centre, scale


def layer_scores(rmse: np.ndarray, centre: float, scale: float) -> np.ndarray:
    """Normalised score of each sample for one layer (higher = more unusual)."""
    return (np.log(np.maximum(rmse, 1e-12)) - centre) / scale


def combine_scores(per_layer: np.ndarray, method: Combine) -> np.ndarray:
    """Combine an ``(n_layers, n_samples)`` matrix of layer scores into one per sample."""
    if method == "max":
        return per_layer.max(axis=0)
    if method == "mean":
        return per_layer.mean(axis=0)
    raise ValueError(f"unknown combine method {method!r}")


def threshold_at(calibration_scores: np.ndarray, percentile: float) -> float:
    """The ``percentile``-th percentile of the calibration scores (linear interpolation)."""
    return float(np.percentile(calibration_scores, percentile))
