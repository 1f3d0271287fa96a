"""fp32 linear layers on oneDNN for CPU training and scoring, where that is faster.

Why: PyTorch's CPU wheels run fp32 ``mm``/``addmm`` through MKL, which on AMD processors with
AVX-512 takes a code path at about half the chip's rate, while oneDNN, also inside every x86
PyTorch build, JIT-compiles kernels for the CPU it finds. Measured on an AMD Zen 5 (one
thread, this network's shapes at batch 512): ~98 GFLOP/s through ``mm`` vs ~199 GFLOP/s
through oneDNN, transposition copies for the backward products included. On an AMD Zen 3
(AVX2) it is the other way round (MKL ~75-90, oneDNN ~50-80 GFLOP/s), so :func:`onednn_is_faster`
measures which path to take.

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


# oneDNN must beat torch's default by this margin to be chosen: close calls keep the default
# path, so the choice does not flip between runs on the same machine.
_ONEDNN_MARGIN = 0.85


@functools.cache
def onednn_is_faster() -> bool:
    """Whether oneDNN trains this network's layer shapes faster than torch's default here.

    Neither path wins everywhere: on an AMD Zen 5 (AVX-512) oneDNN ran ~2x MKL, on an AMD
    Zen 3 (AVX2) MKL was faster (generic Duo model: 4.2 s vs 6.3 s). So ``cpu_matmul='auto'``
    measures once per process: forward + backward of a 48 -> 512 -> 500 -> 512 -> 64 stack at
    batch 256, best of 5 interleaved runs each (~0.2 s).
    """
    if not onednn_available():
        return False
    import time

    generator = torch.Generator().manual_seed(0)
    sizes = [48, 512, 500, 512, 64]
    layers = [torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    x = torch.randn(256, sizes[0], generator=generator)

    def step(onednn: bool) -> float:
        start = time.perf_counter()
        h = x
        for i, layer in enumerate(layers):
            h = linear(h, layer, relu=i < len(layers) - 1, onednn=onednn)
        h.square().mean().backward()
        return time.perf_counter() - start

    best = {False: float("inf"), True: float("inf")}
    for i in range(7):
        for onednn in (False, True):
            elapsed = step(onednn)
            if i >= 2:  # the first runs JIT-compile and warm caches
                best[onednn] = min(best[onednn], elapsed)
    return best[True] < _ONEDNN_MARGIN * best[False]


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
    # in place: the product's backward needs only its inputs, and a fresh ReLU output would
    # be one more activation-sized buffer to write per layer (measured in a training step of
    # this network at batch 512: 299 vs 46 us per ReLU, ~3% of the step)
    return y.relu_() if relu else y


@functools.cache
def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); None if unknown.

    Without it torch emulates bf16 matrix products: measured on an AMD Zen 3 (AVX2), the
    example-size generic Duo model trained in 72.8 s under bf16 autocast against 4.4 s in fp32.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return None
    if not flags:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags

