"""Synthetic Duo and Azure AD authentication logs with labelled anomalies (`dfp-ray datagen`).

Public API::

    from dfp_ray.tools.datagen import DatagenConfig, generate
    summary = generate(DatagenConfig(out="data/dfp", users=20, seed=42))

See docs/datagen.md for the layout written, the users' habits and each anomaly kind.
"""

from dfp_ray.tools.datagen.config import ANOMALY_KINDS, SOURCES, DatagenConfig
from dfp_ray.tools.datagen.generate import (
    GROUND_TRUTH_COLUMNS,
    KIND_DESCRIPTIONS,
    DatagenSummary,
    SourceSummary,
    generate,
)

__all__ = [
    "ANOMALY_KINDS",
    "SOURCES",
    "GROUND_TRUTH_COLUMNS",
    "KIND_DESCRIPTIONS",
    "DatagenConfig",
    "DatagenSummary",
    "SourceSummary",
    "generate",
]
