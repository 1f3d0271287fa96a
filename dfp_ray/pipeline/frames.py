"""The frame at each stage of the pipeline, by name (type aliases: documentation the type checker reads).

Data flows one way through these::

    RawFrame -> MappedFrame -> UserFrame -> PreparedFrame -> ScoredFrame -> DetectionFrame

They are all pandas DataFrames; the alias says which columns a function expects and returns.
"""

from __future__ import annotations

from typing import TypeAlias

import pandas as pd

RawFrame: TypeAlias = pd.DataFrame
"""Flattened raw records (dotted columns such as ``user.name``) plus ``_source_file``."""

MappedFrame: TypeAlias = pd.DataFrame
"""The source schema's columns (``username``, ``timestamp``, ...), one row per event (file to DataFrame)."""

UserFrame: TypeAlias = pd.DataFrame
"""The mapped rows of one user, or of the generic model (all users): split users / rolling window."""

PreparedFrame: TypeAlias = pd.DataFrame
"""A mapped frame with the derived counters and final feature dtypes, in time order (data prep)."""

ScoredFrame: TypeAlias = pd.DataFrame
"""Prepared rows plus ``<f>_loss``, ``<f>_z_loss``, ``<f>_pred``, ``max_abs_z``, ``mean_abs_z``,
``event_time`` and ``model_version`` (inference, post-processing)."""

DetectionFrame: TypeAlias = pd.DataFrame
"""The scored rows past the detection threshold (filter detections)."""
