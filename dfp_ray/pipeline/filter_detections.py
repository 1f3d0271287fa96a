"""Filter detections (Morpheus's ``FilterDetections``): keep the rows whose score passes the threshold.

Runs once, in the user actor that scored the rows, so only detections travel to the sink
(unless every score is written too).
"""

from __future__ import annotations

import pandas as pd

from dfp_ray.config import DetectionConfig


def filter_detections(scored: pd.DataFrame, cfg: DetectionConfig) -> pd.DataFrame:
    """Rows whose score strictly exceeds the threshold.

    >>> import pandas as pd
    >>> from dfp_ray.config import DetectionConfig
    >>> scored = pd.DataFrame({"mean_abs_z": [0.5, 2.0, 3.1]})
    >>> filter_detections(scored, DetectionConfig(threshold=2.0))["mean_abs_z"].tolist()
    [3.1]
    """
    if scored.empty:  # e.g. no user had a model: nothing was scored
        return scored
    return scored[scored[cfg.score_column] > cfg.threshold]
