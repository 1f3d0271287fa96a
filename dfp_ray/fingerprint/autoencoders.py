"""The per-layer autoencoder and its reconstruction error.

Each fingerprinted layer gets a small dense autoencoder on its (mapped, unit-selected)
activations. Inputs are standardised with the mean and standard deviation of the
autoencoder's own training rows; a unit's deviation is floored at 10% of the layer's mean
deviation, so a unit that barely moves in training (often a dead ReLU) can still register an
out-of-distribution input that drives it, without a near-zero divisor turning in-distribution
jitter into huge errors.

Shape: ``d -> h -> c -> h -> d`` with ``h = clip(d // 2, 16, 512)`` and
``c = clip(d // 8, 4, 64)``, ReLU between layers, linear output. Reconstruction error of a
sample is the RMSE over its standardised units.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm


class AutoencoderShape(BaseModel):
    """Sizes of one layer's autoencoder (stored in the manifest)."""

    model_config = ConfigDict(extra="forbid")

    input_size: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    code_size: int = Field(ge=1)

    @classmethod
    def for_input(cls, d: int) -> AutoencoderShape:
        return cls(input_size=d, hidden_size=int(np.clip(d // 2, 16, 512)), code_size=int(np.clip(d // 8, 4, 64)))


def expected_state_shapes(shape: AutoencoderShape) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a :class:`LayerAutoencoder` state dict of this ``shape``.

    Lets a reader check stored weights against a manifest without building the network
    (a test checks it against ``LayerAutoencoder(shape).state_dict()``).
    """
    d, h, c = shape.input_size, shape.hidden_size, shape.code_size
    return {
        "mean": (d,),
        "scale": (d,),
        "net.0.weight": (h, d),
        "net.0.bias": (h,),
        "net.2.weight": (c, h),
        "net.2.bias": (c,),
        "net.4.weight": (h, c),
        "net.4.bias": (h,),
        "net.6.weight": (d, h),
        "net.6.bias": (d,),
    }


class LayerAutoencoder(nn.Module):
    """Standardise -> encode -> decode; ``forward`` returns per-sample RMSE."""

    def __init__(self, shape: AutoencoderShape) -> None:
        super().__init__()
        d, h, c = shape.input_size, shape.hidden_size, shape.code_size
        self.shape = shape
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))
        self.net = nn.Sequential(
            nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c), nn.ReLU(), nn.Linear(c, h), nn.ReLU(), nn.Linear(h, d)
        )

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.standardise(x)
        return torch.sqrt(torch.mean((self.net(z) - z) ** 2, dim=1))


SMALL_MATMUL = 1_000_000
"""Below this many weights in the widest layer, CPU training runs on one thread (see below)."""


@contextmanager
def cpu_threads_for(shape: AutoencoderShape, device: torch.device) -> Iterator[None]:
    """Train small autoencoders on one CPU thread.

    Their batches are thousands of tiny ops that a second thread barely speeds up, and when
    the cores are shared (CI, Ray workers) torch's worker threads spin at every op's barrier
    waiting for a descheduled peer: measured on 2 cores with one other busy process, a
    fingerprint took 97 s with 2 threads and 3 s with 1. The previous setting is restored
    afterwards (process-wide, so concurrent callers may briefly see it).
    """
    if device.type != "cpu" or shape.input_size * shape.hidden_size >= SMALL_MATMUL:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_scaler(ae: LayerAutoencoder, x: np.ndarray) -> None:
    mean = x.mean(axis=0, dtype=np.float64)
    std = x.std(axis=0, dtype=np.float64)
    floor = max(0.1 * float(std.mean()), 1e-6)
    ae.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
    ae.scale.copy_(torch.as_tensor(np.maximum(std, floor), dtype=torch.float32))


def train_autoencoder(
    x: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    device: torch.device,
    progress: bool = False,
    desc: str = "autoencoder",
) -> LayerAutoencoder:
    """Fit one autoencoder on rows ``x`` (float32, ``(N, d)``) with Adam on MSE."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ae = LayerAutoencoder(AutoencoderShape.for_input(int(x.shape[1])))
    fit_scaler(ae, x)
    ae.to(device)
    data = torch.as_tensor(x, dtype=torch.float32, device=device)
    opt = torch.optim.Adam(ae.parameters(), lr=learning_rate)
    n = data.shape[0]
    steps = math.ceil(n / batch_size)
    ae.train()
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False, unit="epoch")
    with cpu_threads_for(ae.shape, device):
        _fit(ae, data, opt, bar, batch_size, steps, gen)
    ae.eval()
    return ae


def _fit(
    ae: LayerAutoencoder,
    data: torch.Tensor,
    opt: torch.optim.Optimizer,
    bar: tqdm,
    batch_size: int,
    steps: int,
    gen: torch.Generator,
) -> None:
    n = data.shape[0]
    device = data.device
    for _ in bar:
        order = torch.randperm(n, generator=gen).to(device)
        total = 0.0
        for s in range(steps):
            idx = order[s * batch_size : (s + 1) * batch_size]
            z = ae.standardise(data[idx])
            loss = torch.mean((ae.net(z) - z) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        bar.set_postfix(loss=f"{total / n:.4f}", refresh=False)


@torch.no_grad()
def reconstruction_rmse(ae: LayerAutoencoder, x: np.ndarray, *, device: torch.device, batch_size: int = 4096) -> np.ndarray:
    """Per-sample RMSE (float64) of ``x`` under ``ae``."""
    ae.to(device).eval()
    out = []
    for start in range(0, x.shape[0], batch_size):
        batch = torch.as_tensor(x[start : start + batch_size], dtype=torch.float32, device=device)
        out.append(ae(batch).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
