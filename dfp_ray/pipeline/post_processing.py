"""Post-processing (Morpheus's ``DFPPostprocessing``): stamp each scored row with when and by which
model, apply the detection rule's threshold columns, and explain every detection.

Explanations name a detection's top drivers: the features whose z-scores contributed most to
its ``mean_abs_z``, each with the observed value, what the model expected (its ``<f>_pred``:
the most likely category, the reconstructed number) and the z. A cyclic time feature counts
as one driver (``hour_of_day``: observed ``03:12``, expected ``14:05``, z = the sum of its two
columns' z). Only detections are explained: formatting values is per-row work, and the rest
need none.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from dfp_ray.config import DetectionConfig
from dfp_ray.schemas import SourceSchema

Z_SUFFIX = "_z_loss"
_WEEKDAYS = np.array(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], dtype=object)


def add_postprocessing(
    scored: pd.DataFrame, *, model_version: str | pd.Series, detected_at: datetime | None = None
) -> pd.DataFrame:
    """Add ``event_time`` (ISO-8601 UTC, when scored) and ``model_version`` (``name:version``).

    >>> import pandas as pd
    >>> from datetime import datetime, timezone
    >>> out = add_postprocessing(pd.DataFrame({"mean_abs_z": [3.0]}), model_version="DFP-duo-alice:3",
    ...                          detected_at=datetime(2022, 8, 30, 12, tzinfo=timezone.utc))
    >>> out[["event_time", "model_version"]].iloc[0].tolist()
    ['2022-08-30T12:00:00.000Z', 'DFP-duo-alice:3']
    """
    when = (detected_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    out = scored.copy()
    out["event_time"] = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    out["model_version"] = model_version
    return out


def apply_rule(scored: pd.DataFrame, cfg: DetectionConfig) -> pd.DataFrame:
    """Make ``alert_threshold``, ``anomaly_score`` and ``threshold_source`` say what ``cfg``'s rule
    does, in place (see :func:`rule_values`). A detection is ``anomaly_score > 1`` either way."""
    fixed = cfg.rule == "fixed" or "alert_threshold" not in scored.columns
    if len(scored) and cfg.score_column not in scored.columns:
        return scored
    raw = scored[cfg.score_column].to_numpy(dtype=np.float64) if len(scored) else np.empty(0)
    if fixed:
        threshold, source, anomaly = rule_values(raw, None, None, None, cfg)
        scored["alert_threshold"] = threshold
        scored["threshold_source"] = source
        scored["anomaly_score"] = anomaly
        return scored
    missing = scored["alert_threshold"].isna().to_numpy()
    if missing.any():  # rows of uncalibrated models (saved before calibration existed)
        threshold, source, anomaly = rule_values(
            raw, scored["alert_threshold"].to_numpy(dtype=np.float64), scored["threshold_source"].to_numpy(dtype=object),
            scored["anomaly_score"].to_numpy(dtype=np.float64), cfg)
        scored.loc[missing, "alert_threshold"] = threshold[missing]
        scored.loc[missing, "threshold_source"] = source[missing]
        scored.loc[missing, "anomaly_score"] = anomaly[missing]
    return scored


def rule_values(
    raw: np.ndarray, alert_threshold: np.ndarray | None, threshold_source: np.ndarray | None,
    anomaly_score: np.ndarray | None, cfg: DetectionConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(alert_threshold, threshold_source, anomaly_score)`` of rows whose ``cfg.score_column``
    is ``raw``, given a calibrated model's columns (None: the model has none).

    The fixed rule (and any row a calibrated model did not score: NaN threshold) uses
    ``cfg.threshold``. One definition for :func:`apply_rule` (the pipeline's frames) and the
    per-request scorer's arrays (:mod:`dfp_ray.serve.dfp_fast`)."""
    n = len(raw)
    if cfg.rule == "fixed" or alert_threshold is None:
        anomaly = raw / cfg.threshold if cfg.threshold > 0 else raw - cfg.threshold + 1.0
        return np.full(n, float(cfg.threshold)), np.full(n, "fixed", dtype=object), anomaly
    assert threshold_source is not None and anomaly_score is not None
    missing = np.isnan(alert_threshold)
    if not missing.any():
        return alert_threshold, threshold_source, anomaly_score
    return (np.where(missing, float(cfg.threshold), alert_threshold),
            np.where(missing, "fixed", threshold_source).astype(object), np.where(missing, raw / cfg.threshold, anomaly_score))


def _text(values: np.ndarray) -> np.ndarray:
    """Display strings: integers without '.0', other floats to 4 significant digits, bools as is."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values.tolist()):  # detections only: a few rows
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out[i] = ""
        elif isinstance(v, bool | np.bool_):
            out[i] = str(bool(v))
        elif isinstance(v, float | np.floating):
            out[i] = str(int(v)) if float(v).is_integer() else f"{v:.4g}"
        else:
            out[i] = str(v)
    return out


def _clock(angle: np.ndarray, kind: str) -> np.ndarray:
    """Angles on the daily / weekly circle -> '03:12' / 'Sat 14:00'."""
    turn = np.mod(angle, 2 * np.pi) / (2 * np.pi)
    if kind == "hour_of_day":
        minutes = np.rint(turn * 24 * 60).astype(np.int64) % (24 * 60)
        return np.array([f"{m // 60:02d}:{m % 60:02d}" for m in minutes.tolist()], dtype=object)
    hours = np.rint(turn * 7 * 24).astype(np.int64) % (7 * 24)
    return np.array([f"{_WEEKDAYS[h // 24]} {h % 24:02d}:00" for h in hours.tolist()], dtype=object)


def explain(rows: pd.DataFrame, schema: SourceSchema | None = None, top: int = 3) -> pd.DataFrame:
    """The top ``top`` drivers of every row: ``driver_<i>`` (feature), ``driver_<i>_value``,
    ``driver_<i>_expected``, ``driver_<i>_z``, and one ``explanation`` text per row.

    >>> import pandas as pd
    >>> rows = pd.DataFrame({"reason": ["invalid_passcode"], "reason_pred": ["user_approved"],
    ...                      "reason_z_loss": [9.5], "logcount": [3.0], "logcount_pred": [2.9],
    ...                      "logcount_z_loss": [0.1]})
    >>> explain(rows, top=1)["explanation"].iloc[0]
    'reason=invalid_passcode (expected user_approved, z 9.5)'
    """
    # columns, made a frame once (a column insert per driver costs ~0.3 ms)
    return pd.DataFrame(explain_columns(rows, len(rows), schema, top), index=rows.index)


def explain_columns(rows: pd.DataFrame | Mapping[str, np.ndarray], n: int, schema: SourceSchema | None = None,
                    top: int = 3) -> dict[str, np.ndarray]:
    """:func:`explain` of rows given as columns (name -> array of ``n`` values, in the order a
    frame of them would have; a frame works too), as arrays: the same drivers and texts without
    building (and reading back) a frame. The per-request scorer's way (:mod:`dfp_ray.serve.dfp_fast`)."""
    names = list(rows)
    if n == 0 or not _explained_names(names, schema)[0][:top]:
        out: dict[str, np.ndarray] = {}
        for i in range(1, top + 1):
            for suffix in ("", "_value", "_expected"):
                out[f"driver_{i}{suffix}"] = np.full(n, "", dtype=object)
            out[f"driver_{i}_z"] = np.full(n, np.nan)
        out["explanation"] = np.full(n, "", dtype=object)
        return out
    return _explain_arrays(rows, names, n, schema, top)


def _explained_names(columns: list[str], schema: SourceSchema | None) -> tuple[list[str], dict]:
    """The drivers a row can have (features, a cyclic time feature's two columns as one), in order."""
    features = [c[: -len(Z_SUFFIX)] for c in columns if c.endswith(Z_SUFFIX)]
    groups = schema.feature_groups() if schema is not None else {}
    grouped = {c for _, cols in groups.values() for c in cols}
    names = [f for f in features if f not in grouped] + [g for g, (_, cols) in groups.items() if cols[0] in features]
    return names, groups


def _explain_arrays(rows: pd.DataFrame | Mapping[str, np.ndarray], columns: list[str], n: int,
                    schema: SourceSchema | None, top: int) -> dict[str, np.ndarray]:
    """The columns of :func:`explain_columns` (``n`` > 0 rows, at least one driver); ``columns``
    are the names of the rows' columns, in order."""

    def col(name: str, dtype: Any) -> np.ndarray:
        return np.asarray(rows[name], dtype=dtype)

    names, groups = _explained_names(columns, schema)
    present = set(columns)
    k = min(top, len(names))
    out: dict[str, np.ndarray] = {}
    z = np.empty((n, len(names)))
    value = np.empty((n, len(names)), dtype=object)
    expected = np.empty((n, len(names)), dtype=object)
    for j, name in enumerate(names):
        if name in groups:
            kind, (c_sin, c_cos) = groups[name]
            z[:, j] = col(c_sin + Z_SUFFIX, float) + col(c_cos + Z_SUFFIX, float)
            value[:, j] = _clock(np.arctan2(col(c_sin, float), col(c_cos, float)), kind)
            if c_sin + "_pred" in present and c_cos + "_pred" in present:
                expected[:, j] = _clock(np.arctan2(col(c_sin + "_pred", float), col(c_cos + "_pred", float)), kind)
            else:
                expected[:, j] = ""
            continue
        z[:, j] = col(name + Z_SUFFIX, float)
        value[:, j] = _text(col(name, object)) if name in present else ""
        pred = name + "_pred"
        expected[:, j] = _text(col(pred, object)) if pred in present else ""
    order = np.argsort(-np.nan_to_num(z, nan=-np.inf), axis=1, kind="stable")[:, :k]
    label = np.asarray(names, dtype=object)
    texts = np.full(n, "", dtype=object)
    for i in range(k):
        idx = order[:, i : i + 1]
        f = label[idx[:, 0]]
        v = np.take_along_axis(value, idx, axis=1)[:, 0]
        e = np.take_along_axis(expected, idx, axis=1)[:, 0]
        zi = np.take_along_axis(z, idx, axis=1)[:, 0]
        out[f"driver_{i + 1}"] = f
        out[f"driver_{i + 1}_value"] = v
        out[f"driver_{i + 1}_expected"] = e
        out[f"driver_{i + 1}_z"] = zi
        part = np.array([f"{a}={b} (expected {c}, z {d:.3g})" for a, b, c, d in zip(f, v, e, zi, strict=True)],
                        dtype=object)
        texts = part if i == 0 else texts + "; " + part
    for i in range(k + 1, top + 1):  # fewer features than drivers asked for
        for suffix in ("", "_value", "_expected"):
            out[f"driver_{i}{suffix}"] = np.full(n, "", dtype=object)
        out[f"driver_{i}_z"] = np.full(n, np.nan)
    out["explanation"] = texts
    return out


def add_explanations(scored: pd.DataFrame, cfg: DetectionConfig, schema: SourceSchema | None = None) -> pd.DataFrame:
    """Explanation columns on every row, filled for the detections (``anomaly_score > 1``)."""
    if not cfg.explain_top or not len(scored) or "anomaly_score" not in scored.columns:
        return scored
    detected = scored["anomaly_score"].to_numpy(dtype=float) > 1.0
    empty = explain(scored.iloc[0:0], schema, cfg.explain_top)
    columns = {c: pd.Series(np.nan if c.endswith("_z") else "", index=scored.index,
                            dtype=float if c.endswith("_z") else object) for c in empty.columns}
    if detected.any():
        filled = explain(scored[detected], schema, cfg.explain_top)
        for c in columns:
            columns[c].loc[filled.index] = filled[c].to_numpy()
    return pd.concat([scored, pd.DataFrame(columns, index=scored.index)], axis=1)
