"""fp32 linear layers on oneDNN for CPU training and scoring.

Why: PyTorch's CPU wheels run fp32 ``mm``/``addmm`` through MKL, which on AMD processors
(this project's machines) takes a code path at about half the chip's AVX-512 rate, while
oneDNN, also inside every x86 PyTorch build, JIT-compiles kernels for the CPU it finds.
Measured here (one thread, this network's shapes at batch 512): ~98 GFLOP/s through ``mm``
vs ~199 GFLOP/s through oneDNN, transposition copies for the backward products included.

The arithmetic is ordinary fp32 (no reduced-precision modes): results differ from ``mm``
only in summation order (~1e-6 relative). ``torch.ops.mkldnn._linear_pointwise`` is the
operator PyTorch's own compiler emits for CPU linear layers; it has no autograd formula, so
:class:`_OneDNNLinear` supplies the backward (input gradient ``dY @ W``, weight gradient
``dY^T @ X``, bias gradient ``sum(dY)``), optionally with the ReLU fused into the forward.
If the operator is missing or misbehaves, :func:`onednn_available` says so and the network
uses ``torch.nn.functional.linear``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def _pointwise_op():
    return torch.ops.mkldnn._linear_pointwise


@functools.cache
def onednn_available() -> bool:
    """True when the oneDNN linear operator exists and agrees with ``F.linear`` on a probe."""
    try:
        op = _pointwise_op()
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(7, 5, generator=generator)
        w = torch.randn(3, 5, generator=generator)
        b = torch.randn(3, generator=generator)
        ok = torch.allclose(op(x, w, b, "relu", [], ""), torch.relu(F.linear(x, w, b)), atol=1e-5)
        ok = ok and torch.allclose(op(x, w, None, "none", [], ""), F.linear(x, w), atol=1e-5)
        return bool(ok)
    except Exception:  # noqa: BLE001 - any failure means "do not use it"
        return False


class _OneDNNLinear(torch.autograd.Function):
    """``y = x @ W^T + b`` (then ReLU when ``relu``), all products on oneDNN."""

    @staticmethod
    def forward(ctx, x, weight, bias, relu: bool):  # type: ignore[override]
        op = _pointwise_op()
        x = x.contiguous()
        y = op(x, weight, bias, "relu" if relu else "none", [], "")
        ctx.relu = relu
        ctx.save_for_backward(x, weight, y if relu else None)
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        op = _pointwise_op()
        x, weight, y = ctx.saved_tensors
        grad = grad.contiguous()
        if ctx.relu:
            grad = torch.ops.aten.threshold_backward(grad, y, 0)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = op(grad, weight.t().contiguous(), None, "none", [], "")
        if ctx.needs_input_grad[1]:
            grad_w = op(grad.t().contiguous(), x.t().contiguous(), None, "none", [], "")
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=0)
        return grad_x, grad_w, grad_b, None


def linear(x: torch.Tensor, layer: torch.nn.Linear, relu: bool = False, onednn: bool = False) -> torch.Tensor:
    """``layer(x)`` (then ReLU when ``relu``), on oneDNN when ``onednn`` (fp32 CPU tensors only)."""
    if onednn:
        return _OneDNNLinear.apply(x, layer.weight, layer.bias, relu)
    y = F.linear(x, layer.weight, layer.bias)
    return F.relu(y) if relu else y
