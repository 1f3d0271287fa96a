"""Filter detections (Morpheus's ``FilterDetections``): keep the rows whose score passes the threshold.

Runs once, in the user actor that scored the rows, so only detections travel to the sink
(unless every score is written too). With the calibrated rule (the default) a row is a
detection when its ``anomaly_score`` (``mean_abs_z`` over its model's calibrated threshold)
exceeds 1; with the fixed rule, when ``score_column`` exceeds ``threshold`` (Morpheus).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from dfp_ray.config import DetectionConfig


def filter_detections(scored: pd.DataFrame, cfg: DetectionConfig) -> pd.DataFrame:
    """Rows whose score strictly exceeds the threshold.

    >>> import pandas as pd
    >>> from dfp_ray.config import DetectionConfig
    >>> scored = pd.DataFrame({"mean_abs_z": [0.5, 2.0, 3.1]})
    >>> filter_detections(scored, DetectionConfig(rule="fixed", threshold=2.0))["mean_abs_z"].tolist()
    [3.1]
    >>> scored["anomaly_score"] = [0.2, 1.5, 0.9]
    >>> filter_detections(scored, DetectionConfig())["mean_abs_z"].tolist()
    [2.0]
    """
    if scored.empty:  # e.g. no user had a model: nothing was scored
        return scored
    return scored[detection_mask(scored, cfg)]


def detection_mask(columns: pd.DataFrame | Mapping[str, Any], cfg: DetectionConfig) -> np.ndarray:
    """Which rows of ``columns`` (a scored frame, or its columns as arrays) are detections: the
    one rule of :func:`filter_detections`, also used by the per-request scorer on arrays."""
    if cfg.rule == "fixed" or "anomaly_score" not in columns:
        return np.asarray(columns[cfg.score_column], dtype=np.float64) > cfg.threshold
    return np.asarray(columns["anomaly_score"], dtype=np.float64) > 1.0
