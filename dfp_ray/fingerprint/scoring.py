"""Scoring a dataset against a fingerprint: which samples are out of distribution."""

from __future__ import annotations

import os

import numpy as np

from .activations import LoadedModel, collect_activations, fit_input_layout, map_activation, resolve_device
from .artifact import Fingerprint, load_fingerprint
from .autoencoders import reconstruction_rmse
from .calibration import combine_scores, layer_scores, threshold_at
from .config import LayerScore, ScoreResult
from .creation import run_model_safely
from .datasets import DatasetSource, check_finite, load_dataset
from .errors import FingerprintError, FingerprintMismatchError
from .loading import ModelSource, ModelType, load_model


def check_options(fp: Fingerprint, percentile: float, num_layers: int | None, activation_mapping: bool | None) -> None:
    """The caller's statements about the fingerprint (num_layers, activation_mapping) must hold; percentile in range."""
    m = fp.manifest
    if not 0.0 < percentile < 100.0:
        raise FingerprintError(f"percentile must be between 0 and 100 (exclusive), got {percentile}", field="percentile")
    if num_layers is not None and num_layers != m.num_layers:
        raise FingerprintMismatchError(
            f"num_layers is {num_layers} but the fingerprint has {m.num_layers} layers "
            f"({', '.join(fp.layer_names)}); pass {m.num_layers} or omit it",
            field="num_layers",
        )
    if activation_mapping is not None and activation_mapping != m.settings.activation_mapping:
        made = "with" if m.settings.activation_mapping else "without"
        raise FingerprintMismatchError(
            f"activation_mapping is {activation_mapping} but the fingerprint was created {made} activation mapping; "
            f"pass activation_mapping={m.settings.activation_mapping} (CLI: "
            f"{'--activation-mapping' if m.settings.activation_mapping else '--no-activation-mapping'}) or omit it",
            field="activation_mapping",
        )


def _layered_features(
    fp: Fingerprint, x: np.ndarray, model: LoadedModel, batch_size: int
) -> list[np.ndarray]:
    m = fp.manifest
    assert m.model is not None
    if model.framework != m.model.framework:
        raise FingerprintMismatchError(
            f"the fingerprint was made from a {m.model.framework} model but a {model.framework} model was given",
            field="model",
        )
    if model.weights_sha256 != m.model.weights_sha256:
        raise FingerprintMismatchError(
            "the model's weights differ from those of the model this fingerprint was created from "
            f"(weights sha256 {model.weights_sha256[:12]}... vs {m.model.weights_sha256[:12]}...); "
            "score with the same model, or create a new fingerprint for this one",
            field="model",
        )
    x = fit_input_layout(x, m.input_shape, model.input_layout)
    if list(x.shape[1:]) != m.input_shape:
        raise FingerprintMismatchError(
            f"samples have shape {tuple(x.shape[1:])}, the fingerprint expects {tuple(m.input_shape)}", field="dataset"
        )
    names = [layer.name for layer in m.layers]
    for name in names:
        model.layer(name)
    probe = run_model_safely(model, x, names)
    for layer, out in zip(m.layers, probe, strict=True):
        info = model.layer(layer.name)
        size = int(map_activation(out, info.channel_axis, m.settings.activation_mapping, m.settings.mapping_grid).shape[1])
        if size != layer.mapped_size:
            raise FingerprintMismatchError(
                f"layer {layer.name!r} gives {size} values per sample here but {layer.mapped_size} when fingerprinted",
                field="dataset",
            )
    return collect_activations(
        model,
        x,
        names,
        [np.asarray(layer.units_kept, dtype=np.int64) for layer in m.layers],
        mapping=m.settings.activation_mapping,
        grid=m.settings.mapping_grid,
        batch_size=batch_size,
    )


def score(
    fingerprint: Fingerprint | str | os.PathLike | bytes,
    dataset: DatasetSource,
    model: ModelSource | LoadedModel | None = None,
    *,
    model_type: ModelType | None = None,
    model_def: str | os.PathLike | bytes | None = None,
    allow_model_code: bool = False,
    dataset_key: str | None = None,
    percentile: float | None = None,
    num_layers: int | None = None,
    activation_mapping: bool | None = None,
    device: str = "auto",
    batch_size: int = 256,
    key: bytes | None = None,
) -> ScoreResult:
    """Flag the samples of ``dataset`` that fall outside the fingerprint's training distribution.

    A layered fingerprint needs the same ``model`` it was created from (checked by a hash of
    the weights); a non-layered one takes no model. ``percentile`` (default: the
    fingerprint's, normally 95) picks the threshold among the calibration rows' combined
    scores, so in-distribution data is flagged at about ``100 - percentile`` percent.
    ``num_layers`` and ``activation_mapping``, when given, must match the fingerprint (the
    original service required callers to state them); a mismatch raises
    :class:`FingerprintMismatchError`. ``key``: accept only a fingerprint archive signed
    with this HMAC key (see :mod:`dfp_ray.fingerprint.archive`).
    """
    fp = load_fingerprint(fingerprint, key=key)
    m = fp.manifest
    pct = m.default_percentile if percentile is None else float(percentile)
    check_options(fp, pct, num_layers, activation_mapping)
    dev = resolve_device(device)
    x = check_finite(load_dataset(dataset, key=dataset_key))
    if m.kind == "layered":
        if model is None:
            raise FingerprintError(
                "this fingerprint is layered (made from a model): pass the same model (CLI: --model) to score data",
                field="model",
            )
        loaded = load_model(model, model_type, model_def=model_def, allow_model_code=allow_model_code, device=dev)
        feats = _layered_features(fp, x, loaded, batch_size)
    else:
        if model is not None:
            raise FingerprintMismatchError(
                "this fingerprint is non-layered (made from raw data, without a model): omit the model", field="model"
            )
        flat = np.asarray(x, dtype=np.float32).reshape(x.shape[0], -1)
        if flat.shape[1] != m.layers[0].mapped_size:
            raise FingerprintMismatchError(
                f"samples have {flat.shape[1]} values, the fingerprint was made on samples with {m.layers[0].mapped_size}",
                field="dataset",
            )
        feats = [np.ascontiguousarray(flat[:, np.asarray(m.layers[0].units_kept, dtype=np.int64)])]

    per_layer = []
    layer_results = []
    for layer, ae, feat in zip(m.layers, fp.autoencoders, feats, strict=True):
        rmse = reconstruction_rmse(ae, feat, device=dev)
        ae.cpu()
        z = layer_scores(rmse, layer.normaliser.centre, layer.normaliser.scale)
        cal_z = layer_scores(np.asarray(layer.rmse_calibration), layer.normaliser.centre, layer.normaliser.scale)
        layer_thr = threshold_at(cal_z, pct)
        per_layer.append(z)
        layer_results.append(
            LayerScore(
                name=layer.name,
                kind=layer.kind,
                scores=z.tolist(),
                rmse=rmse.tolist(),
                threshold=layer_thr,
                outlier_percent=float(100.0 * np.mean(z > layer_thr)),
            )
        )
    combined = combine_scores(np.vstack(per_layer), m.settings.combine)
    thr = fp.threshold(pct)
    flags = combined > thr
    n_out = int(flags.sum())
    return ScoreResult(
        score=100.0 * n_out / len(flags),
        percentile=pct,
        threshold=thr,
        n_samples=len(flags),
        n_outliers=n_out,
        kind=m.kind,
        combine=m.settings.combine,
        flags=flags.tolist(),
        sample_scores=combined.tolist(),
        layers=layer_results,
    )
