"""Warm start: a new network's initial weights from a previous model of the same user.

:func:`warm_init` copies what carries over from the previous network into a freshly (seeded)
initialised one, and leaves the rest at its fresh values:

- hidden layers (encoder after the first, decoder): copied when the widths match (a
  different width or activation is no warm start at all: :func:`incompatibility`);
- categorical embeddings and the categorical output rows: the rows of categories in both
  vocabularies are copied by value (the "other" class onto "other"); new categories keep
  their fresh rows. If a column's embedding size changed (it grows with the vocabulary),
  the shared leading dimensions are copied;
- the first encoder layer: the columns of the numeric and binary inputs and of the copied
  embedding dimensions;
- numeric inputs and outputs: the scalers are refitted on the new rows, so the copied input
  columns and output rows are re-expressed in the new scaling (exactly the old function of
  the raw values: ``x_old = a * x_new + c`` with ``a = std_new / std_old`` and
  ``c = (mean_new - mean_old) / std_old``).
"""

from __future__ import annotations

import torch

from .encoding import FeatureEncoder
from .model import DFPNetwork


def incompatibility(
    network: DFPNetwork, encoder: FeatureEncoder, activation: str,
    old_network: DFPNetwork | None, old_encoder: FeatureEncoder | None, old_activation: str,
) -> str | None:
    """Why ``network`` cannot start from ``old_network`` (None when it can)."""
    if old_network is None or old_encoder is None:
        return "the previous model is not fitted"
    if (old_encoder.categorical, old_encoder.numeric, old_encoder.binary) != (
        encoder.categorical, encoder.numeric, encoder.binary
    ):
        return "the previous model has other features"
    new_widths = [layer.out_features for layer in (*network.encoder, *network.decoder)]
    old_widths = [layer.out_features for layer in (*old_network.encoder, *old_network.decoder)]
    if new_widths != old_widths or len(network.encoder) != len(old_network.encoder):
        return f"hidden widths differ (previous {old_widths}, now {new_widths})"
    if activation != old_activation:
        return f"activation differs (previous {old_activation}, now {activation})"
    if network.low_rank or old_network.low_rank:
        return "a low-rank output head (autoencoder.head_rank) is not warm-started"
    return None


@torch.no_grad()
def warm_init(network: DFPNetwork, encoder: FeatureEncoder, old_network: DFPNetwork, old_encoder: FeatureEncoder) -> None:
    """Overwrite ``network``'s initial weights with what carries over from ``old_network``
    (check :func:`incompatibility` first)."""
    device = network.head.weight.device
    old = {k: v.detach().to(device=device, dtype=torch.float32) for k, v in old_network.state_dict().items()}
    n_num, n_dense = network.n_numeric, network.n_numeric + network.n_binary
    std_new = torch.tensor([encoder.numeric_std[c] for c in encoder.numeric], dtype=torch.float32, device=device)
    std_old = torch.tensor([old_encoder.numeric_std[c] for c in encoder.numeric], dtype=torch.float32, device=device)
    mean_new = torch.tensor([encoder.numeric_mean[c] for c in encoder.numeric], dtype=torch.float32, device=device)
    mean_old = torch.tensor([old_encoder.numeric_mean[c] for c in encoder.numeric], dtype=torch.float32,
                            device=device)
    a, c = std_new / std_old, (mean_new - mean_old) / std_old

    in_new, in_old = list(range(n_dense)), list(range(n_dense))
    off_new = off_old = n_dense
    head_new, head_old = list(range(n_dense)), list(range(n_dense))
    hoff_new = hoff_old = n_dense
    for j, column in enumerate(encoder.categorical):
        vocab_new, vocab_old = encoder.vocabularies[column], old_encoder.vocabularies[column]
        index_old = {v: i for i, v in enumerate(vocab_old)}
        rows_new = [i for i, v in enumerate(vocab_new) if v in index_old] + [len(vocab_new)]
        rows_old = [index_old[v] for v in vocab_new if v in index_old] + [len(vocab_old)]
        emb = network.embeddings[j]
        d_new, d_old = emb.embedding_dim, old[f"embeddings.{j}.weight"].shape[1]
        d = min(d_new, d_old)
        emb.weight[torch.tensor(rows_new, device=device), :d] = old[f"embeddings.{j}.weight"][rows_old, :d]
        in_new += range(off_new, off_new + d)
        in_old += range(off_old, off_old + d)
        off_new, off_old = off_new + d_new, off_old + d_old
        head_new += [hoff_new + r for r in rows_new]
        head_old += [hoff_old + r for r in rows_old]
        hoff_new, hoff_old = hoff_new + len(vocab_new) + 1, hoff_old + len(vocab_old) + 1

    # first layer, numeric inputs re-expressed: W x_old + b = (W a) x_new + (b + W c)
    w, b = old["encoder.0.weight"].clone(), old["encoder.0.bias"].clone()
    if n_num:
        b += w[:, :n_num] @ c
        w[:, :n_num] *= a
    first = network.encoder[0]
    first.weight[:, torch.tensor(in_new, device=device)] = w[:, in_old]
    first.bias.copy_(b)
    for name, tensor in network.state_dict(keep_vars=True).items():
        if name.startswith(("encoder.", "decoder.")) and not name.startswith("encoder.0."):
            tensor.copy_(old[name])
    # heads, numeric outputs re-expressed: x_new = (x_old - c) / a
    hw, hb = old["head.weight"].clone(), old["head.bias"].clone()
    if n_num:
        hw[:n_num] /= a.unsqueeze(1)
        hb[:n_num] = (hb[:n_num] - c) / a
    rows = torch.tensor(head_new, device=device)
    network.head.weight[rows] = hw[head_old]
    network.head.bias[rows] = hb[head_old]
