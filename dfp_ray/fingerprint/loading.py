"""One entry point for loading a model of either framework (see ``models_keras``/``models_torch``)."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import BinaryIO, Literal

import torch

from .activations import LoadedModel, resolve_device
from .errors import FingerprintError

ModelSource = str | os.PathLike | bytes
ModelType = Literal["keras", "pytorch"]


def _head(source: ModelSource) -> tuple[bytes, list[str] | None]:
    """First bytes of the model and, for a zip, its member names."""
    if isinstance(source, bytes | bytearray):
        head = bytes(source[:16])
        stream: BinaryIO = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise FingerprintError(f"model file not found: {path}")
        stream = open(path, "rb")  # noqa: SIM115 - closed below
        head = stream.read(16)
    names = None
    with stream:
        if head.startswith(b"PK"):
            try:
                with zipfile.ZipFile(stream) as zf:
                    names = zf.namelist()
            except zipfile.BadZipFile:
                names = []
    return head, names


def detect_model_type(source: ModelSource) -> ModelType:
    """``keras`` for HDF5 files and ``.keras`` zips, ``pytorch`` for everything else."""
    head, names = _head(source)
    if head.startswith(b"\x89HDF") or (names is not None and "config.json" in names and "model.weights.h5" in names):
        return "keras"
    return "pytorch"


def load_model(
    source: ModelSource | LoadedModel,
    model_type: ModelType | None = None,
    *,
    model_def: str | os.PathLike | bytes | None = None,
    allow_model_code: bool = False,
    device: str | torch.device = "auto",
) -> LoadedModel:
    """Load a model for fingerprinting from a path or bytes (an already loaded model passes through).

    ``model_type`` may be omitted: it is recognised from the content. When given it must
    agree with the content, so a mislabelled upload fails with a clear message.
    """
    if isinstance(source, LoadedModel):
        return source
    dev = resolve_device(device)
    found = detect_model_type(source)
    if model_type is not None and model_type not in ("keras", "pytorch"):
        raise FingerprintError(f"model_type must be 'keras' or 'pytorch', got {model_type!r}")
    if model_type is not None and model_type != found:
        raise FingerprintError(f"model_type is {model_type!r} but the file is a {found} model")
    if found == "keras":
        if model_def is not None:
            raise FingerprintError("model_def is only for PyTorch state dicts; a Keras file holds its architecture")
        from .models_keras import load_keras_model

        return load_keras_model(source, dev)
    from .models_torch import load_torch_model

    return load_torch_model(source, dev, model_def=model_def, allow_model_code=allow_model_code)
