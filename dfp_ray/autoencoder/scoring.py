"""Scoring: per-feature losses, z-scores against the training loss statistics, predictions.

Output columns (REFERENCE A5), for every feature f in ``feature_columns`` order:
``<f>_loss``, ``<f>_z_loss`` = |(loss - mean_f) / scale_f|, ``<f>_pred``; then ``max_abs_z`` and
``mean_abs_z`` over the features. ``scale_f`` is Morpheus's std, floored (see
``trainer.robust_scale``). An ``above_only`` feature (the schema's per-day counters by default)
has z 0 where its value is below ``<f>_pred``. With a threshold (a calibrated model): ``alert_threshold``,
``anomaly_score`` = ``mean_abs_z / alert_threshold`` and ``threshold_source``. Predictions: numeric in original units; binary as bool
(probability >= 0.5); categorical as the most likely KNOWN class (the "other" class is skipped,
as dfencoder does, unless the column has no known class).

Work is done in batches of ``eval_batch_size`` rows written into preallocated numpy arrays,
so memory for activations is bounded however many rows are scored; one DataFrame is built at
the end.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .calibration import Threshold
from .encoding import EncodedFrame, FeatureEncoder
from .model import DFPNetwork
from .trainer import LossStatistics, eval_mode, iter_feature_losses


def z_scores(losses: np.ndarray, stats: LossStatistics, below: np.ndarray | None = None) -> np.ndarray:
    """|loss - mean| / scale per feature (float64 [rows, n_features]); 0 for an ``above_only``
    feature where ``below`` (bool [rows, n_numeric]) says the value was under the prediction."""
    assert stats.scale is not None
    z = np.abs((losses.astype(np.float64) - stats.mean.numpy()) / stats.scale.numpy())
    if below is not None and stats.above_only is not None and below.shape[1]:
        n_num = below.shape[1]
        z[:, :n_num][below & stats.above_only[:n_num]] = 0.0
    return z


def raw_scores(
    network: DFPNetwork, frame: EncodedFrame, stats: LossStatistics, batch_size: int, device: torch.device,
    precision: str,
) -> np.ndarray:
    """``mean_abs_z`` of every row of ``frame`` (float64), losses only: used for calibration."""
    out = np.empty(len(frame), dtype=np.float64)
    with eval_mode(network), torch.inference_mode():
        for start, stop, _, losses, below in iter_feature_losses(network, frame, batch_size, device, precision):
            out[start:stop] = z_scores(losses.cpu().numpy(), stats, below.cpu().numpy()).mean(axis=1)
    return out


def score_frame(
    network: DFPNetwork,
    encoder: FeatureEncoder,
    stats: LossStatistics,
    df: pd.DataFrame,
    batch_size: int,
    device: torch.device,
    precision: str,
    threshold: Threshold | None = None,
) -> pd.DataFrame:
    columns = score_encoded(
        network, encoder, stats, encoder.transform(df), batch_size, device, precision, threshold=threshold
    )
    return pd.DataFrame(columns, index=df.index, copy=False)


def score_encoded(
    network: DFPNetwork,
    encoder: FeatureEncoder,
    stats: LossStatistics,
    frame: EncodedFrame,
    batch_size: int,
    device: torch.device,
    precision: str,
    threshold: Threshold | None = None,
) -> dict[str, np.ndarray]:
    """The result columns (name -> array, rows in ``frame`` order) for already encoded rows."""
    n = len(frame)
    n_num, n_bin, n_cat = len(encoder.numeric), len(encoder.binary), len(encoder.categorical)
    losses = np.empty((n, network.n_features), dtype=np.float32)
    num_pred = np.empty((n, n_num), dtype=np.float32)
    bin_pred = np.empty((n, n_bin), dtype=bool)
    cat_pred = np.empty((n, n_cat), dtype=np.int64)
    below = np.empty((n, n_num), dtype=bool)
    offsets = network.offsets
    network.eval()
    with torch.inference_mode():
        for start, stop, (numeric, binary, logits), batch_losses, batch_below in iter_feature_losses(
            network, frame, batch_size, device, precision
        ):
            losses[start:stop] = batch_losses.cpu().numpy()
            below[start:stop] = batch_below.cpu().numpy()
            if n_num:
                num_pred[start:stop] = numeric.float().cpu().numpy()
            if n_bin:
                bin_pred[start:stop] = (binary >= 0).cpu().numpy()
            if n_cat:
                codes = []
                for j in range(n_cat):
                    known = offsets[j + 1] - offsets[j] - 1  # classes before "other"
                    if known > 0:
                        codes.append(logits[:, offsets[j] : offsets[j] + known].argmax(dim=1))
                    else:
                        codes.append(torch.zeros(stop - start, dtype=torch.long, device=logits.device))
                cat_pred[start:stop] = torch.stack(codes, dim=1).cpu().numpy()

    loss64 = losses.astype(np.float64)
    z = z_scores(loss64, stats, below)
    numeric_values = encoder.inverse_numeric(num_pred) if n_num else num_pred
    columns: dict[str, np.ndarray] = {}
    for j, feature in enumerate(encoder.feature_columns):
        columns[f"{feature}_loss"] = loss64[:, j]
        columns[f"{feature}_z_loss"] = z[:, j]
        if j < n_num:
            columns[f"{feature}_pred"] = numeric_values[:, j]
        elif j < n_num + n_bin:
            columns[f"{feature}_pred"] = bin_pred[:, j - n_num]
        else:
            c = j - n_num - n_bin
            columns[f"{feature}_pred"] = encoder.category_labels(feature)[cat_pred[:, c]]
    if network.n_features:
        columns["max_abs_z"] = z.max(axis=1) if n else np.empty(0)
        columns["mean_abs_z"] = z.mean(axis=1) if n else np.empty(0)
        if threshold is not None:
            columns["alert_threshold"] = np.full(n, threshold.value)
            columns["anomaly_score"] = columns["mean_abs_z"] / threshold.value
            columns["threshold_source"] = np.full(n, threshold.source, dtype=object)
    return columns
