"""Many small models trained as one: the per-user fits of a training message, stacked.

Why: a user with ~150 events trains in ~240 optimizer steps of ~16 rows each. At that size a
step is nearly all fixed cost (one Python dispatch and one autograd node per operator, ~1 ms
whatever the width), so a thousand users pay a thousand times that cost for little arithmetic.
Stacking K users' networks along a leading dimension runs every operator once for all K:
``bmm`` instead of K ``mm``, one embedding gather per column, one optimizer update.

The stacked fit is the *same* fit as K separate ones, not an approximation:

- every user keeps its own initial weights, its own random generator (drawn in the same order
  and shapes as :func:`~dfp_ray.autoencoder.trainer.train_network` draws them), its own batch
  size, its own learning-rate schedule, early stopping and best-weight restore;
- users whose vocabularies differ are zero-padded to the group's largest: padded embedding rows
  are never looked up, padded embedding dimensions and the first layer's weights on them start
  at zero and get zero gradients, padded output classes get a logit of -inf (probability 0, zero
  gradient), padded rows of a batch carry weight 0. Nothing padded ever moves;
- the optimiser is Adam or SGD written over the stacked parameters with a per-user "active"
  mask, so a user whose epoch has fewer steps, or who stopped early, is left exactly as a
  separate fit would leave it.

Results therefore equal separate fits up to floating-point summation order (tests check
weights and scores against :meth:`DFPAutoencoder.fit`), and a user's model does not depend on
which other users shared its group. Dropout draws from the global random generator in a way a
group cannot reproduce: models with dropout are never grouped (see :func:`can_group`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.optim.adam import adam as adam_step
from torch.optim.sgd import sgd as sgd_step

from .encoding import EncodedFrame
from .model import _ACTIVATIONS, DFPNetwork
from .params import AutoencoderParams
from .trainer import autocast, effective_batch_size

_ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which the separate fit uses
_ADAM_EPS = 1e-8


@dataclass
class FitInput:
    """One member of a group: its freshly initialised network, its encoded rows and its generator."""

    network: DFPNetwork
    train: EncodedFrame
    val: EncodedFrame | None
    generator: torch.Generator


def signature(network: DFPNetwork) -> tuple:
    """Networks with equal signatures can share a group (same layer widths and feature kinds)."""
    return (
        network.n_numeric, network.n_binary, len(network.cardinalities),
        tuple(layer.out_features for layer in network.encoder), tuple(layer.out_features for layer in network.decoder),
        network.activation, tuple(network.head_ranks),
    )


def can_group(params: AutoencoderParams) -> bool:
    """Whether models with these (resolved) parameters gain from a group: no dropout (see the
    module doc) and hidden layers no wider than ``group_max_width``."""
    widest = max([*params.encoder_layers, *params.decoder_layers])
    return not params.dropout and params.group_size > 1 and widest <= params.group_max_width


class _Stack:
    """The group's parameters as one leaf tensor ``flat`` [k, n_params], a row per member, and
    views of it in layer shapes.

    A row per member keeps each member's parameters contiguous, so torch's own fused optimiser
    kernels update exactly the members that took a step (one tensor each) and leave the others
    alone; a layer's stacked weights are a strided view of the rows, which ``bmm`` reads as is.
    """

    def __init__(self, members: list[FitInput], device: torch.device):
        nets = [m.network for m in members]
        first = nets[0]
        self.k = k = len(nets)
        self.n_numeric, self.n_binary = first.n_numeric, first.n_binary
        self.n_dense = self.n_numeric + self.n_binary
        n_cat = len(first.cardinalities)
        self.card_max = [max(n.cardinalities[j] for n in nets) for j in range(n_cat)]
        self.dim_max = [max(n.embeddings[j].embedding_dim for n in nets) for j in range(n_cat)]
        widths_in = [self.n_dense + sum(self.dim_max)]  # the first layer sees the padded inputs
        layers = [*first.encoder, *first.decoder]
        widths_in += [layer.out_features for layer in layers[:-1]]
        width = layers[-1].out_features
        self.out_max = self.n_dense + sum(self.card_max)
        self.activation = first.activation

        shapes: list[tuple[int, ...]] = [(self.card_max[j], self.dim_max[j]) for j in range(n_cat)]
        for layer, fan_in in zip(layers, widths_in, strict=True):
            shapes += [(fan_in, layer.out_features), (layer.out_features,)]
        shapes += [(width, self.out_max), (self.out_max,)]
        self.shapes = shapes
        self.sizes = [math.prod(shape) for shape in shapes]
        self.flat = torch.zeros((k, sum(self.sizes)), dtype=torch.float32, device=device)
        self.n_cat = n_cat
        self.n_layers = len(layers)
        self._fill(nets)
        self.flat.requires_grad_(True)
        # -inf on every padded class of every member: [k, 1, sum(card_max)]
        mask = torch.zeros((k, sum(self.card_max)), device=device)
        start = 0
        for j, cmax in enumerate(self.card_max):
            for i, net in enumerate(nets):
                mask[i, start + net.cardinalities[j] : start + cmax] = -math.inf
            start += cmax
        self.logit_mask = mask.unsqueeze(1)
        # each member's input range (DFPNetwork.input_bounds), unbounded for members without one
        bounds = torch.full((2, k, 1, self.n_dense), math.inf, device=device)
        bounds[0] = -math.inf
        for i, net in enumerate(nets):
            if net.input_bounds is not None:
                bounds[:, i, 0] = net.input_bounds.to(device)
        self.input_bounds = bounds if any(net.input_bounds is not None for net in nets) else None
        # each member's DFPNetwork.other_index, -1 (no fill) for members and columns without one
        fill = torch.full((k, 1, n_cat), -1, dtype=torch.int64, device=device)
        for i, net in enumerate(nets):
            if net.other_index is not None:
                fill[i, 0] = net.other_index.to(device)
        self.other_index = fill if any(net.other_index is not None for net in nets) else None
        self.row_base = [torch.arange(k, device=device).view(k, 1) * cmax for cmax in self.card_max]

    def views(self, flat: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every parameter of every member, [k, *shape], as views of ``flat`` (default: the stack's)."""
        flat = self.flat if flat is None else flat
        return [part.view(self.k, *shape) for part, shape in zip(flat.split(self.sizes, dim=1), self.shapes,
                                                                  strict=True)]

    def _input_columns(self, net: DFPNetwork) -> torch.Tensor:
        """Where each of ``net``'s first-layer inputs sits among the group's padded inputs."""
        cols = list(range(self.n_dense))
        start = self.n_dense
        for j, emb in enumerate(net.embeddings):
            cols += range(start, start + emb.embedding_dim)
            start += self.dim_max[j]
        return torch.tensor(cols)

    def _output_rows(self, net: DFPNetwork) -> torch.Tensor:
        """Where each of ``net``'s head outputs sits among the group's padded outputs."""
        rows = list(range(self.n_dense))
        start = self.n_dense
        for j, n in enumerate(net.cardinalities):
            rows += range(start, start + n)
            start += self.card_max[j]
        return torch.tensor(rows)

    def _pairs(self, net: DFPNetwork, views: list[torch.Tensor], i: int):
        """For every parameter of member ``i``: (its block of the stack, where in that block the
        network's values sit, the network's tensor as laid out in the stack: hidden and head
        weights transposed, as views, so writing them writes the network)."""
        whole = (slice(None),)
        cols = self._input_columns(net).to(self.flat.device)
        rows = self._output_rows(net).to(self.flat.device)
        pairs = [(views[j][i, : emb.num_embeddings, : emb.embedding_dim], whole, emb.weight)
                 for j, emb in enumerate(net.embeddings)]
        at = self.n_cat
        for n, layer in enumerate([*net.encoder, *net.decoder]):
            pairs.append((views[at][i], (cols,) if n == 0 else whole, layer.weight.t()))
            pairs.append((views[at + 1][i], whole, layer.bias))
            at += 2
        pairs.append((views[at][i], (slice(None), rows), net.head.weight.t()))
        pairs.append((views[at + 1][i], (rows,), net.head.bias))
        return pairs

    @torch.no_grad()
    def _fill(self, nets: list[DFPNetwork]) -> None:
        views = self.views()
        for i, net in enumerate(nets):
            for block, where, tensor in self._pairs(net, views, i):
                block[where] = tensor

    @torch.no_grad()
    def unstack(self, nets: list[DFPNetwork], flat: torch.Tensor) -> None:
        """Copy each member's (unpadded) weights from ``flat`` back into its own network."""
        views = self.views(flat)
        for i, net in enumerate(nets):
            for block, where, tensor in self._pairs(net, views, i):
                tensor.copy_(block[where])

    def forward(self, codes: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """codes [k, b, n_cat], dense [k, b, n_dense] -> (numeric, binary, masked logits), each [k, b, .]."""
        views = self.views()
        if self.input_bounds is not None and self.n_dense:
            dense = torch.clamp(dense, self.input_bounds[0], self.input_bounds[1])
        if self.other_index is not None:
            codes = codes.masked_fill(codes == self.other_index, 0)
        parts = [dense] if self.n_dense else []
        for j in range(self.n_cat):
            table = views[j].reshape(-1, self.dim_max[j])
            parts.append(F.embedding(codes[:, :, j] + self.row_base[j], table))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        act = _ACTIVATIONS[self.activation]
        at = self.n_cat
        for _ in range(self.n_layers):
            x = act(torch.baddbmm(views[at + 1].unsqueeze(1), x, views[at]))
            at += 2
        out = torch.baddbmm(views[at + 1].unsqueeze(1), x, views[at])
        numeric, binary, logits = out.split([self.n_numeric, self.n_binary, out.shape[2] - self.n_dense], dim=2)
        return numeric, binary, logits + self.logit_mask

    def feature_losses(self, outputs, codes: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Per member, row and feature: the losses of :meth:`DFPNetwork.feature_losses`, [k, b, n_features]."""
        numeric, binary, logits = (o.float() for o in outputs)
        columns = []
        if self.n_numeric:
            columns.append((numeric - dense[:, :, : self.n_numeric]).square())
        if self.n_binary:
            columns.append(
                F.binary_cross_entropy_with_logits(binary, dense[:, :, self.n_numeric :], reduction="none")
            )
        if self.n_cat:
            k, b = codes.shape[:2]
            ce = [
                F.cross_entropy(part.reshape(k * b, -1), codes[:, :, j].reshape(-1), reduction="none").view(k, b)
                for j, part in enumerate(logits.split(self.card_max, dim=2))
            ]
            columns.append(torch.stack(ce, dim=2))
        return columns[0] if len(columns) == 1 else torch.cat(columns, dim=2)


def _pad_frames(frames: list[EncodedFrame], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of every member, zero-padded to the longest: codes [k, n, c], dense [k, n, d]."""
    n = max(len(f) for f in frames)
    codes = torch.zeros((len(frames), n, frames[0].codes.shape[1]), dtype=torch.long, device=device)
    dense = torch.zeros((len(frames), n, frames[0].dense.shape[1]), dtype=torch.float32, device=device)
    for i, f in enumerate(frames):
        codes[i, : len(f)] = f.codes
        dense[i, : len(f)] = f.dense
    return codes, dense


def _gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table [k, n, w], index [k, b] -> [k, b, w]."""
    return table.gather(1, index.unsqueeze(2).expand(-1, -1, table.shape[2]))


class _Optimizer:
    """The separate fit's optimiser (torch's fused Adam or SGD kernels, same hyper-parameters),
    stepping each member's row of the stack only when that member took a step."""

    def __init__(self, stack: _Stack, params: AutoencoderParams):
        self.stack, self.p = stack, params
        self.lr = params.learning_rate
        flat = stack.flat.detach()
        self.rows = list(flat.unbind(0))
        if params.optimizer == "adam":
            self.m = list(torch.zeros_like(flat).unbind(0))
            self.v = list(torch.zeros_like(flat).unbind(0))
            self.steps = [torch.zeros((), dtype=torch.float32, device=flat.device) for _ in self.rows]
        else:
            self.buffers: list[torch.Tensor | None] = [None] * len(self.rows)

    @torch.no_grad()
    def step(self, active: list[int]) -> None:
        """One update of the members ``active`` (indices); the others stay exactly as they are."""
        grad = self.stack.flat.grad
        assert grad is not None
        grads = grad.unbind(0)
        p = self.p
        params = [self.rows[i] for i in active]
        if p.optimizer == "adam":
            adam_step(
                params, [grads[i] for i in active], [self.m[i] for i in active], [self.v[i] for i in active],
                [], [self.steps[i] for i in active], fused=True, amsgrad=False, beta1=_ADAM_BETAS[0],
                beta2=_ADAM_BETAS[1], lr=self.lr, weight_decay=p.weight_decay, eps=_ADAM_EPS, maximize=False,
            )
        else:
            buffers = [self.buffers[i] for i in active]
            sgd_step(
                params, [grads[i] for i in active], buffers, fused=True, weight_decay=p.weight_decay,
                momentum=p.momentum, lr=self.lr, dampening=0.0, nesterov=False, maximize=False,
            )
            for i, buf in zip(active, buffers, strict=True):
                self.buffers[i] = buf
        self.stack.flat.grad = None


def _val_means(stack: _Stack, val_codes, val_dense, val_valid, val_rows, precision: str, device) -> torch.Tensor:
    """Mean per-feature validation loss of every member (float64 [k, n_features], CPU)."""
    with torch.no_grad(), autocast(device, precision):
        outputs = stack.forward(val_codes, val_dense)
    with torch.no_grad():
        losses = stack.feature_losses(outputs, val_codes, val_dense)
        total = (losses.double() * val_valid.unsqueeze(2)).sum(dim=1)
    return (total / val_rows.clamp_min(1).unsqueeze(1)).cpu()


def train_group(members: list[FitInput], params: AutoencoderParams, device: torch.device) -> list[dict]:
    """Train every member's network in place, as :func:`~dfp_ray.autoencoder.trainer.train_network`
    would one at a time; return each member's per-epoch facts (same keys as that function)."""
    k = len(members)
    stack = _Stack(members, device)
    optimizer = _Optimizer(stack, params)
    n_rows = [len(m.train) for m in members]
    batch = [effective_batch_size(n, params) for n in n_rows]
    n_steps = [math.ceil(n / b) for n, b in zip(n_rows, batch, strict=True)]
    width_b, width_s = max(batch), max(n_steps)
    reduce_sum = params.loss_reduction == "sum"
    patience = params.early_stopping_patience or 0
    p_swap = params.swap_probability

    train_codes, train_dense = _pad_frames([m.train for m in members], device)
    n_codes, n_dense = train_codes.shape[2], train_dense.shape[2]
    width = n_codes + n_dense
    # rows of member i in step s: positions s*b_i .. min((s+1)*b_i, n_i) of its epoch's permutation
    rows_in = torch.zeros((width_s, k), dtype=torch.long)
    for i, (n, b) in enumerate(zip(n_rows, batch, strict=True)):
        for s in range(n_steps[i]):
            rows_in[s, i] = min(b, n - s * b)
    valid_steps = (torch.arange(width_b).view(1, 1, -1) < rows_in.unsqueeze(2)).to(device)  # [S, k, B]

    has_val = [m.val is not None and len(m.val) > 0 for m in members]
    any_val = any(has_val)
    if any_val:
        vals = [m.val if m.val is not None and len(m.val) else EncodedFrame(m.train.codes[:1], m.train.dense[:1])
                for m in members]
        val_codes, val_dense = _pad_frames(vals, device)
        val_rows = torch.tensor([len(v) if h else 0 for v, h in zip(vals, has_val, strict=True)], device=device)
        val_valid = (torch.arange(val_codes.shape[1], device=device).view(1, -1) < val_rows.view(-1, 1)).double()

    train_losses: list[list[float]] = [[] for _ in range(k)]
    val_losses: list[list[float]] = [[] for _ in range(k)]
    best_val = [math.inf] * k
    best_epoch: list[int | None] = [None] * k
    best_features: list[torch.Tensor | None] = [None] * k
    last_features: list[torch.Tensor | None] = [None] * k
    rises = [0] * k
    stopped = [False] * k
    best_flat = stack.flat.detach().clone() if params.restore_best_weights else None
    taken = [False] * k

    for epoch in range(params.epochs):
        live = [not s for s in stopped]
        if not any(live):
            break
        index = torch.zeros((width_s, k, width_b), dtype=torch.long, device=device)
        for i in range(k):
            if live[i]:
                order = torch.randperm(n_rows[i], generator=members[i].generator, device=device)
                padded = torch.zeros(n_steps[i] * batch[i], dtype=torch.long, device=device)
                padded[: n_rows[i]] = order
                index[: n_steps[i], i, : batch[i]] = padded.view(n_steps[i], batch[i])
        running = torch.zeros(k, dtype=torch.float64, device=device)
        live_t = torch.tensor(live, device=device)
        for s in range(width_s):
            valid = valid_steps[s] & live_t.unsqueeze(1)  # [k, B]
            active = valid.any(dim=1)
            idx = index[s]
            target_codes, target_dense = _gather_rows(train_codes, idx), _gather_rows(train_dense, idx)
            if p_swap > 0:
                mask = torch.zeros((k, width_b, width), dtype=torch.bool, device=device)
                source = torch.zeros((k, width_b, width), dtype=torch.long, device=device)
                for i in range(k):
                    rows = int(rows_in[s, i]) if live[i] else 0
                    if rows:
                        g = members[i].generator
                        mask[i, :rows] = torch.rand((rows, width), generator=g, device=device) < p_swap
                        source[i, :rows] = torch.randint(0, n_rows[i], (rows, width), generator=g, device=device)
                codes = torch.where(mask[:, :, :n_codes], train_codes.gather(1, source[:, :, :n_codes]), target_codes)
                dense = torch.where(mask[:, :, n_codes:], train_dense.gather(1, source[:, :, n_codes:]), target_dense)
            else:
                codes, dense = target_codes, target_dense
            with autocast(device, params.precision):
                outputs = stack.forward(codes, dense)
            losses = stack.feature_losses(outputs, target_codes, target_dense)
            weight = valid.float()
            counts = weight.sum(dim=1)
            per_feature = (losses * weight.unsqueeze(2)).sum(dim=1) / counts.clamp_min(1).unsqueeze(1)  # [k, F]
            objective = per_feature.sum() if reduce_sum else per_feature.mean(dim=1).sum()
            objective.backward()
            optimizer.step([i for i, on in enumerate(active.tolist()) if on])
            running += per_feature.detach().mean(dim=1).double() * counts.double()
        optimizer.lr *= params.lr_decay

        means = _val_means(stack, val_codes, val_dense, val_valid, val_rows, params.precision, device) if any_val else None
        improved = torch.zeros(k, dtype=torch.bool, device=device)
        epoch_loss = running.cpu().tolist()
        for i in range(k):
            if not live[i]:
                continue
            train_losses[i].append(epoch_loss[i] / n_rows[i])
            if has_val[i]:
                assert means is not None
                last_features[i] = means[i]
                val_loss = float(means[i].mean())
                rises[i] = rises[i] + 1 if val_losses[i] and val_loss > val_losses[i][-1] else 0
                val_losses[i].append(val_loss)
                if val_loss < best_val[i]:
                    best_val[i], best_epoch[i], best_features[i] = val_loss, epoch + 1, means[i]
                    improved[i] = True
                if patience and rises[i] >= patience:
                    stopped[i] = True
        if best_flat is not None and bool(improved.any()):
            with torch.no_grad():
                best_flat.copy_(torch.where(improved.view(k, 1), stack.flat, best_flat))
            for i in range(k):
                taken[i] = taken[i] or bool(improved[i])

    final = stack.flat.detach().clone()
    restored = [False] * k
    final_features = list(last_features)
    if best_flat is not None:
        use_best = torch.zeros(k, dtype=torch.bool, device=device)
        for i in range(k):
            if taken[i] and best_epoch[i] != len(train_losses[i]):
                use_best[i], restored[i], final_features[i] = True, True, best_features[i]
        final = torch.where(use_best.view(k, 1), best_flat, final)
    nets = [m.network for m in members]
    stack.unstack(nets, final)
    for net in nets:
        net.eval()
    return [
        {
            "epochs_run": len(train_losses[i]),
            "train_loss": train_losses[i],
            "val_loss": val_losses[i],
            "best_val_loss": best_val[i] if has_val[i] else None,
            "best_epoch": best_epoch[i],
            "stopped_early": stopped[i],
            "restored_best": restored[i],
            "val_feature_means": final_features[i],
        }
        for i in range(k)
    ]
