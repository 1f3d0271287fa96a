"""Training (Morpheus's ``DFPTraining``): fit one autoencoder on one user's (or the generic model's) rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder, TrainingReport
from dfp_ray.pipeline.data_prep import prepare_features, prepare_features_many
from dfp_ray.pipeline.frames import PreparedFrame, UserFrame
from dfp_ray.schemas import SourceSchema


def too_few_rows(rows: int, min_rows: int) -> str | None:
    """Why a frame is too small to train on, or None when it is not.

    >>> too_few_rows(4, 10)
    '4 rows < min_train_rows=10'
    >>> too_few_rows(10, 10) is None
    True
    """
    return f"{rows} rows < min_train_rows={min_rows}" if rows < min_rows else None


def train_model(
    frame: UserFrame,
    schema: SourceSchema,
    params: AutoencoderParams,
    *,
    threads: int | Callable[[], int] | None = None,
    prior: DFPAutoencoder | None = None,
    extra_rows: PreparedFrame | None = None,
    previous: DFPAutoencoder | None = None,
) -> tuple[DFPAutoencoder, TrainingReport, PreparedFrame]:
    """Data prep, then fit: ``(model, report, prepared rows)``.

    ``threads`` is the fit's intra-op thread count, or a callable asked before every epoch
    (how a running fit is widened, see :meth:`dfp_ray.controllers.user.UserController.widen_fit`).
    ``prior`` (optional): the generic model, a prior for the user's loss statistics
    (``params.prior_rows``). Numeric features are never scaled below the unit the schema
    declares for them (counters: one event).
    ``extra_rows``: rows already prepared (analyst-confirmed benign events, see
    :mod:`dfp_ray.labels`) placed before the time-ordered rows, so they are always in the
    training part of the split, never in its validation tail.
    ``previous`` (optional): the version this model replaces; with ``params.warm_start``
    'previous' the fit starts from its weights (see :mod:`dfp_ray.autoencoder.warm`).
    """
    prepared = _prepared(frame, schema, extra_rows)
    model = _new_model(schema, params)
    report = model.fit(prepared, threads=threads, prior=prior, init_from=_warm_from(params, previous))
    return model, report, prepared


def train_models(
    frames: Sequence[UserFrame],
    schema: SourceSchema,
    params: AutoencoderParams,
    *,
    threads: Callable[[], int] | None = None,
    extra_rows: Sequence[PreparedFrame | None] | None = None,
    prior: DFPAutoencoder | None = None,
    previous: Sequence[DFPAutoencoder | None] | None = None,
) -> list[tuple[DFPAutoencoder, TrainingReport, PreparedFrame]]:
    """:func:`train_model` for many users at once: the same models, those with fewer than
    ``params.group_max_rows`` rows fitted ``params.group_size`` at a time as one stacked network
    (see :func:`dfp_ray.autoencoder.dfp_autoencoder.fit_many`)."""
    from dfp_ray.autoencoder.dfp_autoencoder import fit_many

    extras = list(extra_rows) if extra_rows is not None else [None] * len(frames)
    starts = [_warm_from(params, m) for m in (previous if previous is not None else [None] * len(frames))]
    prepared = [_with_extra(f, e) for f, e in zip(prepare_features_many(frames, schema), extras, strict=True)]
    models = [_new_model(schema, params) for _ in frames]
    small = [i for i, f in enumerate(prepared) if len(f) < params.group_max_rows]
    reports: dict[int, TrainingReport] = {}
    if small:
        fitted = fit_many([models[i] for i in small], [prepared[i] for i in small], [prior] * len(small),
                          group_size=params.group_size, threads=threads, init_from=[starts[i] for i in small])
        reports.update(zip(small, fitted, strict=True))
    for i, (model, frame) in enumerate(zip(models, prepared, strict=True)):
        if i not in reports:
            reports[i] = model.fit(frame, threads=threads, prior=prior, init_from=starts[i])
    return [(models[i], reports[i], prepared[i]) for i in range(len(models))]


def _warm_from(params: AutoencoderParams, previous: DFPAutoencoder | None) -> DFPAutoencoder | None:
    """The model a fit starts from: ``previous`` when ``params.warm_start`` asks for it."""
    return previous if params.warm_start == "previous" else None


def _prepared(frame: UserFrame, schema: SourceSchema, extra_rows: PreparedFrame | None) -> PreparedFrame:
    return _with_extra(prepare_features(frame, schema), extra_rows)


def _with_extra(prepared: PreparedFrame, extra_rows: PreparedFrame | None) -> PreparedFrame:
    if extra_rows is not None and len(extra_rows):
        prepared = pd.concat([extra_rows.reindex(columns=prepared.columns), prepared], ignore_index=True)
    return prepared


def _new_model(schema: SourceSchema, params: AutoencoderParams) -> DFPAutoencoder:
    return DFPAutoencoder(
        categorical=schema.features.categorical, numeric=schema.features.numeric,
        binary=schema.features.binary, params=params, numeric_scale=schema.numeric_scales(),
        category_min_count=schema.features.min_count, above_only=schema.above_only_features(),
    )
