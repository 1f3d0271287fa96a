"""The DFP autoencoder: Morpheus's per-user model (REFERENCE A5), written from scratch in torch.

Public API::

    from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder, TrainingReport

See docs/autoencoder.md for the design, defaults, save format and measured figures.
"""

from .dfp_autoencoder import DFPAutoencoder, resolve_device
from .encoding import MISSING_CATEGORY, OTHER_LABEL, FeatureColumns, embedding_dim
from .params import AutoencoderParams
from .trainer import TrainingReport

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
