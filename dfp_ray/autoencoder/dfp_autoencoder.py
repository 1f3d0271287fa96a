"""``DFPAutoencoder``: fit on a user's events, score events as per-feature z-scores.

The public face of the package; the work is in encoding.py (frame -> tensors), model.py
(network), trainer.py (training loop, loss statistics), scoring.py (results) and io.py
(save/load without pickle).

Why over ~400 lines: the model's public API (fit, score, save/load, thresholds, explanations)
over the encoder and trainer modules.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import io as model_io
from . import kernels
from .calibration import DEFAULT_ALERT_RATE, Calibration, Threshold, threshold_for
from .encoding import EncodedFrame, FeatureColumns, FeatureEncoder, embedding_dim
from .model import DFPNetwork
from .params import AutoencoderParams
from .scoring import raw_scores, score_encoded, score_frame
from .trainer import (
    LossStatistics,
    TrainingReport,
    auto_precision,
    loss_statistics,
    native_precision,
    robust_scale,
    rows_per_epoch,
    set_threads,
    torch_threads,
    train_network,
)
from .warm import incompatibility, warm_init

log = logging.getLogger(__name__)
_GLOBAL_RNG_LOCK = threading.Lock()


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


@contextlib.contextmanager
def _seeded_global_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """torch's global RNG, seeded, for this thread alone; its previous state restored after.

    Initial weights (and dropout) draw from the global RNG. Fits running in several threads
    of one process (an actor with ``ray.actor_concurrency`` > 1) would otherwise interleave
    their draws and a seeded fit would not give the same model twice.
    """
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when available else CPU; a clear error when CUDA is asked for but absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {device!r} requested but torch sees no CUDA GPU "
                f"(torch {torch.__version__}); use device 'auto' or 'cpu'"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return resolved


def _check_features(categorical: list[str], numeric: list[str], binary: list[str]) -> None:
    groups = {"categorical": categorical, "numeric": numeric, "binary": binary}
    for name, columns in groups.items():
        if isinstance(columns, str) or not all(isinstance(c, str) and c for c in list(columns)):
            raise ValueError(f"{name} must be a list of non-empty column names, got {columns!r}")
    seen: dict[str, str] = {}
    for name, columns in groups.items():
        for column in columns:
            if column in seen:
                raise ValueError(
                    f"feature column {column!r} is listed twice ({seen[column]} and {name}); "
                    f"each column must have exactly one type"
                )
            seen[column] = name
    if not seen:
        raise ValueError("no feature columns: give at least one categorical, numeric or binary column")


@dataclass
class _FitState:
    """A fit between its set-up and its end (see :meth:`DFPAutoencoder._begin_fit`)."""

    started: float
    n_rows: int
    n_val: int
    device: torch.device
    encoder: FeatureEncoder
    train: EncodedFrame
    val: EncodedFrame | None
    network: DFPNetwork
    generator: torch.Generator
    elapsed: float | None = None  # grouped fits: own set-up + share of the group's loop (None: wall time)
    warm_started: bool = False
    warm_start_reason: str | None = None


class DFPAutoencoder:
    """Morpheus-compatible DFP autoencoder (see docs/autoencoder.md), implemented from scratch in torch.

    >>> import tempfile
    >>> import pandas as pd
    >>> from dfp_ray.autoencoder import AutoencoderParams
    >>> rows = pd.DataFrame({"reason": ["user_approved", "user_approved", "invalid_passcode"] * 20,
    ...                      "logcount": [float(i % 5) for i in range(60)], "result": [True, True, False] * 20})
    >>> params = AutoencoderParams(encoder_layers=[8], decoder_layers=[8], epochs=2, device="cpu", seed=1)
    >>> model = DFPAutoencoder(categorical=["reason"], numeric=["logcount"], binary=["result"], params=params)
    >>> report = model.fit(rows)                 # rows in time order; the last 10% validate
    >>> scores = model.score(rows.head(3))       # <f>_loss, <f>_z_loss, <f>_pred, max_abs_z, mean_abs_z
    >>> sorted(c for c in scores.columns if c.startswith("reason"))
    ['reason_loss', 'reason_pred', 'reason_z_loss']
    >>> with tempfile.TemporaryDirectory() as d:
    ...     model.save(d)
    ...     again = DFPAutoencoder.load(d, device="cpu")
    >>> bool((again.score(rows.head(3))["mean_abs_z"] == scores["mean_abs_z"]).all())
    True
    """

    def __init__(
        self,
        categorical: list[str],
        numeric: list[str],
        binary: list[str],
        params: AutoencoderParams | None = None,
        numeric_scale: dict[str, float] | None = None,
        category_min_count: dict[str, int] | None = None,
        above_only: list[str] | None = None,
    ) -> None:
        _check_features(categorical, numeric, binary)
        stray = [f for f in (above_only or []) if f not in numeric]
        if stray:
            raise ValueError(f"above_only names {stray}, which are not numeric features ({list(numeric)})")
        categorical, numeric, binary = list(categorical), list(numeric), list(binary)
        if params is not None and not isinstance(params, AutoencoderParams):
            raise TypeError(f"params must be an AutoencoderParams, got {type(params).__name__}")
        self.categorical = categorical
        self.numeric = numeric
        self.binary = binary
        self.params = params if params is not None else AutoencoderParams()
        # What was asked for: a fit resolves the width rule into ``params`` (the widths used, which
        # are saved with the model) and a refit resolves it again from here.
        self.requested_params = self.params
        self.encoder: FeatureEncoder | None = None
        self.network: DFPNetwork | None = None
        self.embedding_dims: list[int] = []
        # Per categorical column: rank of its low-rank output head, None = full (params.head_rank).
        self.head_ranks: list[int | None] = []
        self.loss_stats: dict[str, dict[str, float]] | None = None
        self.n_train_rows = 0
        self.training_report: TrainingReport | None = None
        self.device: torch.device | None = None
        self._stats: LossStatistics | None = None
        # Smallest scaler std per numeric column (its meaningful unit; see FeatureEncoder.fit).
        self.numeric_scale = {c: float(v) for c, v in (numeric_scale or {}).items() if c in numeric}
        # Per categorical column: values rarer than this in training share the "other" class.
        self.category_min_count = {c: int(v) for c, v in (category_min_count or {}).items() if c in categorical}
        # Numeric features whose z counts only above the prediction (see trainer.LossStatistics).
        self.above_only = [f for f in numeric if f in set(above_only or [])]
        # Held-out and in-sample score distributions (see calibration.py); None until fitted.
        self.calibration: Calibration | None = None

    # ------------------------------------------------------------------ introspection
    @property
    def feature_columns(self) -> list[str]:
        """Features in result order: numeric, then binary, then categorical."""
        return self.numeric + self.binary + self.categorical

    @property
    def is_fitted(self) -> bool:
        return self.network is not None

    def __repr__(self) -> str:
        state = f"fitted on {self.n_train_rows} rows" if self.is_fitted else "not fitted"
        return (
            f"DFPAutoencoder(categorical={self.categorical}, numeric={self.numeric}, "
            f"binary={self.binary}, {state})"
        )

    # ------------------------------------------------------------------ building
    def _build_network(self, encoder: FeatureEncoder, head_ranks: list[int | None] | None = None) -> DFPNetwork:
        """The network for ``encoder``'s vocabularies; ``head_ranks`` as saved with a model (None:
        from ``params.head_rank``)."""
        p = self.params
        self.embedding_dims = [embedding_dim(n, p.max_embedding_dim) for n in encoder.cardinalities]
        if head_ranks is None:
            head_ranks = p.head_ranks_for(encoder.cardinalities)
        self.head_ranks = list(head_ranks)
        return DFPNetwork(
            n_numeric=len(encoder.numeric),
            n_binary=len(encoder.binary),
            cardinalities=encoder.cardinalities,
            embedding_dims=self.embedding_dims,
            encoder_layers=p.encoder_layers,
            decoder_layers=p.decoder_layers,
            activation=p.activation,
            dropout=p.dropout,
            head_ranks=self.head_ranks,
        )

    def _guard_inputs(self, network: DFPNetwork, encoder: FeatureEncoder, device: torch.device) -> None:
        """Clamp the network's numeric inputs to their training range (``clip_inputs``) and feed
        the "other" class of columns that trained on it as the most frequent value (``other_input``)."""
        bounds = encoder.input_bounds() if self.params.clip_inputs else None
        network.input_bounds = None if bounds is None else bounds.to(device)
        fill = encoder.other_fill_index() if self.params.other_input == "most_frequent" else None
        network.other_index = None if fill is None else fill.to(device)

    def _use_onednn(self, device: torch.device) -> bool:
        """Whether fp32 CPU linear layers run on oneDNN (see kernels.py and ``cpu_matmul``)."""
        choice = self.params.cpu_matmul
        if device.type != "cpu" or choice == "aten" or self.params.precision == "bf16":
            return False
        if not kernels.onednn_available():
            if choice == "onednn":
                raise RuntimeError(
                    "cpu_matmul='onednn' but this torch build has no working oneDNN linear operator "
                    f"(torch {torch.__version__}); use cpu_matmul 'auto' or 'aten'"
                )
            return False
        return choice == "onednn" or kernels.onednn_is_faster()

    def _above_mask(self) -> np.ndarray | None:
        if not self.above_only:
            return None
        return np.array([f in self.above_only for f in self.feature_columns], dtype=bool)

    def _set_stats(self, stats: LossStatistics) -> None:
        stats.above_only = self._above_mask()
        self._stats = stats
        assert stats.scale is not None
        self.loss_stats = {
            f: {"mean": float(stats.mean[j]), "std": float(stats.std[j]), "scale": float(stats.scale[j])}
            for j, f in enumerate(self.feature_columns)
        }

    def _prior_std(self, prior: DFPAutoencoder | None) -> torch.Tensor | None:
        """The prior model's loss stds in this model's feature order (None if it lacks a feature)."""
        if prior is None or prior.loss_stats is None:
            return None
        if any(f not in prior.loss_stats for f in self.feature_columns):
            return None
        return torch.tensor([prior.loss_stats[f]["std"] for f in self.feature_columns], dtype=torch.float64)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        df: pd.DataFrame,
        progress: bool = False,
        threads: Callable[[], int] | None = None,
        prior: DFPAutoencoder | None = None,
        init_from: DFPAutoencoder | None = None,
    ) -> TrainingReport:
        """Train on ``df`` (rows already in time order); the last ``validation_fraction`` validate.

        Vocabularies and scalers are learnt from the training rows only. Afterwards the loss
        statistics (per-feature mean/std of per-row losses on the unswapped training rows) are
        computed in batches, then the calibration: the scores of the held-out validation rows
        and of up to ``calibration_rows`` training rows (see calibration.py). Refitting starts
        from scratch. ``threads`` (optional) is asked before every epoch and before the loss
        statistics how many intra-op threads to use (``params.num_threads`` fixes the start);
        the caller's thread count is restored after. ``prior`` (optional, e.g. the generic
        model) lends its loss stds to features this model saw little variation of
        (``params.prior_rows``). ``init_from`` (optional, the version this fit replaces): start
        from its weights and train at most ``params.warm_start_epochs`` epochs (see warm.py);
        a model it cannot start from gives a cold fit, the report says why.
        """
        with torch_threads(_fit_threads(self.params, threads)), contextlib.ExitStack() as global_rng:
            state = self._begin_fit(df, global_rng, init_from)
            facts = train_network(
                state.network, state.train, state.val, self.params, state.device, state.generator,
                progress=progress, threads=threads,
            )
            if threads is not None:
                set_threads(threads())
            return self._finish_fit(state, facts, prior)

    def _begin_fit(
        self, df: pd.DataFrame, global_rng: contextlib.ExitStack, init_from: DFPAutoencoder | None = None
    ) -> _FitState:
        """Everything before the training loop: split, vocabularies, encoding, initial weights."""
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"fit() needs a pandas DataFrame, got {type(df).__name__}")
        n_rows = len(df)
        if n_rows < 2:
            raise ValueError(
                f"fit() needs at least 2 rows to train a model, got {n_rows}; score users with fewer "
                f"events with a model trained on more rows (e.g. the generic one)"
            )
        p = self.params = self.requested_params
        started = time.perf_counter()
        n_val = math.ceil(n_rows * p.validation_fraction) if p.validation_fraction > 0 else 0
        n_val = min(n_val, n_rows - 1)
        n_train = n_rows - n_val
        device = resolve_device(p.device)
        if p.precision == "bf16" and device.type == "cpu" and kernels.cpu_has_native_bf16() is False:
            _warn_once(
                "precision='bf16' on a CPU without native bfloat16 (no avx512_bf16/amx_bf16 flag): torch "
                "emulates it, ~16x slower than fp32 here (measured on an AVX2 AMD Zen 3); use precision 'fp32'"
            )
        # decoded once: the vocabularies and scalers come from the first n_train rows, the
        # training and validation tensors from the same decoding
        columns = FeatureColumns.from_frame(df, self.categorical, self.numeric, self.binary)
        encoder = FeatureEncoder.fit_columns(
            columns, n_train, self.categorical, self.numeric, self.binary, p.min_category_count,
            p.max_categories, numeric_scale=self.numeric_scale, category_min_count=self.category_min_count,
        )
        train = encoder.encode(columns, np.arange(n_train)).to(device)
        val: EncodedFrame | None = encoder.encode(columns, np.arange(n_train, n_rows)).to(device) if n_val else None
        if p.precision == "auto":  # the precision this fit runs in, stored with it (params)
            p = self.params = p.model_copy(update={"precision": auto_precision(len(train), p, device)})
        if p.width_rule != "fixed":  # the widths this model's rows get, stored with it (params)
            encoder_layers, decoder_layers = p.widths_for(len(train))
            p = self.params = p.model_copy(
                update={"encoder_layers": encoder_layers, "decoder_layers": decoder_layers, "width_rule": "fixed"}
            )
        with contextlib.ExitStack() as init_rng:
            init_rng.enter_context(_seeded_global_rng(p.seed, device))
            network = self._build_network(encoder).to(device)  # initial weights: global RNG
            if p.dropout:  # dropout draws from the global RNG in every step: keep it to the end
                global_rng.enter_context(init_rng.pop_all())
        warm_reason = None
        if init_from is not None:
            warm_reason = incompatibility(network, encoder, p.activation, init_from.network, init_from.encoder,
                                          init_from.params.activation)
            if warm_reason is None:
                assert init_from.network is not None and init_from.encoder is not None
                warm_init(network, encoder, init_from.network, init_from.encoder)
                # the epochs this fit runs, stored with it (params)
                p = self.params = p.model_copy(update={"epochs": min(p.epochs, p.warm_start_epochs)})
            else:
                log.info("warm start not possible (%s): cold fit", warm_reason)
        network.use_onednn = self._use_onednn(device)
        self._guard_inputs(network, encoder, device)
        generator = torch.Generator(device=device)
        if p.seed is not None:
            generator.manual_seed(p.seed)
        else:
            generator.seed()
        return _FitState(started=started, n_rows=n_rows, n_val=n_val, device=device, encoder=encoder,
                         train=train, val=val, network=network, generator=generator,
                         warm_started=init_from is not None and warm_reason is None, warm_start_reason=warm_reason)

    def _finish_fit(self, state: _FitState, facts: dict, prior: DFPAutoencoder | None) -> TrainingReport:
        """Everything after the training loop: loss statistics, calibration, the report."""
        p = self.params
        finishing = time.perf_counter()
        network, train, val, device = state.network, state.train, state.val, state.device
        stats = loss_statistics(network, train, p.eval_batch_size, device, p.precision)
        stats.scale = robust_scale(stats.std, p.loss_std_floor, self._prior_std(prior), len(train), p.prior_rows)
        stats.above_only = self._above_mask()  # before calibration: held-out rows score as new ones will
        holdout = (
            raw_scores(network, val, stats, p.eval_batch_size, device, p.precision) if val is not None else np.empty(0)
        )
        in_sample = np.empty(0)
        if p.calibration_rows:
            picks = np.unique(np.linspace(0, len(train) - 1, min(p.calibration_rows, len(train))).astype(np.int64))
            index = torch.from_numpy(picks).to(device)
            sample = train if len(picks) == len(train) else EncodedFrame(train.codes[index], train.dense[index])
            in_sample = raw_scores(network, sample, stats, p.eval_batch_size, device, p.precision)

        self.encoder, self.network, self.device = state.encoder, network, device
        self.n_train_rows = len(train)
        self._set_stats(stats)
        self.calibration = Calibration.from_scores(holdout, in_sample)
        val_means = facts.pop("val_feature_means")
        features = self.feature_columns
        self.training_report = TrainingReport(
            **facts,
            train_feature_loss={f: float(stats.mean[j]) for j, f in enumerate(features)},
            val_feature_loss=(
                {f: float(val_means[j]) for j, f in enumerate(features)} if val_means is not None else {}
            ),
            seconds=(
                time.perf_counter() - state.started if state.elapsed is None
                else state.elapsed + time.perf_counter() - finishing
            ),
            rows=state.n_rows,
            train_rows=len(train),
            val_rows=state.n_val,
            device=str(device),
            epoch_rows=rows_per_epoch(len(train), self.params),
            precision=self.params.precision,
            warm_started=state.warm_started,
            warm_start_reason=state.warm_start_reason,
        )
        return self.training_report

    # ------------------------------------------------------------------ score
    def _require_fitted(self) -> None:
        if self.network is None or self.encoder is None or self._stats is None:
            raise RuntimeError("this DFPAutoencoder is not fitted: call fit() or DFPAutoencoder.load() first")

    def threshold(
        self, alert_rate: float = DEFAULT_ALERT_RATE, population: Calibration | None = None, *, generic: bool = False
    ) -> Threshold | None:
        """The ``mean_abs_z`` above which this model flags ``alert_rate`` of normal events, and how
        it was estimated (see calibration.py); None for a model saved without a calibration.
        ``population``: the pooled held-out scores of the source's user models, which set the
        threshold of users with little history; ``generic``: this is the generic model."""
        # memoised: the per-request scorer asks it per model per call (~0.25 ms of quantiles each);
        # keyed by the calibration objects themselves (never mutated, only replaced)
        memo: dict[tuple, tuple] = self.__dict__.setdefault("_thresholds", {})  # made at first use
        key = (id(self.calibration), id(population), alert_rate, generic)
        hit = memo.get(key)
        if hit is not None and hit[0] is self.calibration and hit[1] is population:
            return hit[2]
        found = threshold_for(self.calibration, alert_rate, population, generic=generic)
        if len(memo) >= 16:
            memo.clear()
        memo[key] = (self.calibration, population, found)
        return found

    def score(
        self,
        df: pd.DataFrame,
        alert_rate: float = DEFAULT_ALERT_RATE,
        population: Calibration | None = None,
        *,
        generic: bool = False,
    ) -> pd.DataFrame:
        """Per-event results with the index of ``df``: for each feature f ``<f>_loss``,
        ``<f>_z_loss``, ``<f>_pred``; then ``max_abs_z`` and ``mean_abs_z``; and, for a
        calibrated model, ``alert_threshold`` (see :meth:`threshold`), ``anomaly_score``
        (``mean_abs_z / alert_threshold``: above 1 is an alert) and ``threshold_source``.

        Extra columns in ``df`` are ignored; unseen categories score against the "other" class.
        """
        self._require_fitted()
        assert self.network is not None and self.encoder is not None and self._stats is not None
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"score() needs a pandas DataFrame, got {type(df).__name__}")
        p = self.params
        with torch_threads(p.num_threads):
            return score_frame(
                self.network, self.encoder, self._stats, df, p.eval_batch_size, self.device, p.precision,
                threshold=self.threshold(alert_rate, population, generic=generic),
            )

    def score_columns(
        self,
        columns: FeatureColumns,
        rows: np.ndarray | None = None,
        alert_rate: float = DEFAULT_ALERT_RATE,
        population: Calibration | None = None,
        *,
        generic: bool = False,
    ) -> dict[str, np.ndarray]:
        """:meth:`score`'s result columns for ``rows`` (positions) of a frame decoded once with
        :meth:`FeatureColumns.from_frame`; lets one frame be scored by many models cheaply."""
        self._require_fitted()
        assert self.network is not None and self.encoder is not None and self._stats is not None
        p = self.params
        with torch_threads(p.num_threads):
            return score_encoded(
                self.network, self.encoder, self._stats, self.encoder.encode(columns, rows),
                p.eval_batch_size, self.device, p.precision,
                threshold=self.threshold(alert_rate, population, generic=generic),
            )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the model to directory ``path``: model.safetensors + model.json (no pickle)."""
        model_io.save_model(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> DFPAutoencoder:
        """Load a model written by :meth:`save` onto ``device`` ('auto', 'cpu', 'cuda', 'cuda:N')."""
        metadata: dict[str, Any] = model_io.read_metadata(path)
        params = AutoencoderParams.model_validate({**metadata["params"], "device": device})
        features = metadata["features"]
        # models saved before above_only score every feature two-sided
        model = cls(features["categorical"], features["numeric"], features["binary"], params,
                    above_only=features.get("above_only", []))
        encoder = FeatureEncoder.from_dict(metadata["encoder"])
        with torch.device("meta"):  # no random init (and no global RNG use) for weights we overwrite
            # saved with the model; models from before low-rank heads have full ones
            network = model._build_network(encoder, metadata.get("head_ranks") or [None] * len(encoder.cardinalities))
        if model.embedding_dims != list(metadata["embedding_dims"]):
            raise ValueError(
                f"{path}: embedding sizes in model.json {metadata['embedding_dims']} do not match the "
                f"vocabularies ({model.embedding_dims}); the file was edited or is corrupt"
            )
        network.load_state_dict(model_io.read_weights(path), strict=True, assign=True)
        resolved = resolve_device(device)
        if params.precision == "bf16" and native_precision(resolved) != "bf16":
            # trained where bf16 is native; here it would be emulated (~16x slower): score in fp32
            log.info("%s: trained in bf16, scored in fp32 on %s (no native bfloat16 here)", path, resolved)
            model.params = model.requested_params = params.model_copy(update={"precision": "fp32"})
        network.use_onednn = model._use_onednn(resolved)
        model.encoder, model.network, model.device = encoder, network.to(resolved).eval(), resolved
        model._guard_inputs(network, encoder, resolved)
        order = model.feature_columns
        stats = metadata["loss_stats"]
        model._set_stats(
            LossStatistics(
                mean=torch.tensor([stats[f]["mean"] for f in order], dtype=torch.float64),
                std=torch.tensor([stats[f]["std"] for f in order], dtype=torch.float64),
                # format 1 had no scale: z-scores divided by the plain std
                scale=torch.tensor([stats[f].get("scale", stats[f]["std"]) for f in order], dtype=torch.float64),
            )
        )
        model.numeric_scale = {k: float(v) for k, v in metadata.get("numeric_scale", {}).items()}
        model.category_min_count = {k: int(v) for k, v in metadata.get("category_min_count", {}).items()}
        if metadata.get("calibration") is not None:
            model.calibration = Calibration.model_validate(metadata["calibration"])
        model.n_train_rows = int(metadata["n_train_rows"])
        if metadata.get("training_report") is not None:
            model.training_report = TrainingReport.model_validate(metadata["training_report"])
        return model


def _fit_threads(params: AutoencoderParams, threads: Callable[[], int] | None) -> int | None:
    """Threads a fit starts with (None: leave torch's setting): ``params.num_threads``, else the
    current count when an owner's ``threads`` callable will change it (restored after)."""
    if params.num_threads is not None or threads is None:
        return params.num_threads
    return torch.get_num_threads()


def fit_many(
    models: Sequence[DFPAutoencoder],
    frames: Sequence[pd.DataFrame],
    priors: Sequence[DFPAutoencoder | None] | None = None,
    *,
    group_size: int = 32,
    threads: Callable[[], int] | None = None,
    init_from: Sequence[DFPAutoencoder | None] | None = None,
) -> list[TrainingReport]:
    """``models[i].fit(frames[i], prior=priors[i], init_from=init_from[i])`` for every i, small
    models trained in groups (a warm-started model's initial weights carry into its group).

    The result is each model's own fit (see :mod:`dfp_ray.autoencoder.batched`: same initial
    weights, random draws, schedule and stopping; equal up to floating-point summation order);
    only the wall time differs. Models whose networks have the same layout and whose parameters
    are equal train ``group_size`` at a time; the others (dropout, layers wider than
    ``group_max_width``, a single model, differing parameters) train one by one. Each report's ``seconds`` is the model's own set-up and
    statistics plus an equal share of its group's training loop.
    """
    from .batched import FitInput, can_group, signature, train_group

    if len(models) != len(frames):
        raise ValueError(f"fit_many() needs one frame per model, got {len(models)} models and {len(frames)} frames")
    priors = list(priors) if priors is not None else [None] * len(models)
    starts = list(init_from) if init_from is not None else [None] * len(models)
    if len(starts) != len(models):
        raise ValueError(f"fit_many() needs one init_from entry per model, got {len(starts)} for {len(models)}")
    reports: list[TrainingReport | None] = [None] * len(models)
    if not models:
        return []
    with torch_threads(_fit_threads(models[0].params, threads)):
        if threads is not None:
            set_threads(threads())
        states: dict[int, _FitState] = {}
        groups: dict[tuple, list[int]] = {}
        for i, (model, frame) in enumerate(zip(models, frames, strict=True)):
            if model.requested_params.dropout:  # its own fit, global random stream and all
                reports[i] = model.fit(frame, threads=threads, prior=priors[i], init_from=starts[i])
                continue
            with contextlib.ExitStack() as global_rng:
                state = states[i] = model._begin_fit(frame, global_rng, starts[i])
            state.elapsed = time.perf_counter() - state.started
            if (not can_group(model.params) or rows_per_epoch(len(state.train), model.params) < len(state.train)
                    or state.network.low_rank):
                # too wide to gain, sampled epochs (large frames, which gain nothing) or a low-rank
                # head (a vocabulary of hundreds: bound by arithmetic, and not stacked): alone
                facts = train_network(state.network, state.train, state.val, model.params, state.device,
                                      state.generator, threads=threads)
                state.elapsed = None
                reports[i] = model._finish_fit(state, facts, priors[i])
                continue
            key = (signature(state.network), str(state.device), model.params.model_dump_json())
            groups.setdefault(key, []).append(i)
        size = max(1, group_size)
        for members in groups.values():
            # a group's steps are as wide as its largest member's batch (the others are padded):
            # neighbours in row count share a group, so little of a step is padding (in the
            # order given, a 150-row user shared 105-row steps with an 840-row one: 5x the work).
            # The pipeline's UserController.train_parts cuts its own chunks largest first for the
            # same reason; this covers every other caller (train_models, the quality tools).
            members.sort(key=lambda i: len(states[i].train))
            for start in range(0, len(members), size):
                chunk = members[start : start + size]
                began = time.perf_counter()
                if len(chunk) == 1:
                    s, p = states[chunk[0]], models[chunk[0]].params
                    facts_list = [train_network(s.network, s.train, s.val, p, s.device, s.generator)]
                else:
                    facts_list = train_group(
                        [FitInput(states[i].network, states[i].train, states[i].val, states[i].generator)
                         for i in chunk],
                        models[chunk[0]].params, states[chunk[0]].device,
                    )
                share = (time.perf_counter() - began) / len(chunk)
                for i, facts in zip(chunk, facts_list, strict=True):
                    state = states[i]
                    assert state.elapsed is not None
                    state.elapsed += share
                    reports[i] = models[i]._finish_fit(state, facts, priors[i])
    return [r for r in reports if r is not None]
