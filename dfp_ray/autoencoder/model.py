"""The autoencoder network (torch ``nn.Module``) and its per-feature losses.

Layout (Morpheus's DFP architecture, REFERENCE A5): input = [scaled numerics, binaries,
one embedding per categorical column] -> encoder layers -> decoder layers -> heads.

One deliberate implementation difference, invisible in the maths: all output heads (numeric
linear outputs, binary logits, every categorical column's logits) are the row blocks of ONE
``nn.Linear``. A linear layer's rows are independent, and PyTorch initialises each row from
the fan-in alone, so this is the same model as separate heads with the same initial
distribution, computed as one matrix product instead of 2 + n_categorical small ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "selu": nn.SELU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}


_INPLACE = {"relu", "leaky_relu", "selu", "elu"}


def _stack(in_dim: int, widths: list[int], activation: str, dropout: float | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers.append(nn.Linear(in_dim, width))
        layers.append(
            _ACTIVATIONS[activation](inplace=True) if activation in _INPLACE else _ACTIVATIONS[activation]()
        )
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    return nn.Sequential(*layers)


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
    ) -> None:
        super().__init__()
        if len(cardinalities) != len(embedding_dims):
            raise ValueError("cardinalities and embedding_dims must have one entry per categorical column")
        self.n_numeric = n_numeric
        self.n_binary = n_binary
        self.cardinalities = list(cardinalities)
        self.embeddings = nn.ModuleList(
            nn.Embedding(n, d) for n, d in zip(cardinalities, embedding_dims, strict=True)
        )
        in_dim = n_numeric + n_binary + sum(embedding_dims)
        self.encoder = _stack(in_dim, encoder_layers, activation, dropout)
        width = encoder_layers[-1]
        self.decoder = _stack(width, decoder_layers, activation, dropout)
        if decoder_layers:
            width = decoder_layers[-1]
        self.head = nn.Linear(width, n_numeric + n_binary + sum(cardinalities))
        offsets = [0]
        for n in cardinalities:
            offsets.append(offsets[-1] + n)
        self.offsets = offsets

    @property
    def n_features(self) -> int:
        return self.n_numeric + self.n_binary + len(self.cardinalities)

    def forward(
        self, codes: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts = [dense] if dense.shape[1] else []
        parts.extend(emb(codes[:, j]) for j, emb in enumerate(self.embeddings))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        out = self.head(self.decoder(self.encoder(x)))
        # one split (one backward concat) rather than slices (a zero-filled gradient per slice)
        numeric, binary, logits = out.split([self.n_numeric, self.n_binary, self.offsets[-1]], dim=1)
        return numeric, binary, logits

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
