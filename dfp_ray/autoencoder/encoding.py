"""DataFrame -> tensors: vocabularies, scalers and the once-per-fit encoding.

Morpheus re-encodes pandas frames on every epoch (and on every batch when scoring); most of its
training time is spent there. Here a frame is encoded exactly once into two tensors
(:class:`EncodedFrame`): int64 category codes and float32 "dense" values (scaled numerics,
then 0/1 binaries). Everything after that is tensor indexing.

Conventions (REFERENCE A2/A5, documented in docs/autoencoder.md):

- categorical: values are compared as strings; NaN/None become the category ``"nan"`` (as
  Morpheus's schemas do). Values below ``min_category_count`` in training, beyond
  ``max_categories``, or unseen in training map to the extra "other" class (the last index).
  Vocabularies are ordered by training count, so class 0 is the column's most frequent value.
- numeric: standard-scaled with the training mean and std (ddof 0; std 0 -> 1; never below the
  column's declared scale, see :meth:`FeatureEncoder.fit`). NaN and +-inf become the training
  mean (0 after scaling).
- binary: True for bool True, non-zero numbers and the strings true/t/yes/y/1 (any case);
  False for everything else, NaN/None included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from dfp_ray.schemas import MISSING_CATEGORY  # one literal for "missing" across mapping and model

OTHER_LABEL = "_other"
_TRUE_STRINGS = ["true", "t", "yes", "y", "1", "1.0"]


def embedding_dim(n_classes: int, max_dim: int = 600) -> int:
    """Morpheus/dfencoder's embedding-size rule, ``min(max_dim, round(1.6 * n**0.56))``.

    ``n_classes`` counts the "other" class. Python's round (half to even) is used on purpose:
    it is what dfencoder uses, so the same vocabulary gives the same layer sizes.
    """
    return max(1, min(max_dim, int(round(1.6 * n_classes**0.56))))


@dataclass
class EncodedFrame:
    """A frame encoded for the network.

    ``codes``: int64 [rows, n_categorical]; ``dense``: float32 [rows, n_numeric + n_binary]
    (scaled numerics first, then binaries as 0.0/1.0). Inputs and targets are the same tensors;
    swap noise is applied to copies of batches.
    """

    codes: torch.Tensor
    dense: torch.Tensor

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def to(self, device: torch.device | str) -> EncodedFrame:
        return EncodedFrame(self.codes.to(device), self.dense.to(device))

    def rows(self, start: int, stop: int) -> EncodedFrame:
        return EncodedFrame(self.codes[start:stop], self.dense[start:stop])


def _missing_columns(df: pd.DataFrame, columns: list[str]) -> list[str]:
    return [c for c in columns if c not in df.columns]


def _numeric_values(series: pd.Series, column: str) -> np.ndarray:
    """float64 values with NaN/inf kept as NaN; a clear error when a column is not numeric."""
    try:
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        example = series.dropna().iloc[:3].tolist()
        raise ValueError(
            f"numeric feature column {column!r} has non-numeric values (e.g. {example!r}); "
            f"convert it to numbers or declare it as categorical"
        ) from exc
    # a new array: to_numpy may return a view of the caller's frame, which must not change
    return np.where(np.isfinite(values), values, np.nan)


def binary_values(series: pd.Series) -> np.ndarray:
    """bool array following the module's binary convention (NaN/None -> False)."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return series.fillna(False).to_numpy(dtype=bool)
    if pd.api.types.is_numeric_dtype(dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return np.nan_to_num(values, nan=0.0) != 0.0
    text = series.astype(object).where(series.notna(), "").astype(str).str.strip().str.lower()
    return text.isin(_TRUE_STRINGS).to_numpy(dtype=bool)


@dataclass
class FeatureColumns:
    """A frame's feature columns decoded once, for any number of models to encode from.

    Categoricals are factorised (int codes into ``uniques``, the distinct values as strings,
    NaN -> "nan"), numerics are float64 with NaN for missing/inf, binaries are bool. Encoding
    rows for a model is then a lookup of its vocabulary on the few distinct values plus numpy
    indexing: a frame holding a thousand users scored by a thousand models is decoded by
    pandas once, not a thousand times (that per-call pandas work cost ~15 ms per model).
    """

    rows: int
    categorical: dict[str, tuple[np.ndarray, np.ndarray]]
    numeric: dict[str, np.ndarray]
    binary: dict[str, np.ndarray]

    @classmethod
    def from_frame(
        cls, df: pd.DataFrame, categorical: list[str], numeric: list[str], binary: list[str]
    ) -> FeatureColumns:
        missing = _missing_columns(df, list(categorical) + list(numeric) + list(binary))
        if missing:
            raise ValueError(f"frame lacks feature columns {missing}; it has {list(df.columns)}")
        cats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for column in categorical:
            codes, uniques = pd.factorize(df[column], use_na_sentinel=True)
            labels = [str(v) for v in np.asarray(uniques, dtype=object)] + [MISSING_CATEGORY]
            codes = np.where(codes < 0, len(labels) - 1, codes).astype(np.int64, copy=False)
            cats[column] = (codes, np.array(labels, dtype=object))
        return cls(
            rows=len(df),
            categorical=cats,
            numeric={c: _numeric_values(df[c], c) for c in numeric},
            binary={c: binary_values(df[c]) for c in binary},
        )


@dataclass
class FeatureEncoder:
    """Vocabularies and scalers learnt from training rows, and the frame -> tensor transform."""

    categorical: list[str]
    numeric: list[str]
    binary: list[str]
    vocabularies: dict[str, list[str]]
    numeric_mean: dict[str, float]
    numeric_std: dict[str, float]
    numeric_min: dict[str, float] = field(default_factory=dict)  # training range (original units);
    numeric_max: dict[str, float] = field(default_factory=dict)  # empty for models saved before it
    # categorical columns some of whose training rows fell into "other" (values below the column's
    # minimum count or beyond max_categories); empty for models saved before it was recorded
    trained_other: list[str] = field(default_factory=list)
    _classes: dict[str, dict[str, int]] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        df: pd.DataFrame,
        categorical: list[str],
        numeric: list[str],
        binary: list[str],
        min_category_count: int = 1,
        max_categories: int | None = None,
        numeric_scale: dict[str, float] | None = None,
        category_min_count: dict[str, int] | None = None,
    ) -> FeatureEncoder:
        """Learn vocabularies (most frequent first, ties by value) and numeric scalers from ``df``.

        ``numeric_scale`` (optional, per numeric column) is the smallest standard deviation the
        scaler may use: the feature's meaningful unit (1 for a counter, about an hour for a
        cyclic hour encoding). A column that (nearly) never varied in training would otherwise
        be divided by a tiny std, and one unit of change would look like hundreds of stds.
        Without a scale, a constant column gets std 1 (Morpheus's guard). ``category_min_count``
        overrides ``min_category_count`` per categorical column.
        """
        missing = _missing_columns(df, categorical + numeric + binary)
        if missing:
            raise ValueError(f"training frame lacks feature columns {missing}; it has {list(df.columns)}")
        return cls.fit_columns(
            FeatureColumns.from_frame(df, categorical, numeric, binary), None, categorical, numeric, binary,
            min_category_count, max_categories, numeric_scale=numeric_scale, category_min_count=category_min_count,
        )

    @classmethod
    def fit_columns(
        cls,
        columns: FeatureColumns,
        rows: int | None,
        categorical: list[str],
        numeric: list[str],
        binary: list[str],
        min_category_count: int = 1,
        max_categories: int | None = None,
        numeric_scale: dict[str, float] | None = None,
        category_min_count: dict[str, int] | None = None,
    ) -> FeatureEncoder:
        """:meth:`fit` on already decoded columns, from their first ``rows`` rows (all when None).

        Why: a fit decodes its frame once (:class:`FeatureColumns`) and learns the vocabularies
        from those codes (a ``bincount`` per column) and encodes its training and validation
        rows from the same decoding, instead of three passes of pandas work per column. For a
        user with a hundred rows that pandas work, not the arithmetic, was the cost (~45 ms
        per model). Same vocabularies and scalers as before, to the order of ties.
        """
        stop = columns.rows if rows is None else int(rows)
        vocabularies: dict[str, list[str]] = {}
        trained_other: list[str] = []
        for column in categorical:
            codes, labels = columns.categorical[column]
            counts = np.bincount(codes[:stop], minlength=len(labels))
            # labels as strings can repeat (NaN and "nan", 1 and "1" in an object column): one
            # entry per string, its counts summed; np.unique sorts them, so a stable sort by
            # count leaves ties in value order
            names, inverse = np.unique(labels.astype(str), return_inverse=True)
            totals = np.bincount(inverse.ravel(), weights=counts, minlength=len(names)).astype(np.int64)
            threshold = max(1, (category_min_count or {}).get(column, min_category_count))
            keep = np.flatnonzero(totals >= threshold)
            order = keep[np.argsort(-totals[keep], kind="stable")]
            if max_categories is not None:
                order = order[:max_categories]
            vocabularies[column] = [str(v) for v in names[order]]
            if totals[order].sum() < totals.sum():
                trained_other.append(column)
        means: dict[str, float] = {}
        stds: dict[str, float] = {}
        lows: dict[str, float] = {}
        highs: dict[str, float] = {}
        for column in numeric:
            values = columns.numeric[column][:stop]
            finite = values[~np.isnan(values)]
            mean = float(finite.mean()) if finite.size else 0.0
            std = float(finite.std()) if finite.size else 1.0  # ddof 0, like dfencoder's scaler
            means[column] = mean
            lows[column] = float(finite.min()) if finite.size else mean
            highs[column] = float(finite.max()) if finite.size else mean
            floor = float((numeric_scale or {}).get(column, 0.0))
            std = std if std > 0.0 and math.isfinite(std) else (floor or 1.0)
            stds[column] = max(std, floor)
        return cls(list(categorical), list(numeric), list(binary), vocabularies, means, stds, lows, highs,
                   trained_other)

    # ------------------------------------------------------------------ properties
    @property
    def feature_columns(self) -> list[str]:
        """Feature order used everywhere (loss matrix columns, results): numeric, binary, categorical."""
        return self.numeric + self.binary + self.categorical

    @property
    def cardinalities(self) -> list[int]:
        """Classes per categorical column, the "other" class included."""
        return [len(self.vocabularies[c]) + 1 for c in self.categorical]

    def _class_of(self, column: str) -> dict[str, int]:
        """value -> class code of ``column`` (built once per model)."""
        classes = self._classes.get(column)
        if classes is None:
            classes = self._classes[column] = {v: i for i, v in enumerate(self.vocabularies[column])}
        return classes

    # ------------------------------------------------------------------ transform
    def transform(self, df: pd.DataFrame) -> EncodedFrame:
        """Encode ``df`` (extra columns ignored) into CPU tensors; vectorised, no per-row Python."""
        return self.encode(FeatureColumns.from_frame(df, self.categorical, self.numeric, self.binary))

    def encode(self, columns: FeatureColumns, rows: np.ndarray | None = None) -> EncodedFrame:
        """Encode ``rows`` (positions; all when None) of decoded ``columns`` into CPU tensors."""
        missing = (
            [c for c in self.categorical if c not in columns.categorical]
            + [c for c in self.numeric if c not in columns.numeric]
            + [c for c in self.binary if c not in columns.binary]
        )
        if missing:
            raise ValueError(f"frame lacks feature columns {missing}")
        n = columns.rows if rows is None else len(rows)
        codes = np.empty((n, len(self.categorical)), dtype=np.int64)
        for j, column in enumerate(self.categorical):
            value_codes, labels = columns.categorical[column]
            classes = self._class_of(column)
            other = len(self.vocabularies[column])  # unseen -> "other"
            # a dict lookup per distinct value (few), then one numpy gather for all rows
            lookup = np.fromiter((classes.get(v, other) for v in labels), dtype=np.int64, count=len(labels))
            codes[:, j] = lookup[value_codes if rows is None else value_codes[rows]]
        dense = np.empty((n, len(self.numeric) + len(self.binary)), dtype=np.float32)
        for j, column in enumerate(self.numeric):
            values = columns.numeric[column] if rows is None else columns.numeric[column][rows]
            mean, std = self.numeric_mean[column], self.numeric_std[column]
            dense[:, j] = (np.where(np.isnan(values), mean, values) - mean) / std
        offset = len(self.numeric)
        for j, column in enumerate(self.binary):
            dense[:, offset + j] = columns.binary[column] if rows is None else columns.binary[column][rows]
        return EncodedFrame(torch.from_numpy(codes), torch.from_numpy(dense))

    # ------------------------------------------------------------------ decoding predictions
    def inverse_numeric(self, scaled: np.ndarray) -> np.ndarray:
        """[rows, n_numeric] scaled predictions -> original units (float64)."""
        mean = np.array([self.numeric_mean[c] for c in self.numeric], dtype=np.float64)
        std = np.array([self.numeric_std[c] for c in self.numeric], dtype=np.float64)
        return scaled.astype(np.float64) * std + mean

    def input_bounds(self) -> torch.Tensor | None:
        """[2, numeric + binary] lowest and highest scaled input the network saw in training
        (binary columns unbounded); None for a model saved without its training range."""
        if not self.numeric or any(c not in self.numeric_min or c not in self.numeric_max for c in self.numeric):
            return None
        bounds = torch.full((2, len(self.numeric) + len(self.binary)), math.inf, dtype=torch.float32)
        bounds[0] = -math.inf
        for j, c in enumerate(self.numeric):
            mean, std = self.numeric_mean[c], self.numeric_std[c]
            bounds[0, j] = (self.numeric_min[c] - mean) / std
            bounds[1, j] = (self.numeric_max[c] - mean) / std
        return bounds

    def other_fill_index(self) -> torch.Tensor | None:
        """[n_categorical] int64: the "other" class of every column in :attr:`trained_other`, -1
        for the others; None when no column trained on "other".

        Why: where training rows carry the "other" class (a host name seen once), a network fed
        that class learns to echo it back, so a value never seen before reconstructs as well
        as a usual one (on the real LANL sample a red-team destination no one had used lost
        less than a known one). The network is fed the column's most frequent value instead
        (class 0) while the target stays "other": its loss is then how unlikely a rare value is
        in this row's context, a rate learnt from the training rows' own rare values.
        """
        if not self.trained_other:
            return None
        return torch.tensor(
            [len(self.vocabularies[c]) if c in self.trained_other else -1 for c in self.categorical],
            dtype=torch.int64,
        )

    def category_labels(self, column: str) -> np.ndarray:
        """Object array of class labels for ``column``, index = class code (last = "other")."""
        return np.array(self.vocabularies[column] + [OTHER_LABEL], dtype=object)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "categorical": self.categorical,
            "numeric": self.numeric,
            "binary": self.binary,
            "vocabularies": self.vocabularies,
            "numeric_mean": self.numeric_mean,
            "numeric_std": self.numeric_std,
            "numeric_min": self.numeric_min,
            "numeric_max": self.numeric_max,
            "trained_other": self.trained_other,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureEncoder:
        return cls(
            categorical=list(data["categorical"]),
            numeric=list(data["numeric"]),
            binary=list(data["binary"]),
            vocabularies={k: [str(v) for v in vs] for k, vs in data["vocabularies"].items()},
            numeric_mean={k: float(v) for k, v in data["numeric_mean"].items()},
            numeric_std={k: float(v) for k, v in data["numeric_std"].items()},
            numeric_min={k: float(v) for k, v in data.get("numeric_min", {}).items()},
            numeric_max={k: float(v) for k, v in data.get("numeric_max", {}).items()},
            trained_other=[str(c) for c in data.get("trained_other", [])],
        )
