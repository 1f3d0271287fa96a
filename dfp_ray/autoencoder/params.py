"""Hyper-parameters of the DFP autoencoder.

Defaults are Morpheus's DFP defaults except six, chosen by measurement on data sets other
than our own generator (docs/scoring.md, docs/autoencoder.md): ``optimizer`` (adam, not sgd),
``min_batches_per_epoch`` (8, not 1), ``loss_std_floor`` (0.1, not 0), ``clip_inputs`` (True:
numeric inputs clamped to their training range), ``other_input`` ('most_frequent': a rare value
is not fed as itself) and ``width_rule`` ('rows': narrower layers for users with few rows).
``optimizer="sgd", min_batches_per_epoch=1, loss_std_floor=0, clip_inputs=False,
other_input="echo", width_rule="fixed"`` is the model Morpheus would train. Everything is configurable because
per-user models differ wildly in size: a user with 300 events and the generic model with
millions of rows should not be forced through the same knobs.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Activation = Literal["relu", "leaky_relu", "tanh", "sigmoid", "selu", "elu", "gelu"]

MIN_SCALED_WIDTH = 32  # the 'rows' width rule never makes a layer narrower than this (or its width, if less)
HEAD_RANK_RATIO = 4  # head_rank applies to categorical columns with more than this x head_rank classes
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class AutoencoderParams(BaseModel):
    """Configuration of :class:`dfp_ray.autoencoder.DFPAutoencoder` (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    # --- architecture -----------------------------------------------------------------------
    encoder_layers: list[int] = Field(
        default_factory=lambda: [512, 500],
        min_length=1,
        description="Widths of the encoder's hidden layers, input side first (Morpheus: [512, 500]).",
    )
    decoder_layers: list[int] = Field(
        default_factory=lambda: [512],
        description="Widths of the decoder's hidden layers before the output heads (Morpheus: [512]).",
    )
    activation: Activation = Field(
        "relu", description="Activation after every hidden layer (Morpheus: relu)."
    )
    dropout: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Dropout probability after every hidden layer; None or 0 disables it (Morpheus: none).",
    )
    width_rule: Literal["fixed", "rows"] = Field(
        "rows",
        description="How a model's hidden widths follow from its data. 'rows' (default): encoder_layers and "
        "decoder_layers are the widths of a model with at least width_full_rows training rows; a model with "
        "fewer rows gets them scaled by the power of two at or below rows / width_full_rows, never below "
        "min_width_fraction nor below 32 units (a 150-row user gets 1/4: 128-125-128 instead of "
        "512-500-512), and such small users then train in groups (group_size): measured 3-6x less time per "
        "user at the same detection quality within one or two events per set, with numeric inputs clamped "
        "(clip_inputs; docs/autoencoder.md, 'Training cost'). 'fixed' (Morpheus): encoder_layers and "
        "decoder_layers as given, for every model. The widths used are stored with the model.",
    )
    width_full_rows: int = Field(
        4096, ge=1, description="'rows' width rule: training rows from which a model gets the full widths."
    )
    min_width_fraction: float = Field(
        0.25,
        gt=0.0,
        le=1.0,
        description="'rows' width rule: the smallest fraction of the widths a model gets (1/4: at 1/8 a "
        "150-row user's model is 64 units wide and measured a little less sensitive).",
    )
    clip_inputs: bool = Field(
        True,
        description="Clamp each numeric input to the range it had in the model's training rows before the "
        "network sees it; the loss still compares the prediction with the real value. A value beyond "
        "anything the user did (a 3 a.m. login of a 9-to-5 user) then cannot be copied through by the "
        "network and scores as unusual as it is (docs/autoencoder.md, 'Inputs'). The training rows are "
        "inside their own range, so training is unchanged; validation, calibration and scoring see the "
        "clamp. False = Morpheus (the raw scaled value is the input).",
    )
    other_input: Literal["most_frequent", "echo"] = Field(
        "most_frequent",
        description="What the network is fed for a categorical value in the 'other' class, in columns where "
        "some training rows fell into it (features.min_count above 1, or max_categories): 'most_frequent' "
        "feeds the column's most frequent value and keeps 'other' as the target, so the model learns how "
        "likely a rare value is in each row's context and cannot echo a never-seen value back (on the LANL "
        "sample with the red team replayed, AUROC 0.924 -> 0.973; docs/scoring.md, 'Open vocabularies'). "
        "'echo' = Morpheus (the 'other' class has its own input embedding). Columns whose training rows "
        "never fell into 'other' are the same either way.",
    )
    head_rank: int | None = Field(
        64,
        ge=1,
        description="Output head of a categorical column with more than HEAD_RANK_RATIO (4) x this many "
        "classes: a low-rank product (hidden -> head_rank -> classes) instead of one hidden x classes "
        "matrix. The generic model has such columns (device names: ~one per user, 1,003 classes at "
        "1,000 users, where the full head is 45% of a step's arithmetic), and so do users of sources "
        "with many values per user (LANL's computers). Measured on the generic model of 1,000 users: "
        "1.23x faster fits in bf16, 1.46x per fp32 step, detection quality level; LANL flags fewer "
        "normal events (docs/autoencoder.md, 'Training cost'). None = full heads everywhere (Morpheus).",
    )
    max_embedding_dim: int = Field(
        600,
        ge=1,
        description="Upper bound of the categorical embedding size min(max, round(1.6 * n**0.56)), "
        "n = categories + 1 (Morpheus: 600).",
    )

    # --- categorical vocabulary ----------------------------------------------------------------
    min_category_count: int = Field(
        1,
        ge=1,
        description="A categorical value must occur at least this many times in the training rows to get "
        "its own class; rarer values share the 'other' class with unseen ones (Morpheus DFP: min_cats=1, "
        "i.e. every value seen in training is kept).",
    )
    max_categories: int | None = Field(
        None,
        ge=1,
        description="Keep at most this many most frequent values per categorical column (ties broken by "
        "value); the rest go to the 'other' class. None = no limit (Morpheus has none). Bounds the "
        "size of the output head for high-cardinality columns in the generic model.",
    )

    # --- noise, loss, optimisation --------------------------------------------------------------
    swap_probability: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Swap noise: each input cell is, with this probability, replaced by the same column's "
        "value from a uniformly random training row (Morpheus: 0.2).",
    )
    loss_reduction: Literal["sum", "mean"] = Field(
        "sum",
        description="How the per-feature losses (each weighing the same) form the gradient objective: "
        "'sum' gives SGD steps of the size Morpheus/dfencoder take (they back-propagate the sum of their "
        "per-categorical losses and the numeric and binary group losses); 'mean' divides by the number of "
        "features (the same as lr / n_features). Reported losses are always the mean over features.",
    )
    optimizer: Literal["sgd", "adam"] = Field(
        "adam",
        description="Optimiser. Morpheus: sgd, which at lr 0.001 barely moves a small user's model in 30 "
        "epochs (its never-seen categories then score like habits); adam learns a user's habits in the "
        "same epochs (docs/scoring.md).",
    )
    learning_rate: float = Field(0.001, gt=0.0, description="Initial learning rate (Morpheus: 0.001).")
    lr_decay: float = Field(
        0.99,
        gt=0.0,
        le=1.0,
        description="Learning rate multiplier applied after every epoch (Morpheus: 0.99).",
    )
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD momentum (Morpheus: 0).")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 weight decay (Morpheus: 0).")
    batch_size: int = Field(512, ge=1, description="Training mini-batch size in rows (Morpheus: 512).")
    epochs: int = Field(30, ge=1, description="Maximum number of training epochs (Morpheus: 30).")
    max_rows_per_epoch: int | None = Field(
        None,
        ge=1,
        description="An epoch trains on at most this many rows, a fresh random sample (without "
        "replacement) of the training rows each epoch; smaller frames use every row, as before. Bounds "
        "the cost of a model with very many rows (the generic model sees every user's rows) to "
        "epochs x this, whatever the number of users. None = every row every epoch (Morpheus).",
    )
    warm_start: Literal["off", "previous"] = Field(
        "off",
        description="'previous': a new version of a model starts from the weights of the version it "
        "replaces (the user's registered model) and trains at most warm_start_epochs epochs; layers of "
        "equal shape are copied, categorical embedding and output rows by category value (new "
        "categories keep their fresh initial rows), numeric input/output weights are re-expressed in the "
        "new rows' scalers. A previous model with other features, widths or activation gives a cold fit "
        "(the TrainingReport says why). Loss statistics and calibration are always recomputed. 'off' "
        "(default): every fit starts from fresh initial weights (Morpheus).",
    )
    warm_start_epochs: int = Field(
        8, ge=1, description="Maximum epochs of a warm-started fit (warm_start; min(epochs, this))."
    )
    min_batches_per_epoch: int = Field(
        8,
        ge=1,
        description="Small frames train in smaller batches so every epoch takes at least this many "
        "optimizer steps (batch = min(batch_size, ceil(rows / this))): with Morpheus's batch of 512 a "
        "user with 150 rows gets one step per epoch, 30 in all. Same rows per epoch, so the same "
        "arithmetic; only the number of steps grows. 1 = Morpheus. Default 8: 240 steps in 30 epochs.",
    )

    # --- loss statistics and calibration ---------------------------------------------------------
    loss_std_floor: float = Field(
        0.1,
        ge=0.0,
        description="Smallest standard deviation a feature's training loss may count as when losses "
        "become z-scores, in loss units (squared scaled stds for numerics, nats otherwise). A feature "
        "that never varied in training has a loss std near 0, and one small change then scores a z of "
        "hundreds. 0 = Morpheus (only a std of exactly 0 becomes 1). The floor is the same for every "
        "feature and every model, which puts all models' scores on one scale (docs/scoring.md).",
    )
    prior_rows: float = Field(
        0.0,
        ge=0.0,
        description="When a prior model (the generic one) is given to fit(): its per-feature loss stds "
        "count as this many rows in each feature's std. 0 = no prior.",
    )
    calibration_rows: int = Field(
        4096,
        ge=0,
        description="Training rows (a deterministic spread over the frame) scored after the fit to "
        "describe the model's in-sample score distribution next to the held-out one (see "
        "docs/scoring.md). 0 = only the validation rows.",
    )

    # --- validation and early stopping ----------------------------------------------------------
    validation_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="The last ceil(fraction * rows) rows (the frame is in time order) are held out for "
        "validation and early stopping; 0 disables validation (Morpheus: 0.1).",
    )
    early_stopping_patience: int | None = Field(
        5,
        ge=0,
        description="Stop after this many consecutive epochs in which the validation loss rose over the "
        "previous epoch's (Morpheus's rule, patience 5). None or 0 disables early stopping.",
    )
    restore_best_weights: bool = Field(
        True,
        description="After training, restore the weights of the epoch with the lowest validation loss "
        "before computing loss statistics (Morpheus keeps the last epoch's weights). No effect "
        "without validation rows.",
    )

    # --- execution ------------------------------------------------------------------------------
    device: str = Field(
        "auto",
        description="'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'.",
    )
    seed: int | None = Field(
        42,
        description="Seed for weight initialisation, shuffling, swap noise and dropout; with a seed, "
        "training on CPU is bit-for-bit repeatable. None = nondeterministic.",
    )
    eval_batch_size: int = Field(
        8192,
        ge=1,
        description="Rows per forward pass when validating, computing loss statistics and scoring: "
        "bounds memory for frames of millions of rows while keeping matrix products large.",
    )
    group_size: int = Field(
        32,
        ge=1,
        description="Fits of many small models (one per user) run this many at a time as one stacked "
        "network: the same models (same weights, random draws and stopping, up to float summation "
        "order), ~4x faster for users of a few hundred events, whose steps are all fixed cost. 1 = one "
        "at a time. Only models with the same widths share a group; models with dropout never do.",
    )
    group_max_rows: int = Field(
        4096,
        ge=0,
        description="Only frames with fewer rows than this train in groups (larger ones are bound by "
        "arithmetic, not by fixed costs, and train alone).",
    )
    group_max_width: int = Field(
        128,
        ge=1,
        description="Only models whose widest hidden layer is at most this train in groups: wider ones are "
        "bound by arithmetic, where a group gains nothing (measured on 2 CPU cores: 4x faster at 128, "
        "even at 256, 1.6x slower at Morpheus's 512).",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads while fitting/scoring (restored afterwards). None leaves "
        "torch's setting alone (Ray sets it per actor from num_cpus); set it when several models "
        "train in one process or machine to avoid oversubscribing cores.",
    )
    cpu_matmul: Literal["auto", "onednn", "aten"] = Field(
        "auto",
        description="Kernels for fp32 linear layers on CPU. 'onednn': oneDNN (JIT-compiled for the CPU; "
        "about 2x torch's default MKL path on AVX-512 AMD processors, slower on AVX2 ones); 'aten': "
        "torch's default (MKL); 'auto': whichever a ~0.2 s measurement at the first fit finds faster "
        "on this CPU (oneDNN only when this torch build has it, it passes a start-up check and it "
        "is >15% faster). Same fp32 arithmetic either way (results differ only in summation order).",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Matrix-product precision. 'auto' (default): 'bf16' for fits whose batches have at "
        "least 64 rows (users with >= 512 training rows, the generic model) where the device multiplies "
        "bfloat16 natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU with bf16 support), 'fp32' everywhere "
        "else (small batches lose: autocast casts every weight once per step). The precision a fit ran in is "
        "stored with the model (its params, the TrainingReport, the registered 'precision_used' param); a "
        "bf16 model loaded where bf16 is not native scores in fp32. 'fp32' is exact and portable. 'bf16' runs the layers "
        "under bfloat16 autocast (weights, losses and the optimiser stay fp32): ~2x faster fits on "
        "such CPUs at the same detection quality (docs/autoencoder.md, 'Training cost'), ~3 "
        "significant digits in the activations; emulated, ~16x slower, on CPUs without it.",
    )

    def head_ranks_for(self, cardinalities: list[int]) -> list[int | None]:
        """Per categorical column (its class count, "other" included): the rank of its low-rank
        output head, or None for a full head (see ``head_rank``).

        >>> AutoencoderParams().head_ranks_for([8, 1001, 257, 256])
        [None, 64, 64, None]
        >>> AutoencoderParams(head_rank=None).head_ranks_for([1001])
        [None]
        """
        rank = self.head_rank
        return [rank if rank is not None and n > HEAD_RANK_RATIO * rank else None for n in cardinalities]

    def widths_for(self, rows: int) -> tuple[list[int], list[int]]:
        """(encoder, decoder) hidden widths of a model trained on ``rows`` rows (see ``width_rule``).

        >>> AutoencoderParams().widths_for(150)
        ([128, 125], [128])
        >>> AutoencoderParams(min_width_fraction=0.125).widths_for(150)
        ([64, 62], [64])
        >>> AutoencoderParams().widths_for(2500)
        ([256, 250], [256])
        >>> AutoencoderParams(width_rule="fixed").widths_for(150)
        ([512, 500], [512])
        """
        if self.width_rule == "fixed" or rows >= self.width_full_rows:
            return list(self.encoder_layers), list(self.decoder_layers)
        scale = 2.0 ** math.floor(math.log2(max(rows, 1) / self.width_full_rows))
        scale = min(1.0, max(self.min_width_fraction, scale))
        def scaled(width: int) -> int:
            return max(min(width, MIN_SCALED_WIDTH), round(width * scale))

        return [scaled(w) for w in self.encoder_layers], [scaled(w) for w in self.decoder_layers]

    @field_validator("encoder_layers", "decoder_layers")
    @classmethod
    def _positive_widths(cls, widths: list[int]) -> list[int]:
        bad = [w for w in widths if w < 1]
        if bad:
            raise ValueError(f"layer widths must be positive integers, got {bad}")
        return widths

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not _DEVICE_RE.match(device):
            raise ValueError(f"must be 'auto', 'cpu', 'cuda' or 'cuda:N' (N a GPU index), got {device!r}")
        return device
