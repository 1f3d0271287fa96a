"""The DFP autoencoder: Morpheus's per-user model, written from scratch in torch.

Public API::

    from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder, TrainingReport

Names are imported on first use, so the torch-free parts (``params``, ``calibration``,
which the config and every actor read) do not make an actor that never trains or scores
(router, sink) import torch: a few seconds of start-up per process.

See docs/autoencoder.md for the design, defaults, save format and measured figures.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .dfp_autoencoder import DFPAutoencoder, resolve_device
    from .encoding import MISSING_CATEGORY, OTHER_LABEL, FeatureColumns, embedding_dim
    from .params import AutoencoderParams
    from .trainer import TrainingReport

_WHERE = {
    "DFPAutoencoder": "dfp_autoencoder", "resolve_device": "dfp_autoencoder",
    "MISSING_CATEGORY": "encoding", "OTHER_LABEL": "encoding", "FeatureColumns": "encoding",
    "embedding_dim": "encoding", "AutoencoderParams": "params", "TrainingReport": "trainer",
}

__all__ = [
    "MISSING_CATEGORY",
    "OTHER_LABEL",
    "AutoencoderParams",
    "DFPAutoencoder",
    "FeatureColumns",
    "TrainingReport",
    "embedding_dim",
    "resolve_device",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
