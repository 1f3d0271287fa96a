"""Log-source schemas declared in YAML, and the mapping of raw records to their columns.

A schema says, for one log source, where each column comes from in the raw (nested) record,
how it is converted (string, number, boolean map, time), which per-user-per-day counters are
derived, and which columns the autoencoder sees as categorical / numeric / binary features.
Duo and Azure AD ship as ``dfp_ray/schemas/{duo,azure}.yaml``; a new log source needs only a
new YAML file (pass its path wherever a schema name is accepted). See docs/schemas.md.

- :mod:`~dfp_ray.schemas.model`: the schema models and :func:`load_schema`;
- :mod:`~dfp_ray.schemas.mapping`: raw records -> columns (:func:`map_fields`), used by the
  file-to-DataFrame step. The counters are computed later, by data prep
  (:mod:`dfp_ray.pipeline.data_prep`).
"""

from dfp_ray.schemas.mapping import SkipReport, map_fields
from dfp_ray.schemas.model import (
    MISSING_CATEGORY,
    CounterSpec,
    FeatureSpec,
    FieldSpec,
    SourceSchema,
    TimeFeatureSpec,
    builtin_schema_names,
    dump_schema,
    load_schema,
)

__all__ = [
    "MISSING_CATEGORY",
    "CounterSpec",
    "FeatureSpec",
    "FieldSpec",
    "SkipReport",
    "SourceSchema",
    "TimeFeatureSpec",
    "builtin_schema_names",
    "dump_schema",
    "load_schema",
    "map_fields",
]
