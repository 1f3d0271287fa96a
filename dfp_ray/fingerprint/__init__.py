"""Model fingerprinting: out-of-distribution detection for trained models (NeuralFP-style).

A fingerprint records how a model's layers respond to its training data: one small
autoencoder per layer on that layer's activations, plus the distribution of reconstruction
errors on held-out training rows. Scoring new data asks how unusual those errors are and
flags the samples beyond a calibrated percentile. Without a model, a single autoencoder on the
raw data makes a non-layered fingerprint.

Library use::

    from dfp_ray import fingerprint as nfp

    fp = nfp.create("train.npy", "mnist.h5", partial_activations=0.2)
    fp.save("mnist_fp.zip")
    result = nfp.score("mnist_fp.zip", "new.npy", "mnist.h5", percentile=95)
    result.score            # percent of samples flagged
    result.flags            # per sample

All inputs may be paths or bytes (uploads), so an HTTP layer is a thin wrapper. See
``docs/fingerprint.md`` for every semantic choice.
"""

from .activations import LoadedModel
from .archive import Manifest
from .artifact import Fingerprint, load_fingerprint
from .config import DEFAULT_PERCENTILE, FingerprintConfig, LayerScore, ScoreResult
from .creation import create
from .datasets import NumpyOnlyUnpickler, load_dataset
from .errors import FingerprintError, FingerprintMismatchError, UnsafeInputError
from .loading import detect_model_type, load_model
from .scoring import score

__all__ = [
    "DEFAULT_PERCENTILE",
    "Fingerprint",
    "FingerprintConfig",
    "FingerprintError",
    "FingerprintMismatchError",
    "LayerScore",
    "LoadedModel",
    "Manifest",
    "NumpyOnlyUnpickler",
    "ScoreResult",
    "UnsafeInputError",
    "create",
    "detect_model_type",
    "load_dataset",
    "load_fingerprint",
    "load_model",
    "score",
]
