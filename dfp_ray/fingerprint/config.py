"""User-facing settings and result types (pydantic), shared by the library, CLI and HTTP layer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_PERCENTILE = 95.0
"""Default threshold percentile: flags about 5% of in-distribution data by construction."""


class FingerprintConfig(BaseModel):
    """How a fingerprint is created. Every field is stored in the fingerprint's manifest."""

    model_config = ConfigDict(extra="forbid")

    partial_activations: float = Field(
        1.0, gt=0, le=1, description="fraction of each layer's (mapped) units kept, chosen at random with `seed`"
    )
    activation_mapping: bool = Field(
        True, description="map conv/pool feature maps to the mean and max of each cell of a mapping_grid^k grid, per channel"
    )
    mapping_grid: int = Field(4, ge=1, le=64, description="cells per spatial dimension when activation_mapping is on")
    layers: list[str] | None = Field(None, description="layer names to fingerprint; default: every layer with weights or pooling")
    input_shape: tuple[int, ...] | None = Field(
        None, description="per-sample model input shape, for models that do not declare one (TorchScript, state dicts)"
    )
    epochs: int = Field(30, ge=1, le=10_000, description="training epochs of each autoencoder")
    batch_size: int = Field(128, ge=1, description="autoencoder training batch size")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate of the autoencoders")
    calibration_fraction: float = Field(
        0.3, gt=0, lt=1, description="share of the training rows held out to normalise and calibrate scores"
    )
    combine: Literal["max", "mean"] = Field("max", description="how normalised per-layer scores become one score")
    seed: int = Field(0, description="seed for the unit choice, the split and autoencoder training")
    device: str = Field("auto", description="auto (CUDA when available), cpu or cuda[:N]")
    inference_batch_size: int = Field(256, ge=1, description="batch size when running the model")
    default_percentile: float = Field(DEFAULT_PERCENTILE, gt=0, lt=100, description="percentile stored as the default")
    progress: bool = Field(False, description="show progress bars while training the autoencoders")


class LayerScore(BaseModel):
    """One layer's view of the scored samples."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: str
    scores: list[float] = Field(description="normalised score per sample: robust z of log RMSE vs calibration rows")
    rmse: list[float] = Field(description="raw reconstruction RMSE per sample")
    threshold: float = Field(description="this layer's own score threshold at the requested percentile")
    outlier_percent: float = Field(description="percent of samples above this layer's own threshold (informative only)")


class ScoreResult(BaseModel):
    """Outcome of scoring a dataset against a fingerprint."""

    model_config = ConfigDict(extra="forbid")

    score: float = Field(description="percentage (0-100) of samples flagged as outliers")
    percentile: float
    threshold: float = Field(description="combined-score threshold: the percentile of the calibration scores")
    n_samples: int
    n_outliers: int
    kind: Literal["layered", "non-layered"]
    combine: Literal["max", "mean"]
    flags: list[bool] = Field(description="per sample: is it an outlier")
    sample_scores: list[float] = Field(description="per sample combined score (higher = more unusual)")
    layers: list[LayerScore]
