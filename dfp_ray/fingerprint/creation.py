"""Creating a fingerprint: activations -> per-layer autoencoders -> calibration -> manifest."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .activations import (
    LoadedModel,
    collect_activations,
    fit_input_layout,
    map_activation,
    resolve_device,
    select_units,
)
from .archive import CalibrationManifest, LayerManifest, Manifest, ModelManifest, Normaliser, Settings
from .artifact import Fingerprint
from .autoencoders import reconstruction_rmse, train_autoencoder
from .calibration import combine_scores, fit_normaliser, layer_scores, threshold_at
from .config import FingerprintConfig
from .datasets import DatasetSource, check_finite, load_dataset
from .errors import FingerprintError
from .loading import ModelSource, ModelType, load_model

log = logging.getLogger(__name__)

MIN_ROWS_PER_SPLIT = 20
STORED_PERCENTILES = (90.0, 95.0, 97.5, 99.0, 99.5)

ProgressCallback = Callable[[str, float], None]
"""``callback(stage, fraction_done)``: told what creation is doing (an HTTP job reports it)."""


@dataclass
class _LayerFeatures:
    name: str
    kind: str
    raw_shape: list[int]
    mapped_size: int
    units: np.ndarray
    values: np.ndarray  # (n_rows, len(units)) float32


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("dfp-ray")
    except Exception:  # running from a checkout that is not installed
        return "0+unknown"


def split_rows(n: int, calibration_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (fit, calibration) row indices; both at least ``MIN_ROWS_PER_SPLIT`` rows."""
    n_cal = round(n * calibration_fraction)
    if n_cal < MIN_ROWS_PER_SPLIT or n - n_cal < MIN_ROWS_PER_SPLIT:
        need = math.ceil(MIN_ROWS_PER_SPLIT / min(calibration_fraction, 1 - calibration_fraction))
        raise FingerprintError(
            f"the dataset has {n} rows; with calibration_fraction={calibration_fraction} at least {need} are "
            f"needed so that both the autoencoder and the calibration split get {MIN_ROWS_PER_SPLIT} rows",
            field="dataset",
        )
    order = np.random.default_rng([seed, 7919]).permutation(n)
    return np.sort(order[n_cal:]), np.sort(order[:n_cal])


def run_model_safely(model: LoadedModel, x: np.ndarray, names: list[str]) -> list[Any]:
    """Run the model on a couple of rows, turning framework errors into a user-facing one."""
    try:
        return model.layer_outputs(x[:2], names)
    except FingerprintError:
        raise
    except Exception as exc:
        raise FingerprintError(_run_failure(exc, x, model), field="dataset") from exc


def _run_failure(exc: Exception, x: np.ndarray, model: LoadedModel) -> str:
    hint = "" if model.input_shape is not None else (
        "; this model does not declare its input shape: pass input_shape (CLI: --input-shape, e.g. 1,28,28)"
    )
    return (
        f"running the model on the dataset failed ({type(exc).__name__}: {exc}); check that the data has the "
        f"shape the model expects (samples shaped {tuple(x.shape[1:])} here){hint}"
    )


def raw_channel_first_shape(shape: tuple[int, ...], channel_axis: str) -> list[int]:
    if channel_axis == "last" and len(shape) >= 2:
        shape = (shape[-1], *shape[:-1])
    return [int(s) for s in shape]


def _model_features(model: LoadedModel, x: np.ndarray, cfg: FingerprintConfig) -> tuple[list[_LayerFeatures], list[int]]:
    x = fit_input_layout(x, cfg.input_shape or model.input_shape, model.input_layout)
    try:
        model.prepare(x[:2])
    except FingerprintError:
        raise
    except Exception as exc:
        raise FingerprintError(_run_failure(exc, x, model), field="dataset") from exc
    names = list(cfg.layers) if cfg.layers else model.default_layer_names
    if not names:
        raise FingerprintError(
            f"the model has no layers to fingerprint besides its output ({', '.join(model.layer_names)}); "
            "choose layers explicitly (layers=[...], CLI --layers)",
            field="layers",
        )
    for name in names:
        try:
            model.layer(name)  # unknown names fail here, listing the valid ones
        except FingerprintError as exc:
            raise FingerprintError(str(exc), field="layers") from None
    probe = run_model_safely(model, x, names)
    layers = []
    for index, (name, out) in enumerate(zip(names, probe, strict=True)):
        info = model.layer(name)
        mapped = int(map_activation(out, info.channel_axis, cfg.activation_mapping, cfg.mapping_grid).shape[1])
        layers.append(
            _LayerFeatures(
                name=name,
                kind=info.kind,
                raw_shape=raw_channel_first_shape(tuple(out.shape[1:]), info.channel_axis),
                mapped_size=mapped,
                units=select_units(mapped, cfg.partial_activations, cfg.seed, index),
                values=np.empty((0, 0), np.float32),
            )
        )
    values = collect_activations(
        model,
        x,
        names,
        [layer.units for layer in layers],
        mapping=cfg.activation_mapping,
        grid=cfg.mapping_grid,
        batch_size=cfg.inference_batch_size,
    )
    for layer, v in zip(layers, values, strict=True):
        layer.values = v
    return layers, list(x.shape[1:])


def _raw_features(x: np.ndarray, cfg: FingerprintConfig) -> list[_LayerFeatures]:
    flat = np.asarray(x, dtype=np.float32).reshape(x.shape[0], -1)
    units = select_units(flat.shape[1], cfg.partial_activations, cfg.seed, 0)
    return [
        _LayerFeatures(
            name="input",
            kind="Input",
            raw_shape=[int(s) for s in x.shape[1:]],
            mapped_size=int(flat.shape[1]),
            units=units,
            values=np.ascontiguousarray(flat[:, units]),
        )
    ]


def create(
    dataset: DatasetSource,
    model: ModelSource | LoadedModel | None = None,
    *,
    model_type: ModelType | None = None,
    model_def: str | os.PathLike | bytes | None = None,
    allow_model_code: bool = False,
    dataset_key: str | None = None,
    config: FingerprintConfig | None = None,
    progress_callback: ProgressCallback | None = None,
    **overrides: Any,
) -> Fingerprint:
    """Create a fingerprint of ``model`` (layered) or of the raw ``dataset`` (non-layered).

    ``dataset`` is the model's training data: a path, bytes (.npy/.npz/numpy-only pickle) or
    an array, shaped as the model expects its input (flat rows and the other channel order
    are fitted automatically). ``model`` is a Keras ``.h5``/``.keras`` or PyTorch
    ``.pt2``/TorchScript/state-dict file (path or bytes) or a model from :func:`load_model`.
    Settings come from ``config`` and/or keyword ``overrides`` (fields of
    :class:`FingerprintConfig`, e.g. ``partial_activations=0.2``).

    The rows are split (seeded) into autoencoder-training rows and held-out calibration rows;
    the calibration rows normalise each layer's error and set the percentile thresholds
    (see :mod:`dfp_ray.fingerprint.calibration`), so in-distribution data scored at
    percentile ``p`` is flagged at about ``100 - p`` percent.

    ``progress_callback(stage, fraction)`` is called as creation advances (loading, activations,
    then once per layer autoencoder); it must be cheap and must not raise.
    """
    base = (config or FingerprintConfig()).model_dump()
    cfg = FingerprintConfig.model_validate({**base, **overrides})

    def progress(stage: str, fraction: float) -> None:
        if progress_callback is not None:
            progress_callback(stage, fraction)

    device = resolve_device(cfg.device)
    progress("loading the dataset", 0.0)
    x = check_finite(load_dataset(dataset, key=dataset_key))
    loaded: LoadedModel | None = None
    if model is not None:
        progress("loading the model", 0.02)
        loaded = load_model(model, model_type, model_def=model_def, allow_model_code=allow_model_code, device=device)
        progress("computing layer activations", 0.05)
        layers, input_shape = _model_features(loaded, x, cfg)
    else:
        if model_def is not None or model_type is not None:
            raise FingerprintError("model_type/model_def were given without a model", field="model")
        if cfg.layers:
            raise FingerprintError(
                "layers can only be chosen for a layered fingerprint (one made with a model)", field="layers"
            )
        layers, input_shape = _raw_features(x, cfg), [int(s) for s in x.shape[1:]]
    fit_idx, cal_idx = split_rows(x.shape[0], cfg.calibration_fraction, cfg.seed)

    manifests: list[LayerManifest] = []
    autoencoders = []
    cal_scores = []
    bar = tqdm(layers, desc="fingerprint", disable=not cfg.progress, unit="layer")
    for index, layer in enumerate(bar):
        progress(f"training the autoencoder of layer {layer.name} ({index + 1}/{len(layers)})",
                 0.1 + 0.85 * index / len(layers))
        ae = train_autoencoder(
            layer.values[fit_idx],
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            seed=cfg.seed * 1000 + index,
            device=device,
            progress=cfg.progress,
            desc=f"layer {index} {layer.name}",
        )
        rmse_fit = reconstruction_rmse(ae, layer.values[fit_idx], device=device)
        rmse_cal = reconstruction_rmse(ae, layer.values[cal_idx], device=device)
        centre, scale = fit_normaliser(rmse_cal)
        cal_scores.append(layer_scores(rmse_cal, centre, scale))
        log.debug("layer %s: %d units, fit RMSE %.4f, calibration RMSE %.4f", layer.name, len(layer.units),
                  rmse_fit.mean(), rmse_cal.mean())
        manifests.append(
            LayerManifest(
                index=index,
                name=layer.name,
                kind=layer.kind,
                raw_shape=layer.raw_shape,
                mapped_size=layer.mapped_size,
                units_kept=layer.units.tolist(),
                autoencoder=ae.shape,
                weights_file=f"layers/{index:03d}.safetensors",
                normaliser=Normaliser(centre=centre, scale=scale),
                rmse_calibration=rmse_cal.tolist(),
                rmse_fit_mean=float(rmse_fit.mean()),
            )
        )
        autoencoders.append(ae.cpu())
        layer.values = np.empty((0, 0), np.float32)  # free memory as we go
    combined = combine_scores(np.vstack(cal_scores), cfg.combine)
    manifest = Manifest(
        created_at=datetime.now(timezone.utc),
        dfp_ray_version=package_version(),
        kind="layered" if loaded is not None else "non-layered",
        num_layers=len(manifests),
        input_shape=input_shape,
        default_percentile=cfg.default_percentile,
        settings=Settings(
            partial_activations=cfg.partial_activations,
            activation_mapping=cfg.activation_mapping,
            mapping_grid=cfg.mapping_grid,
            seed=cfg.seed,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            calibration_fraction=cfg.calibration_fraction,
            combine=cfg.combine,
        ),
        model=None
        if loaded is None
        else ModelManifest(
            framework=loaded.framework,
            format=loaded.model_format,
            weights_sha256=loaded.weights_sha256,
            file_sha256=loaded.file_sha256,
            input_layout=loaded.input_layout,
        ),
        layers=manifests,
        calibration=CalibrationManifest(
            fit_rows=len(fit_idx),
            calibration_rows=len(cal_idx),
            combined_scores=combined.tolist(),
            thresholds={f"{p:g}": threshold_at(combined, p) for p in STORED_PERCENTILES},
        ),
        files={m.weights_file: {"size": 0, "sha256": "0" * 64} for m in manifests},
    )
    fingerprint = Fingerprint(manifest=manifest, autoencoders=autoencoders)
    fingerprint.sync_files()
    progress("done", 1.0)
    return fingerprint
