"""What a registered version promises: scoring raw rows, and the MLflow signature built from it."""
from __future__ import annotations

import logging
import warnings
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from dfp_ray.autoencoder import DFPAutoencoder

from dfp_ray.pipeline.data_prep import frame_from_records
from dfp_ray.schemas import SourceSchema

log = logging.getLogger(__name__)


def score_raw_frame(
    model: DFPAutoencoder, schema: SourceSchema, records: pd.DataFrame | list[dict]
) -> pd.DataFrame:
    """Raw-schema rows -> mapped rows + scores; what the pyfunc flavour's ``predict`` returns.

    ``records`` may be raw records (dicts, or a frame with nested dict columns), flattened raw
    columns (``user.name``) or already-mapped columns (``username``): :func:`frame_from_records`
    accepts all three. Malformed records are dropped (and logged) by the mapping, as in the
    pipeline. The result has the mapped columns (in time order) followed by the scores.
    """
    mapped, _report = frame_from_records(records, schema)
    scores = model.score(mapped)
    return pd.concat([mapped, scores.set_axis(mapped.index)], axis=1)


def _example_value(spec: Any, when: datetime) -> Any:
    if spec.type == "datetime":
        if spec.time_format == "epoch_s":
            return int(when.timestamp())
        if spec.time_format == "epoch_ms":
            return int(when.timestamp() * 1000)
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    if spec.type in ("float", "int"):
        return 1
    if spec.type == "bool":
        return (spec.true_values or spec.false_values)[0]
    return f"example-{spec.name}"


def example_raw_frame(schema: SourceSchema, *, user: str, when: datetime) -> pd.DataFrame:
    """A one-row frame of flattened raw columns that the schema maps without loss.

    Used as the signature's input example when the caller has no real rows at hand.
    """
    row: dict[str, Any] = {}
    for spec in schema.fields:
        if spec.join is not None:
            for path in spec.join:
                row[path] = f"example-{path.rsplit('.', 1)[-1]}"
        else:
            row[spec.path or spec.name] = _example_value(spec, when)
    user_spec = next(f for f in schema.fields if f.name == schema.user_column)
    if user_spec.path:
        row[user_spec.path] = user
    return pd.DataFrame([row])


def _input_column_names(schema: SourceSchema, example: pd.DataFrame) -> list[str]:
    """Every column a raw-schema frame may use: raw paths, their parents (nested dict columns),
    the mapped names, and the example's own columns. All optional in the signature."""
    names: list[str] = []
    for spec in schema.fields:
        for path in spec.join or [spec.path or spec.name]:
            parts = path.split(".")
            names.extend(".".join(parts[: i + 1]) for i in range(len(parts)))
        names.append(spec.name)
    names.extend(str(c) for c in example.columns)
    names.append("_source_file")
    return list(dict.fromkeys(names))



def signature_key(model: DFPAutoencoder, schema: SourceSchema) -> tuple:
    """What a synthesised example's signature depends on: the schema and the feature lists."""
    return (schema.fingerprint(), tuple(model.categorical), tuple(model.numeric), tuple(model.binary))


def signature_for(model: DFPAutoencoder, schema: SourceSchema, example: pd.DataFrame) -> Any:
    """Input: every raw/mapped column name, optional and untyped (raw logs vary: epoch or ISO
    times, nested or flattened); output: inferred from scoring the example."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema
    from mlflow.types.utils import _infer_schema

    inputs = Schema(
        [ColSpec(AnyType(), name, required=False) for name in _input_column_names(schema, example)]
    )
    outputs = None
    scored = score_raw_frame(model, schema, example)
    if len(scored):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                outputs = _infer_schema(scored)
            except Exception as exc:  # the output schema is documentation only
                log.debug("no output schema: %s", exc)
    return ModelSignature(inputs=inputs, outputs=outputs)


