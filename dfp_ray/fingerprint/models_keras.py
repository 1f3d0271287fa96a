"""Keras models (``.h5`` and ``.keras``) through Keras 3 on the torch backend.

No TensorFlow: ``KERAS_BACKEND`` is set to ``torch`` before Keras is imported; if Keras was
already imported with another backend in this process we stop with an error rather than
silently use it. Models are loaded with ``safe_mode=True, compile=False``. Before Keras sees
the file we read its architecture (the ``model_config`` attribute of an ``.h5``, the
``config.json`` of a ``.keras`` zip) and refuse any ``Lambda`` layer: a Lambda carries
Python bytecode, which is code execution, and safe mode would refuse it anyway, but with a
less helpful message.

Fingerprinted layers: every layer of ``model.layers`` in order except the input and the
model's output layer(s), counting layers without weights (Flatten, Dropout, Activation,
Reshape, ...). This is the original service's count: its notebook's 9-layer CNN (Conv2D,
MaxPool2D, Conv2D, MaxPool2D, Flatten, Dense, Dropout, Dense, Activation) has 8, and its client
sends ``num_layers=8``. The output layer is left out because its output is the prediction
itself (usually a softmax), which the layers before it already determine; it stays
selectable with ``layers=[...]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .activations import LayerInfo, LoadedModel
from .errors import FingerprintError, UnsafeInputError

_UNSAFE_LAYER_CLASSES = {"Lambda", "TFOpLambda", "SlicingOpLambda"}
_MAX_CONFIG_BYTES = 64 * 1024**2


def import_keras() -> Any:
    """Import Keras on the torch backend, or explain why that is not possible."""
    if "keras" in sys.modules:
        keras = sys.modules["keras"]
        backend = keras.backend.backend()
        if backend != "torch":
            raise FingerprintError(
                f"Keras is already imported with the {backend!r} backend in this process; the fingerprint code "
                "needs KERAS_BACKEND=torch set before Keras is first imported"
            )
        return keras
    os.environ.setdefault("KERAS_BACKEND", "torch")
    if os.environ["KERAS_BACKEND"] != "torch":
        raise FingerprintError(
            f"KERAS_BACKEND is {os.environ['KERAS_BACKEND']!r}; fingerprinting runs Keras on the torch "
            "backend: unset it or set KERAS_BACKEND=torch"
        )
    try:
        import keras
    except ImportError as exc:
        raise FingerprintError(
            "Keras models need the 'keras' and 'h5py' packages (pip install 'dfp-ray[fingerprint]')"
        ) from exc
    return keras


def _walk_class_names(node: Any) -> list[tuple[str, str]]:
    """All (class_name, layer name) pairs in a Keras config tree."""
    found: list[tuple[str, str]] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            cls = item.get("class_name")
            if isinstance(cls, str):
                cfg = item.get("config")
                name = cfg.get("name", "?") if isinstance(cfg, dict) else "?"
                found.append((cls, str(name)))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def read_keras_config(path: Path) -> dict[str, Any]:
    """The model architecture stored in an ``.h5`` or ``.keras`` file, without loading it.

    A damaged file is a :class:`FingerprintError` whatever h5py, zipfile or json raise for it.
    """
    try:
        config = _read_keras_config(path)
    except FingerprintError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, zipfile.BadZipFile, RecursionError) as exc:
        raise FingerprintError(
            f"{path.name}: could not read the Keras architecture ({type(exc).__name__}: {exc}); send an intact .h5 or "
            ".keras file saved with model.save()",
            field="model",
        ) from exc
    if not isinstance(config, dict):
        raise FingerprintError(f"{path.name}: the stored Keras architecture is not a JSON object", field="model")
    return config


def _read_keras_config(path: Path) -> Any:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head == b"\x89HDF\r\n\x1a\n":
        import h5py

        with h5py.File(path, "r") as h5:
            raw = h5.attrs.get("model_config")
        if raw is None:
            raise FingerprintError(
                f"{path.name} is an HDF5 file without a model architecture (weights only?); save the whole model"
            )
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        return json.loads(text)
    if head.startswith(b"PK"):
        with zipfile.ZipFile(path) as zf:
            try:
                info = zf.getinfo("config.json")
            except KeyError:
                raise FingerprintError(f"{path.name} is a zip without config.json: not a .keras model") from None
            if info.file_size > _MAX_CONFIG_BYTES:
                raise UnsafeInputError(f"{path.name}: config.json declares {info.file_size} bytes, refusing")
            return json.loads(zf.read(info))
    raise FingerprintError(f"{path.name} is neither an HDF5 (.h5) nor a zip (.keras) Keras model")


def check_keras_config(config: dict[str, Any], where: str) -> None:
    """Refuse architectures that would carry code (Lambda layers)."""
    bad = [(cls, name) for cls, name in _walk_class_names(config) if cls in _UNSAFE_LAYER_CLASSES]
    if bad:
        names = ", ".join(f"{name!r} ({cls})" for cls, name in bad)
        raise UnsafeInputError(
            f"{where}: refused a Keras model with Lambda layers ({names}); a Lambda layer stores Python code, "
            "which loading would run. Replace it with a built-in or registered custom layer and save again"
        )


def _is_fingerprintable(layer: Any) -> bool:
    return type(layer).__name__ != "InputLayer"


def _output_layer_names(model: Any) -> set[str]:
    """Names of the layers that produce the model's outputs (the last one for a Sequential)."""
    keras = import_keras()
    if isinstance(model, keras.Sequential):
        return {model.layers[-1].name} if model.layers else set()
    names = set()
    for out in getattr(model, "outputs", None) or []:
        history = getattr(out, "_keras_history", None)
        operation = getattr(history, "operation", None) if history is not None else None
        if operation is not None:
            names.add(operation.name)
    return names


def _weights_hash(model: Any) -> str:
    h = hashlib.sha256()
    for w in model.weights:
        arr = np.ascontiguousarray(np.asarray(w.numpy() if hasattr(w, "numpy") else w, dtype=np.float32))
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


@dataclass
class KerasModel(LoadedModel):
    """A Keras 3 model and a multi-output view of its fingerprintable layers."""

    model: Any = None
    _extractors: dict[tuple[str, ...], Any] = field(default_factory=dict)

    def _device_scope(self) -> AbstractContextManager[Any]:
        keras = import_keras()
        if self.device.type == "cpu" and torch.cuda.is_available():
            return keras.device("cpu")
        return nullcontext()

    def layer_outputs(self, x: np.ndarray, names: Sequence[str]) -> list[torch.Tensor]:
        keras = import_keras()
        with self._device_scope(), torch.no_grad():
            if isinstance(self.model, keras.Sequential):
                outs = self._sequential_outputs(x, names)
            else:
                key = tuple(names)
                if key not in self._extractors:
                    layers = [self.model.get_layer(n) for n in names]
                    self._extractors[key] = keras.Model(
                        inputs=self.model.inputs, outputs=[layer.output for layer in layers]
                    )
                model_in = [x] if len(self.model.inputs) == 1 else x
                outs = self._extractors[key](model_in, training=False)
        if not isinstance(outs, list | tuple):
            outs = [outs]
        return [o.detach() if isinstance(o, torch.Tensor) else torch.as_tensor(np.asarray(o)) for o in outs]

    def _sequential_outputs(self, x: np.ndarray, names: Sequence[str]) -> list[Any]:
        """A Sequential model run layer by layer: one pass, every requested output on the way.

        (A multi-output ``keras.Model`` over a Sequential's layers re-runs shared prefixes,
        about 3x slower.)
        """
        wanted = set(names)
        found: dict[str, Any] = {}
        h: Any = x
        for layer in self.model.layers:
            h = layer(h, training=False)
            if layer.name in wanted:
                found[layer.name] = h
                if len(found) == len(wanted):
                    break
        return [found[n] for n in names]


def load_keras_model(path: str | os.PathLike | bytes, device: torch.device) -> KerasModel:
    """Load a ``.h5``/``.keras`` file (or its bytes) safely; see the module docstring."""
    keras = import_keras()
    tmp: tempfile.TemporaryDirectory[str] | None = None
    try:
        if isinstance(path, bytes | bytearray):
            tmp = tempfile.TemporaryDirectory(prefix="dfp_ray_keras_")
            data = bytes(path)
            suffix = ".h5" if data.startswith(b"\x89HDF") else ".keras"
            file = Path(tmp.name) / f"model{suffix}"
            file.write_bytes(data)
        else:
            file = Path(path)
            if not file.is_file():
                raise FingerprintError(f"model file not found: {file}")
            if file.suffix not in (".h5", ".keras", ".hdf5"):
                # Keras picks its loader by extension; give it one matching the content.
                tmp = tempfile.TemporaryDirectory(prefix="dfp_ray_keras_")
                with open(file, "rb") as fh:
                    suffix = ".h5" if fh.read(4) == b"\x89HDF" else ".keras"
                link = Path(tmp.name) / f"model{suffix}"
                link.write_bytes(file.read_bytes())
                file = link
        check_keras_config(read_keras_config(file), file.name)
        file_sha = hashlib.sha256(file.read_bytes()).hexdigest()
        scope = keras.device("cpu") if device.type == "cpu" and torch.cuda.is_available() else nullcontext()
        with scope:
            try:
                model = keras.saving.load_model(str(file), safe_mode=True, compile=False)
            except Exception as exc:  # Keras raises many types for unreadable models
                raise FingerprintError(f"Keras could not load the model: {exc}") from exc
    finally:
        if tmp is not None:
            tmp.cleanup()
    if not getattr(model, "inputs", None):
        raise FingerprintError("the Keras model has no defined inputs (an unbuilt subclassed model?); save a built model")
    input_shape = tuple(model.inputs[0].shape[1:])
    if any(s is None for s in input_shape):
        shape: tuple[int, ...] | None = None
    else:
        shape = tuple(int(s) for s in input_shape)
    outputs = _output_layer_names(model)
    first_format = next((getattr(lyr, "data_format", None) for lyr in model.layers if hasattr(lyr, "data_format")), None)
    layout = "first" if first_format == "channels_first" else "last"
    layers = []
    axis = layout
    for layer in model.layers:
        if _is_fingerprintable(layer):
            # Layers without a data_format (Dropout, Activation, ...) keep their input's layout.
            data_format = getattr(layer, "data_format", None)
            if data_format is not None:
                axis = "first" if data_format == "channels_first" else "last"
            layers.append(
                LayerInfo(name=layer.name, kind=type(layer).__name__, channel_axis=axis, is_output=layer.name in outputs)
            )
    if not layers:
        raise FingerprintError("the Keras model has no layers to fingerprint")
    return KerasModel(
        framework="keras",
        model_format="h5" if file.suffix in (".h5", ".hdf5") else "keras",
        input_shape=shape,
        input_layout=layout,
        weights_sha256=_weights_hash(model),
        file_sha256=file_sha,
        layers=layers,
        device=device,
        model=model,
    )
