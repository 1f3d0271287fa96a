"""Inference (Morpheus's ``DFPInference``): score each user's rows with the user's model, else the generic one.

:func:`score_users` resolves every user's model once and scores the rows that share a model
in one call; :func:`score_groups` scores one frame with many models into one output frame.

At inference a user actor holds rows of hundreds of users, most scored by their own model.
Decoding the feature columns is pandas work with a fixed cost per call; done per model it
dominated inference (~15 ms per model, so ~15 s for 1,000 users). Here the frame's features
are decoded once (:class:`~dfp_ray.autoencoder.FeatureColumns`), every model encodes and
scores its rows with numpy/torch only, and the result columns of all groups are written into
one set of arrays, so the output DataFrame is built once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import numpy as np
import pandas as pd

from dfp_ray.autoencoder import DFPAutoencoder, FeatureColumns
from dfp_ray.pipeline.frames import PreparedFrame, ScoredFrame
from dfp_ray.pipeline.post_processing import add_postprocessing
from dfp_ray.registry import ModelRef
from dfp_ray.results import InferResult
from dfp_ray.schemas import SourceSchema

ModelResolver = Callable[[str], tuple[DFPAutoencoder, ModelRef]]
"""A user's name -> the model that scores the user and its registry reference; raises when none."""


def score_users(
    prepared: PreparedFrame, schema: SourceSchema, resolve: ModelResolver, *, worker: int = -1
) -> tuple[ScoredFrame, list[InferResult]]:
    """Score every row of ``prepared`` (features computed, default index), user by user.

    Each user's model is resolved once; rows that share a model (e.g. every user on the
    generic model) are scored in one call, so thousands of users with a few events each cost
    a few model calls, not thousands. A user whose model cannot be resolved, or needs columns
    the frame lacks, is reported in its result and left out of the output.
    """
    available = set(prepared.columns)
    users = prepared[schema.user_column].astype(str)
    results: list[InferResult] = []
    by_model: dict[str, tuple[DFPAutoencoder, list[np.ndarray]]] = {}
    for user, idx in users.groupby(users, sort=False).indices.items():
        try:
            model, ref = resolve(user)
            lacking = [c for c in model.feature_columns if c not in available]
            if lacking:
                raise ValueError(f"model {ref.label} needs feature columns {lacking} that the schema does not produce")
        except Exception as exc:  # no model, registry down, another feature set: this user only
            results.append(InferResult(user=user, rows=len(idx), model_version=None, seconds=0.0, worker=worker,
                                       error=f"{type(exc).__name__}: {exc}"))
            continue
        by_model.setdefault(ref.label, (model, []))[1].append(idx)
        results.append(InferResult(user=user, rows=len(idx), model_version=ref.label, seconds=0.0, worker=worker))
    groups = [(model, label, np.concatenate(parts)) for label, (model, parts) in by_model.items()]
    return score_groups(prepared, schema, groups), results


def score_groups(
    prepared: pd.DataFrame,
    schema: SourceSchema,
    groups: list[tuple[DFPAutoencoder, str, np.ndarray]],
    *,
    detected_at: datetime | None = None,
) -> pd.DataFrame:
    """Score ``prepared`` (features computed, default RangeIndex) group by group.

    ``groups``: ``(model, model_version label, row positions)``; rows in no group are left
    out. Returns the scored rows (input columns, result columns, ``event_time``,
    ``model_version``) in time order (stable).
    """
    if not groups:
        return prepared.iloc[0:0]
    models = [model for model, _, _ in groups]
    columns = FeatureColumns.from_frame(  # every feature any of the models uses, decoded once
        prepared,
        *(list(dict.fromkeys(c for m in models for c in getattr(m, group))) for group in ("categorical", "numeric", "binary")),
    )
    sizes = [len(rows) for _, _, rows in groups]
    per_group = [model.score_columns(columns, rows) for model, _, rows in groups]
    names = list(dict.fromkeys(name for result in per_group for name in result))
    # Groups are contiguous in the output, so each column is the concatenation of its parts;
    # a model with another feature set contributes NaN for the columns it lacks.
    results = {
        name: np.concatenate(
            [result[name] if name in result else np.full(size, np.nan) for result, size in zip(per_group, sizes, strict=True)]
        )
        for name in names
    }
    rows = np.concatenate([rows for _, _, rows in groups])
    versions = np.repeat(np.array([label for _, label, _ in groups], dtype=object), sizes)
    out = pd.concat(
        [prepared.take(rows).reset_index(drop=True), pd.DataFrame(results, copy=False)], axis=1
    )
    out = add_postprocessing(out, model_version=pd.Series(versions, index=out.index), detected_at=detected_at)
    return out.sort_values(schema.time_column, kind="stable").reset_index(drop=True)
