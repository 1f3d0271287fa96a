"""MLflow model writer (Morpheus's ``MLFlowModelWriter``): register a fitted model as a new version."""

from __future__ import annotations

from dfp_ray.autoencoder import DFPAutoencoder, TrainingReport
from dfp_ray.pipeline.frames import PreparedFrame
from dfp_ray.registry import ModelRef, ModelRegistry
from dfp_ray.schemas import SourceSchema


def write_model(
    registry: ModelRegistry,
    *,
    source: str,
    user: str | None,
    model: DFPAutoencoder,
    report: TrainingReport,
    schema: SourceSchema,
    prepared: PreparedFrame,
    tags: dict[str, str] | None = None,
) -> ModelRef:
    """Register ``model`` as the next version of ``user``'s model (``None``: the generic model),
    with the event-time range of the rows it was trained on."""
    times = prepared[schema.time_column]
    return registry.register(
        source=source, user=user, model=model, report=report, schema=schema,
        first_event=times.min().to_pydatetime(), last_event=times.max().to_pydatetime(),
        tags=tags,
    )
