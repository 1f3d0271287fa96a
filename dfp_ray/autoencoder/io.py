"""Save/load a fitted autoencoder without pickle.

A model is a directory:

- ``model.safetensors``: the network's weights (safetensors: a JSON header + raw tensors; no
  code runs on load, unlike pickle-based ``torch.save`` files that Morpheus/dfencoder use);
- ``model.json``: everything else, human-readable: format/version, hyper-parameters, feature
  lists, category vocabularies, numeric scalers, embedding sizes, loss statistics (mean, std
  and the z-score scale), the calibration (held-out and in-sample score distributions, see
  calibration.py), the number of training rows and the training report. Format 1 files
  (no scale, no calibration) still load: their z-scores divide by the plain std.

Floats go through JSON as Python ``repr`` strings, which round-trip exactly, so a loaded model
scores identically to the saved one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:  # pragma: no cover
    from .dfp_autoencoder import DFPAutoencoder

FORMAT_NAME = "dfp_ray.autoencoder"
FORMAT_VERSION = 2  # 2: loss_stats carry "scale"; "calibration" and "numeric_scale" added
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "model.json"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_model(model: DFPAutoencoder, path: str | os.PathLike) -> None:
    """Write ``model`` into directory ``path`` (created if needed; files replaced atomically)."""
    if model.network is None or model.encoder is None or model.loss_stats is None:
        raise RuntimeError("cannot save an autoencoder that has not been fitted or loaded")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.network.state_dict().items()}
    metadata: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "torch_version": torch.__version__,
        "params": model.params.model_dump(mode="json"),
        "features": {
            "categorical": model.categorical,
            "numeric": model.numeric,
            "binary": model.binary,
            "order": model.feature_columns,
            "above_only": model.above_only,
        },
        "encoder": model.encoder.to_dict(),
        "embedding_dims": model.embedding_dims,
        "head_ranks": model.head_ranks,
        "loss_stats": model.loss_stats,
        "numeric_scale": model.numeric_scale,
        "category_min_count": model.category_min_count,
        "calibration": model.calibration.model_dump(mode="json") if model.calibration is not None else None,
        "n_train_rows": model.n_train_rows,
        "training_report": (
            model.training_report.model_dump(mode="json") if model.training_report is not None else None
        ),
    }
    _atomic_write(
        directory / WEIGHTS_FILE,
        lambda p: save_file(
            tensors, str(p), metadata={"format": FORMAT_NAME, "version": str(FORMAT_VERSION)}
        ),
    )
    _atomic_write(directory / METADATA_FILE, lambda p: p.write_text(json.dumps(metadata, indent=1)))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check ``model.json`` in directory ``path``."""
    directory = Path(path)
    meta_path, weights_path = directory / METADATA_FILE, directory / WEIGHTS_FILE
    for required in (meta_path, weights_path):
        if not required.is_file():
            raise FileNotFoundError(
                f"{required} not found: a saved DFP autoencoder is a directory holding "
                f"{METADATA_FILE} and {WEIGHTS_FILE} (written by DFPAutoencoder.save)"
            )
    metadata = json.loads(meta_path.read_text())
    if metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"{meta_path} is not a {FORMAT_NAME} model (format={metadata.get('format')!r})")
    if int(metadata.get("format_version", -1)) > FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has format_version {metadata['format_version']}, newer than this dfp_ray "
            f"understands ({FORMAT_VERSION}); upgrade dfp_ray"
        )
    return metadata


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load the safetensors weights to CPU (safe: no code execution)."""
    return load_file(str(Path(path) / WEIGHTS_FILE), device="cpu")
