"""The autoencoder network (torch ``nn.Module``) and its per-feature losses.

Layout (Morpheus's DFP architecture, REFERENCE A5): input = [scaled numerics, binaries,
one embedding per categorical column] -> encoder layers -> decoder layers -> heads.

One deliberate implementation difference, invisible in the maths: all output heads (numeric
linear outputs, binary logits, every categorical column's logits) are the row blocks of ONE
``nn.Linear``. A linear layer's rows are independent, and PyTorch initialises each row from
the fan-in alone, so this is the same model as separate heads with the same initial
distribution, computed as one matrix product instead of 2 + n_categorical small ones.

A categorical column with very many classes (the generic model's device names: one or more per
user, so ~1,000 classes at 1,000 users) can instead get a low-rank head (``head_ranks``): its
logits are ``(h A) B + b`` with ``A`` [width, r] and ``B`` [r, classes]. At 512 hidden units and
1,001 classes a full head is 513k multiply-adds per row, about half of the generic model's whole
step; rank 64 is 97k. The column's logits sit where the full head would put them, so losses,
scoring and explanations see the same layout either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels

_ACTIVATIONS = {
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "selu": F.selu,
    "elu": F.elu,
    "gelu": F.gelu,
}


def _layers(in_dim: int, widths: list[int]) -> nn.ModuleList:
    layers = []
    for width in widths:
        layers.append(nn.Linear(in_dim, width))
        in_dim = width
    return nn.ModuleList(layers)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


class DFPNetwork(nn.Module):
    """Embeddings + MLP encoder/decoder + fused output heads.

    ``forward`` returns ``(numeric_pred, binary_logits, categorical_logits)``; the
    categorical logits of column j are ``categorical_logits[:, offsets[j]:offsets[j+1]]``.
    """

    def __init__(
        self,
        n_numeric: int,
        n_binary: int,
        cardinalities: list[int],
        embedding_dims: list[int],
        encoder_layers: list[int],
        decoder_layers: list[int],
        activation: str = "relu",
        dropout: float | None = None,
        head_ranks: list[int | None] | None = None,
    ) -> None:
        super().__init__()
        if len(cardinalities) != len(embedding_dims):
            raise ValueError("cardinalities and embedding_dims must have one entry per categorical column")
        ranks = list(head_ranks) if head_ranks is not None else [None] * len(cardinalities)
        if len(ranks) != len(cardinalities):
            raise ValueError("head_ranks must have one entry (a rank or None) per categorical column")
        self.n_numeric = n_numeric
        self.n_binary = n_binary
        self.cardinalities = list(cardinalities)
        self.embeddings = nn.ModuleList(
            nn.Embedding(n, d) for n, d in zip(cardinalities, embedding_dims, strict=True)
        )
        in_dim = n_numeric + n_binary + sum(embedding_dims)
        self.encoder = _layers(in_dim, encoder_layers)
        self.decoder = _layers(encoder_layers[-1], decoder_layers)
        width = (decoder_layers or encoder_layers)[-1]
        self.head_ranks = ranks
        full = [n for n, r in zip(cardinalities, ranks, strict=True) if r is None]
        self.head = nn.Linear(width, n_numeric + n_binary + sum(full))
        # low-rank heads, keyed by the categorical column's index (ModuleDict keys are strings)
        self.low_rank = nn.ModuleDict({
            str(j): nn.Sequential(nn.Linear(width, r, bias=False), nn.Linear(r, n))
            for j, (n, r) in enumerate(zip(cardinalities, ranks, strict=True)) if r is not None
        })
        self._full_cardinalities = full
        self.activation = activation
        self.dropout = dropout or 0.0
        offsets = [0]
        for n in cardinalities:
            offsets.append(offsets[-1] + n)
        self.offsets = offsets
        # Set by the owner: run fp32 CPU linear layers on oneDNN (see kernels.py). Not saved.
        self.use_onednn = False
        # Set by the owner (clip_inputs): [2, n_numeric + n_binary] range of the scaled inputs seen in
        # training; inputs are clamped to it, targets are not. Derived from the encoder, so not saved.
        self.register_buffer("input_bounds", None, persistent=False)
        # Set by the owner (other_input): [n_categorical] "other" class of the columns whose input
        # is fed as the most frequent value (class 0) when it is "other"; -1 elsewhere. Not saved.
        self.register_buffer("other_index", None, persistent=False)

    @property
    def n_features(self) -> int:
        return self.n_numeric + self.n_binary + len(self.cardinalities)

    def forward(
        self, codes: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.input_bounds is not None and dense.shape[1]:
            dense = torch.clamp(dense, self.input_bounds[0], self.input_bounds[1])
        if self.other_index is not None:  # targets keep the "other" class; only the input changes
            codes = codes.masked_fill(codes == self.other_index, 0)
        parts = [dense] if dense.shape[1] else []
        parts.extend(emb(codes[:, j]) for j, emb in enumerate(self.embeddings))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        onednn = self.use_onednn and x.device.type == "cpu" and not _autocast_on("cpu")
        fused_relu = self.activation == "relu"
        act = _ACTIVATIONS[self.activation]
        for layer in (*self.encoder, *self.decoder):
            x = kernels.linear(x, layer, relu=fused_relu, onednn=onednn)
            if not fused_relu:
                x = act(x)
            if self.dropout:
                x = F.dropout(x, self.dropout, self.training)
        out = kernels.linear(x, self.head, onednn=onednn)
        # one split (one backward concat) rather than slices (a zero-filled gradient per slice)
        numeric, binary, logits = out.split([self.n_numeric, self.n_binary, sum(self._full_cardinalities)], dim=1)
        if self.low_rank:
            logits = self._with_low_rank(x, logits, onednn)
        return numeric, binary, logits

    def _with_low_rank(self, x: torch.Tensor, full_logits: torch.Tensor, onednn: bool) -> torch.Tensor:
        """Every column's logits in column order: the full head's blocks and the low-rank heads'."""
        full = iter(full_logits.split(self._full_cardinalities, dim=1))
        blocks = []
        for j in range(len(self.cardinalities)):
            pair = self.low_rank[str(j)] if self.head_ranks[j] is not None else None
            if pair is None:
                blocks.append(next(full))
            else:
                blocks.append(kernels.linear(kernels.linear(x, pair[0], onednn=onednn), pair[1], onednn=onednn))
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)

    def feature_losses(
        self,
        outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        codes: torch.Tensor,
        dense: torch.Tensor,
    ) -> torch.Tensor:
        """Per-row, per-feature losses [rows, n_features] (numeric, binary, categorical order).

        numeric: squared error on the scaled value; binary: BCE on the logit (the numerically
        stable form of sigmoid + BCE); categorical: cross-entropy over the column's classes.
        Computed in fp32 even when the layers ran under bf16 autocast.
        """
        numeric, binary, logits = (o.float() for o in outputs)
        nn_ = self.n_numeric
        columns: list[torch.Tensor] = []
        if nn_:
            columns.append((numeric - dense[:, :nn_]).square())
        if self.n_binary:
            columns.append(F.binary_cross_entropy_with_logits(binary, dense[:, nn_:], reduction="none"))
        if self.cardinalities:
            ce = [
                F.cross_entropy(column_logits, codes[:, j], reduction="none")
                for j, column_logits in enumerate(logits.split(self.cardinalities, dim=1))
            ]
            columns.append(torch.stack(ce, dim=1))
        return columns[0] if len(columns) == 1 else torch.cat(columns, dim=1)
