"""The training loop: swap noise, SGD with per-epoch lr decay, validation, early stopping.

Everything inside an epoch is tensor work on data encoded once per fit (see encoding.py):
a random permutation, a gather per batch for the targets, and ONE vectorised gather + where
per batch for the swap noise. No pandas, no per-row Python, and no ``.item()`` per batch
(running losses stay on the device until the epoch ends).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, Field

from .encoding import EncodedFrame
from .model import DFPNetwork
from .params import AutoencoderParams

log = logging.getLogger(__name__)


class TrainingReport(BaseModel):
    """What a fit did. Losses are means over features of per-feature mean losses."""

    epochs_run: int = Field(
        description="Epochs actually run (fewer than params.epochs after early stopping)."
    )
    train_loss: list[float] = Field(description="Per epoch: mean training loss on swap-noised inputs.")
    val_loss: list[float] = Field(
        description="Per epoch: validation loss on unswapped inputs; empty without validation rows."
    )
    best_val_loss: float | None = Field(description="Lowest validation loss, None without validation rows.")
    best_epoch: int | None = Field(description="1-based epoch of best_val_loss.")
    stopped_early: bool = Field(description="True when early stopping ended training.")
    restored_best: bool = Field(description="True when the best epoch's weights were restored at the end.")
    train_feature_loss: dict[str, float] = Field(
        description="Final model, training rows, unswapped: mean loss per feature (the loss statistics' means)."
    )
    val_feature_loss: dict[str, float] = Field(
        description="Final model, validation rows, unswapped: mean loss per feature; empty without validation."
    )
    seconds: float = Field(description="Wall time of fit(), encoding and loss statistics included.")
    rows: int = Field(description="Rows given to fit().")
    train_rows: int = Field(description="Rows trained on (and used for loss statistics).")
    val_rows: int = Field(description="Rows held out for validation (the last ones in time order).")
    device: str = Field(description="Device the model was trained on.")
    epoch_rows: int | None = Field(
        None, description="Rows each epoch trained on: train_rows, or max_rows_per_epoch sampled afresh each epoch."
    )
    precision: str = Field(
        "fp32", description="Precision the layers ran in ('fp32' or 'bf16': params.precision 'auto' resolved)."
    )
    warm_started: bool = Field(
        False, description="True when the fit started from a previous model's weights (params.warm_start)."
    )
    warm_start_reason: str | None = Field(
        None, description="Why a fit given a previous model started cold instead (None otherwise)."
    )


@dataclass
class LossStatistics:
    """Per-feature statistics of per-row losses on the training rows.

    ``mean`` and ``std`` (ddof 0; std 0 -> 1) are Morpheus's. ``scale`` is what a z-score
    divides by: ``max(std, floor)`` (see :func:`robust_scale`), so a feature whose training
    loss hardly varied cannot turn one small change into a z of hundreds. A model saved before
    scales existed loads with ``scale = std``.

    ``above_only`` marks numeric features whose z counts only when the observed value is above
    the model's prediction (per-day counters: fewer events or fewer distinct values than
    expected is not a sign of misuse); a row below the prediction gets z 0 for that feature.
    """

    mean: torch.Tensor  # float64 [n_features], CPU
    std: torch.Tensor  # float64 [n_features], CPU
    scale: torch.Tensor | None = None  # float64 [n_features], CPU; None = std
    above_only: np.ndarray | None = None  # bool [n_features]; None = every z two-sided

    def __post_init__(self) -> None:
        if self.scale is None:
            self.scale = self.std


def robust_scale(
    std: torch.Tensor, floor: float, prior_std: torch.Tensor | None = None, rows: int = 0, prior_rows: float = 0.0
) -> torch.Tensor:
    """The z-score divisor of every feature: ``std`` shrunk towards ``prior_std`` (when a prior
    model is given) by ``prior_rows`` pseudo-rows, and never below ``floor``.

    ``floor`` is in loss units, the same for every feature: a squared error of ``floor``
    scaled standard deviations (numeric), or ``floor`` nats (binary, categorical).
    """
    var = std.square()
    if prior_std is not None and prior_rows > 0:
        var = (rows * var + prior_rows * prior_std.square()) / (rows + prior_rows)
    return torch.clamp(var.sqrt(), min=floor) if floor > 0 else var.sqrt()


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (no-op for None)."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def set_threads(n: int) -> None:
    """Use ``n`` intra-op threads in this thread from now on (no-op when already so)."""
    if n >= 1 and n != torch.get_num_threads():
        torch.set_num_threads(n)


@functools.lru_cache(maxsize=16)
def native_precision(device: torch.device) -> str:
    """What ``precision='auto'`` means on ``device``: 'bf16' where it multiplies bfloat16 natively
    (a CPU with AVX512-BF16 or AMX, a CUDA GPU that supports bf16), 'fp32' everywhere else."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        from .kernels import cpu_has_native_bf16

        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


MIN_BF16_BATCH = 64  # bf16 autocast pays from here (docs/autoencoder.md, "Precision and the generic model");
# below it the per-step weight casts cost what the faster products save (16-row batches lost 1.2x)


def auto_precision(train_rows: int, params: AutoencoderParams, device: torch.device) -> str:
    """What ``precision='auto'`` fits a model of ``train_rows`` rows in: bf16 where it is native and
    the batches are large enough to gain (autocast casts every weight once per step, a fixed cost
    that small batches of small users never win back), fp32 otherwise."""
    batch = effective_batch_size(rows_per_epoch(train_rows, params), params)
    return native_precision(device) if batch >= MIN_BF16_BATCH else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for the layers when asked; fp32 (no autocast) otherwise. A fitted model's
    precision is never 'auto': fit resolves it (see auto_precision) and stores the result."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _swap_noise(
    batch: EncodedFrame, donors: EncodedFrame, p: float, generator: torch.Generator
) -> EncodedFrame:
    """Replace each cell with probability ``p`` by the same column's value in a random donor row.

    One Bernoulli mask and one random donor row index per cell, drawn for categorical codes and
    dense values together; donors are training rows. (dfencoder instead draws round(p * rows)
    destination cells per column with replacement, which swaps slightly fewer than p of them.)
    """
    if p <= 0.0:
        return batch
    rows = len(batch)
    n_codes, n_dense = batch.codes.shape[1], batch.dense.shape[1]
    width = n_codes + n_dense
    device = batch.codes.device
    mask = torch.rand((rows, width), generator=generator, device=device) < p
    source = torch.randint(0, len(donors), (rows, width), generator=generator, device=device)
    codes, dense = batch.codes, batch.dense
    if n_codes:
        donor_codes = donors.codes.gather(0, source[:, :n_codes])
        codes = torch.where(mask[:, :n_codes], donor_codes, codes)
    if n_dense:
        donor_dense = donors.dense.gather(0, source[:, n_codes:])
        dense = torch.where(mask[:, n_codes:], donor_dense, dense)
    return EncodedFrame(codes, dense)


def iter_feature_losses(
    network: DFPNetwork,
    frame: EncodedFrame,
    batch_size: int,
    device: torch.device,
    precision: str,
) -> Iterator[tuple[int, int, tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor, torch.Tensor]]:
    """Yield ``(start, stop, outputs, losses[rows, n_features], below[rows, n_numeric])`` for
    unswapped rows, in batches; ``below``: the observed numeric value is under the prediction.

    The caller must hold ``torch.inference_mode()``; memory is bounded by ``batch_size``.
    """
    for start in range(0, len(frame), batch_size):
        stop = min(start + batch_size, len(frame))
        part = frame.rows(start, stop).to(device)
        with autocast(device, precision):
            outputs = network(part.codes, part.dense)
        below = part.dense[:, : network.n_numeric] < outputs[0].float()
        yield start, stop, outputs, network.feature_losses(outputs, part.codes, part.dense), below


@contextlib.contextmanager
def eval_mode(network: DFPNetwork) -> Iterator[None]:
    """Evaluation mode for the duration, then the previous mode back.

    Only dropout depends on the mode in this network; without it the switch is skipped (it
    walks every submodule, twice per epoch for validation: ~1 ms of a small user's epoch).
    """
    if not network.dropout:
        yield
        return
    was_training = network.training
    network.eval()
    try:
        yield
    finally:
        network.train(was_training)


def mean_feature_losses(
    network: DFPNetwork, frame: EncodedFrame, batch_size: int, device: torch.device, precision: str
) -> torch.Tensor:
    """Mean per-feature loss over all rows of ``frame`` (float64 [n_features], CPU)."""
    with eval_mode(network), torch.inference_mode():
        if len(frame) <= batch_size:  # the usual validation set: one pass, no batching
            part = frame.to(device)
            with autocast(device, precision):
                outputs = network(part.codes, part.dense)
            losses = network.feature_losses(outputs, part.codes, part.dense)
            return losses.mean(dim=0, dtype=torch.float64).cpu()
        total = torch.zeros(network.n_features, dtype=torch.float64, device=device)
        for _, _, _, losses, _ in iter_feature_losses(network, frame, batch_size, device, precision):
            total += losses.sum(dim=0, dtype=torch.float64)
    return (total / max(len(frame), 1)).cpu()


def loss_statistics(
    network: DFPNetwork, frame: EncodedFrame, batch_size: int, device: torch.device, precision: str
) -> LossStatistics:
    """Per-feature mean/std of per-row losses, streamed batch by batch (Chan et al.'s merge).

    Morpheus materialises every training row's losses at once (its users' slow-training and
    out-of-memory complaints); this keeps three [n_features] float64 accumulators instead.
    """
    n_total = 0
    mean = torch.zeros(network.n_features, dtype=torch.float64, device=device)
    m2 = torch.zeros_like(mean)
    with eval_mode(network), torch.inference_mode():
        for start, stop, _, losses, _ in iter_feature_losses(network, frame, batch_size, device, precision):
            losses = losses.double()
            n_b = stop - start
            mean_b = losses.mean(dim=0)
            m2_b = (losses - mean_b).square().sum(dim=0)
            n_new = n_total + n_b
            delta = mean_b - mean
            mean = mean + delta * (n_b / n_new)
            m2 = m2 + m2_b + delta.square() * (n_total * n_b / n_new)
            n_total = n_new
    std = (m2 / max(n_total, 1)).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return LossStatistics(mean=mean.cpu(), std=std.cpu())


def effective_batch_size(rows: int, params: AutoencoderParams) -> int:
    """Rows per optimizer step: ``batch_size``, made smaller for small frames so an epoch has at
    least ``min_batches_per_epoch`` steps (a user with 150 rows otherwise gets one step per epoch)."""
    if params.min_batches_per_epoch <= 1 or rows <= 0:
        return params.batch_size
    return max(1, min(params.batch_size, math.ceil(rows / params.min_batches_per_epoch)))


def rows_per_epoch(rows: int, params: AutoencoderParams) -> int:
    """Rows one epoch trains on: every row, or ``max_rows_per_epoch`` sampled afresh each epoch."""
    return rows if params.max_rows_per_epoch is None else min(rows, params.max_rows_per_epoch)


def _build_optimizer(network: DFPNetwork, params: AutoencoderParams) -> torch.optim.Optimizer:
    # fused kernels: one pass over all parameters per step instead of one op per tensor
    if params.optimizer == "adam":
        return torch.optim.Adam(
            network.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay, fused=True
        )
    return torch.optim.SGD(
        network.parameters(),
        lr=params.learning_rate,
        momentum=params.momentum,
        weight_decay=params.weight_decay,
        fused=True,
    )


class _BestWeights:
    """A copy of the network's weights, kept in buffers allocated once per fit.

    Taken at every improving epoch (most epochs, with SGD at Morpheus's learning rate): one
    multi-tensor copy into the buffers, not a fresh state-dict copy each time (a deepcopy of
    the state dict every improving epoch cost ~9% of a small user's fit).
    """

    def __init__(self, network: DFPNetwork):
        state = network.state_dict(keep_vars=True)
        self.names = list(state)
        self.live = [t.detach() for t in state.values()]
        self.saved: list[torch.Tensor] | None = None

    def take(self) -> None:
        if self.saved is None:
            self.saved = [t.clone() for t in self.live]
        else:
            torch._foreach_copy_(self.saved, self.live)

    def restore(self, network: DFPNetwork) -> None:
        assert self.saved is not None
        network.load_state_dict(dict(zip(self.names, self.saved, strict=True)))


def train_network(
    network: DFPNetwork,
    train: EncodedFrame,
    val: EncodedFrame | None,
    params: AutoencoderParams,
    device: torch.device,
    generator: torch.Generator,
    progress: bool = False,
    threads: Callable[[], int] | None = None,
) -> dict:
    """Train ``network`` in place; return the per-epoch facts for the TrainingReport.

    ``threads``, when given, is asked before every epoch how many intra-op threads to use:
    an owner can widen a long fit once the CPUs around it fall idle (see
    ``RayConfig.generic_threads_after_pool``). The caller restores the thread count.

    ``train``/``val`` must already be on ``device``. Early stopping follows Morpheus: stop after
    ``early_stopping_patience`` consecutive epochs whose validation loss rose over the previous
    epoch's. With ``restore_best_weights`` the lowest-validation-loss weights are put back.
    """
    optimizer = _build_optimizer(network, params)
    n_rows = len(train)
    epoch_rows = rows_per_epoch(n_rows, params)
    batch = effective_batch_size(epoch_rows, params)
    eval_batch = params.eval_batch_size
    reduce_sum = params.loss_reduction == "sum"
    patience = params.early_stopping_patience or 0
    has_val = val is not None and len(val) > 0

    train_losses: list[float] = []
    val_losses: list[float] = []
    best_val, best_epoch, best_val_features = math.inf, None, None
    best_weights = _BestWeights(network) if params.restore_best_weights else None
    last_val_features = None
    rises, stopped_early = 0, False

    epochs = range(params.epochs)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(epochs, desc="training", unit="epoch")
        epochs = bar
    network.train()
    for epoch in epochs:
        if threads is not None:
            set_threads(threads())
        running = torch.zeros((), dtype=torch.float64, device=device)
        order = torch.randperm(n_rows, generator=generator, device=device)[:epoch_rows]
        for start in range(0, epoch_rows, batch):
            index = order[start : start + batch]
            target = EncodedFrame(train.codes[index], train.dense[index])
            noisy = _swap_noise(target, train, params.swap_probability, generator)
            with autocast(device, params.precision):
                outputs = network(noisy.codes, noisy.dense)
            per_feature = network.feature_losses(outputs, target.codes, target.dense).mean(dim=0)
            objective = per_feature.sum() if reduce_sum else per_feature.mean()
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            running += per_feature.detach().mean().double() * len(index)
        for group in optimizer.param_groups:
            group["lr"] *= params.lr_decay
        train_losses.append(float(running) / epoch_rows)

        message = f"epoch {epoch + 1}: train {train_losses[-1]:.5f}"
        if has_val:
            last_val_features = mean_feature_losses(network, val, eval_batch, device, params.precision)
            val_loss = float(last_val_features.mean())
            message += f" val {val_loss:.5f}"
            if val_losses and val_loss > val_losses[-1]:
                rises += 1
            else:
                rises = 0
            val_losses.append(val_loss)
            if val_loss < best_val:
                best_val, best_epoch, best_val_features = val_loss, epoch + 1, last_val_features
                if best_weights is not None:
                    best_weights.take()
        log.debug(message)
        if bar is not None:
            bar.set_postfix_str(message.split(": ", 1)[1])
        if has_val and patience and rises >= patience:
            stopped_early = True
            log.debug("early stopping after epoch %d (%d rises in a row)", epoch + 1, rises)
            break
    if bar is not None:
        bar.close()

    restored = False
    final_val_features = last_val_features
    if best_weights is not None and best_weights.saved is not None and best_epoch != len(train_losses):
        best_weights.restore(network)
        restored, final_val_features = True, best_val_features
    network.eval()
    return {
        "epochs_run": len(train_losses),
        "train_loss": train_losses,
        "val_loss": val_losses,
        "best_val_loss": best_val if has_val else None,
        "best_epoch": best_epoch,
        "stopped_early": stopped_early,
        "restored_best": restored,
        "val_feature_means": final_val_features,
    }
