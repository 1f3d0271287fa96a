"""PyTorch models: ``torch.export`` ``.pt2``, TorchScript ``.pt``, or a state dict + ``model_def``.

The container format is recognised from the file's content:

* **.pt2** (``torch.export.save``): a serialised graph plus raw weight buffers. Its loader
  can fall back to full pickle for some members (sample inputs, "pickled" weights and
  constants, opaque objects), so before calling ``torch.export.load`` we open the archive and
  refuse any member that would need that: every ``.pt`` member must load with
  ``weights_only=True``, and no weight/constant may be marked ``use_pickle`` or be a custom or
  opaque object. Layers are read from the unflattened module with forward hooks.
* **TorchScript** (``torch.jit.save``): runs in the TorchScript interpreter, not Python.
  Hooks are not available on script modules, so we copy the ``forward`` graph, add the
  outputs of its top-level submodule calls as extra outputs and run that copy.
* **State dict** (``torch.save(model.state_dict())``, ``weights_only``-loadable, or a
  ``.safetensors`` file) plus a ``model_def`` Python file that builds the module. The file is
  executed only with ``allow_model_code=True``; it must define ``build_model()``, a class
  named ``Model``, or exactly one ``nn.Module`` subclass (constructed without arguments).
  A file pickling a whole module (``torch.save(model)``) is refused: unpickling it would run code.

Fingerprintable layers: modules that own parameters (Conv, Linear, BatchNorm, ...) or pool, at
the finest granularity the format exposes (leaf modules for .pt2 and eager modules, top-level
submodule calls for TorchScript), in execution order.

Why over ~400 lines: loading a PyTorch model safely and walking its layers for activations are
one concern (which modules count as layers depends on how the model was loaded).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .activations import LayerInfo, LoadedModel
from .errors import FingerprintError, UnsafeInputError

_MAX_MEMBER_BYTES = 8 * 1024**3
_MAX_RATIO = 200  # compressed -> uncompressed expansion considered a zip bomb
_PASSTHROUGH_NAMES = ("Flatten", "Unflatten", "Dropout", "Identity")


def _sniff(data_head: bytes, names: list[str] | None) -> str:
    if names is not None:
        if any(n.endswith("/archive_format") for n in names) or any("/models/" in n and n.endswith(".json") for n in names):
            return "pt2"
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "state_dict"
        if "config.json" in names and "model.weights.h5" in names:
            return "keras"
        return "unknown-zip"
    if data_head.startswith(b"\x89HDF"):
        return "keras"
    if data_head[:1] == b"\x80":
        return "state_dict"  # legacy (non-zip) torch.save
    if len(data_head) >= 9 and data_head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def sniff_model_format(path: Path) -> str:
    """``pt2``, ``torchscript``, ``state_dict``, ``safetensors``, ``keras`` or ``unknown``."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    names = None
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            return "unknown"
    return _sniff(head, names)


def _hash_state(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        if not isinstance(t, torch.Tensor):
            continue
        arr = t.detach().to("cpu", torch.float32).contiguous().numpy()
        h.update(key.encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _owns_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


# --------------------------------------------------------------------------- eager modules


@dataclass
class HookedTorchModel(LoadedModel):
    """An ``nn.Module`` (eager or unflattened .pt2) read through forward hooks."""

    module: nn.Module | None = None
    static_batch: int | None = None
    _paths: dict[str, str] = field(default_factory=dict)

    def layer_outputs(self, x: np.ndarray, names: Sequence[str]) -> list[torch.Tensor]:
        assert self.module is not None
        captured: dict[str, torch.Tensor] = {}
        handles = []
        for name in names:
            sub = self.module.get_submodule(self._paths.get(name, name))

            def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
                captured.setdefault(name, out[0] if isinstance(out, tuple | list) else out)

            handles.append(sub.register_forward_hook(hook))
        try:
            batch = torch.as_tensor(x, dtype=torch.float32, device=self.device)
            n = batch.shape[0]
            if self.static_batch is not None and n != self.static_batch:
                return self._static_batch_outputs(batch, names, captured)
            with torch.no_grad():
                self.module(batch)
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in names if n not in captured]
        if missing:
            raise FingerprintError(f"layers {missing} were not called by the model's forward pass")
        return [captured[n] for n in names]

    def prepare(self, example: np.ndarray) -> None:
        """List layers in the order the forward pass calls them (eager modules may define them in another)."""
        _order_by_execution(self, torch.as_tensor(example[:2], dtype=torch.float32, device=self.device))

    def _static_batch_outputs(
        self, batch: torch.Tensor, names: Sequence[str], captured: dict[str, torch.Tensor]
    ) -> list[torch.Tensor]:
        """A .pt2 exported with a fixed batch size: run fixed-size chunks, padding the last."""
        size = self.static_batch
        assert size is not None and self.module is not None
        n = batch.shape[0]
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        for start in range(0, n, size):
            chunk = batch[start : start + size]
            real = chunk.shape[0]
            if real < size:
                pad = chunk[:1].expand(size - real, *chunk.shape[1:])
                chunk = torch.cat([chunk, pad], dim=0)
            captured.clear()
            with torch.no_grad():
                self.module(chunk)
            for name in names:
                parts[name].append(captured[name][:real])
        return [torch.cat(parts[name], dim=0) for name in names]


def _eager_layers(module: nn.Module) -> list[LayerInfo]:
    layers = []
    for name, sub in module.named_modules():
        if not name or any(True for _ in sub.children()):
            continue
        cls = type(sub).__name__
        if _owns_params(sub) or "Pool" in cls:
            layers.append(LayerInfo(name=name, kind=cls, channel_axis="first"))
    return layers


def _order_by_execution(model: HookedTorchModel, example: torch.Tensor) -> None:
    """Reorder layers to the order the forward pass calls them (definition order can differ)."""
    assert model.module is not None
    if model.static_batch is not None:
        return  # .pt2: graph order is already execution order
    order: list[str] = []
    handles = []
    for info in model.layers:
        sub = model.module.get_submodule(model._paths.get(info.name, info.name))

        def hook(_m: nn.Module, _i: Any, _o: Any, name: str = info.name) -> None:
            if name not in order:
                order.append(name)

        handles.append(sub.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.module(example)
    finally:
        for h in handles:
            h.remove()
    rank = {name: i for i, name in enumerate(order)}
    model.layers = sorted((info for info in model.layers if info.name in rank), key=lambda i: rank[i.name])


def _exec_model_def(source: str | os.PathLike | bytes, allow_model_code: bool) -> Any:
    if not allow_model_code:
        raise UnsafeInputError(
            "refused to execute the model_def file: it is Python code and would run with this process's rights. "
            "Pass allow_model_code=True (CLI: --allow-model-code) only for model definitions you trust, or "
            "export the model with torch.export (.pt2) or TorchScript instead",
            field="model_def",
        )
    with tempfile.TemporaryDirectory(prefix="dfp_ray_model_def_") as tmp:
        if isinstance(source, bytes | bytearray):
            code = bytes(source)
        else:
            path = Path(source)
            if not path.is_file():
                raise FingerprintError(f"model_def file not found: {path}", field="model_def")
            code = path.read_bytes()
        digest = hashlib.sha256(code).hexdigest()[:16]
        file = Path(tmp) / f"dfp_ray_model_def_{digest}.py"
        file.write_bytes(code)
        mod_name = f"dfp_ray_model_def_{digest}"
        spec = importlib.util.spec_from_file_location(mod_name, file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise FingerprintError(f"the model_def file failed to import: {exc!r}", field="model_def") from exc
    if callable(getattr(module, "build_model", None)):
        return _construct(module.build_model, "build_model()")
    cls = getattr(module, "Model", None)
    if cls is None:
        candidates = [
            obj for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == mod_name
        ]
        if len(candidates) != 1:
            raise FingerprintError(
                "the model_def file must define build_model(), a class named Model, or exactly one nn.Module "
                f"subclass; found {len(candidates)} nn.Module subclasses",
                field="model_def",
            )
        cls = candidates[0]
    return _construct(cls, f"{getattr(cls, '__name__', 'Model')}()")


def _construct(factory: Any, what: str) -> Any:
    """Call the model_def's factory; its exceptions are the file's problem, reported as such."""
    try:
        return factory()
    except Exception as exc:
        raise FingerprintError(f"the model_def file's {what} raised {exc!r}", field="model_def") from exc


def _load_state_dict(path: Path, fmt: str) -> dict[str, torch.Tensor]:
    if fmt == "safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UnsafeInputError(
            f"refused {path.name}: it does not load with torch.load(weights_only=True) ({type(exc).__name__}), "
            "so it pickles Python objects (for example a whole module saved with torch.save(model)) and loading "
            "it would run code. Save model.state_dict() and pass a model_def, or export with torch.export"
        ) from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
        if all(isinstance(k, str) for k in obj) and any(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    raise FingerprintError(f"{path.name} holds a {type(obj).__name__}, not a state dict of tensors")


def _load_eager(path: Path, fmt: str, model_def: Any, allow_model_code: bool, device: torch.device) -> HookedTorchModel:
    if model_def is None:
        raise FingerprintError(
            f"{path.name} holds only weights (a state dict); pass the model_def file that builds the module "
            "(CLI: --model-def), or export the model with torch.export (.pt2) or TorchScript"
        )
    state = _load_state_dict(path, fmt)
    module = _exec_model_def(model_def, allow_model_code)
    if not isinstance(module, nn.Module):
        raise FingerprintError(f"model_def built a {type(module).__name__}, not a torch.nn.Module")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FingerprintError(f"the state dict does not fit the module built by model_def: {exc}") from exc
    module.eval().to(device)
    return HookedTorchModel(
        framework="pytorch",
        model_format=fmt,
        input_shape=None,
        input_layout="first",
        weights_sha256=_hash_state(module.state_dict()),
        file_sha256=None,
        layers=_eager_layers(module),
        device=device,
        module=module,
    )


# --------------------------------------------------------------------------- torch.export


def _vet_pt2(path: Path) -> None:
    """Refuse .pt2 archives whose loading would unpickle arbitrary objects (see module doc)."""
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = info.filename
            if info.file_size > _MAX_MEMBER_BYTES or (
                info.compress_size > 0 and info.file_size / info.compress_size > _MAX_RATIO and info.file_size > 2**20
            ):
                raise UnsafeInputError(f"{path.name}: member {name} declares {info.file_size} bytes; refusing")
            if name.endswith("_config.json") and ("/data/weights/" in name or "/data/constants/" in name):
                try:
                    config = json.loads(zf.read(info)).get("config", {})
                except (ValueError, AttributeError) as exc:
                    raise FingerprintError(f"{path.name}: {name} is not a valid payload config: {exc}") from exc
                for fqn, meta in config.items():
                    path_name = str(meta.get("path_name", ""))
                    if meta.get("use_pickle") or path_name.startswith(("custom_obj_", "opaque_obj_")):
                        raise UnsafeInputError(
                            f"{path.name}: {fqn} is stored as a pickled Python object, which loading would execute; "
                            "refusing (export plain tensors)"
                        )
            elif name.endswith(".pt") or name.endswith(".pkl"):
                try:
                    torch.load(io.BytesIO(zf.read(info)), map_location="cpu", weights_only=True)
                except Exception as exc:
                    raise UnsafeInputError(
                        f"{path.name}: member {name} is not a weights-only pickle ({type(exc).__name__}); torch.export.load "
                        "would unpickle it with full Python, so the archive is refused"
                    ) from exc


def _load_pt2(path: Path, device: torch.device) -> HookedTorchModel:
    _vet_pt2(path)
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:
        raise FingerprintError(f"torch.export.load could not read {path.name}: {exc}") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.export.unflatten(ep)
    module.to(device)
    # Layer kinds from the graph's module-stack metadata; order of first appearance.
    kinds: dict[str, str] = {}
    for node in ep.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        for path_, type_ in stack.values():
            fqn = path_.removeprefix("L__self__").lstrip(".")
            kinds.setdefault(fqn, str(type_).rsplit(".", 1)[-1])
    param_owners = {key.rsplit(".", 1)[0] for key in ep.state_dict if "." in key}
    fqns = [f for f in kinds if f]
    leaves = [f for f in fqns if not any(o.startswith(f + ".") for o in fqns)]
    layers = [
        LayerInfo(name=f, kind=kinds[f], channel_axis="first")
        for f in leaves
        if f in param_owners or "Pool" in kinds[f]
    ]
    user_inputs = list(ep.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise FingerprintError(f"{path.name}: fingerprinting needs a model with one tensor input, this one has {len(user_inputs)}")
    placeholder = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0])
    val = placeholder.meta.get("val")
    dims = list(val.shape) if val is not None else []
    static_batch = int(dims[0]) if dims and isinstance(dims[0], int) else None
    input_shape = tuple(int(d) for d in dims[1:]) if dims and all(isinstance(d, int) for d in dims[1:]) else None
    return HookedTorchModel(
        framework="pytorch",
        model_format="pt2",
        input_shape=input_shape,
        input_layout="first",
        weights_sha256=_hash_state(dict(ep.state_dict)),
        file_sha256=None,
        layers=layers,
        device=device,
        module=module,
        static_batch=static_batch,
    )


# --------------------------------------------------------------------------- TorchScript


@dataclass
class TorchScriptModel(LoadedModel):
    """A TorchScript module read through a copy of its forward graph with extra outputs."""

    module: Any = None
    _fn: Any = None
    _names: list[str] = field(default_factory=list)

    def build(self) -> None:
        graph = self.module.forward.graph.copy()
        calls = []
        counts: dict[str, int] = {}
        for node in graph.nodes():
            if node.kind() != "prim::CallMethod" or node.s("name") != "forward":
                continue
            owner = next(iter(node.inputs())).node()
            if owner.kind() != "prim::GetAttr":
                continue
            attr = owner.s("name")
            counts[attr] = counts.get(attr, 0) + 1
            label = attr if counts[attr] == 1 else f"{attr}#{counts[attr]}"
            calls.append((label, attr, node.output()))
        self._names = []
        self.layers = []
        for label, attr, value in calls:
            sub = getattr(self.module, attr)
            kind = getattr(sub, "original_name", type(sub).__name__)
            has_params = any(True for _ in sub.parameters())
            if kind in _PASSTHROUGH_NAMES or not (has_params or "Pool" in kind):
                continue
            graph.registerOutput(value)
            self._names.append(label)
            self.layers.append(LayerInfo(name=label, kind=kind, channel_axis="first"))
        if not self.layers:
            raise FingerprintError(
                "the TorchScript model calls no submodules with weights or pooling from its forward(); "
                "export it with torch.export (.pt2) to fingerprint its inner layers"
            )
        graph.makeMultiOutputIntoTuple()
        try:
            self._fn = torch._C._create_function_from_graph("dfp_ray_fingerprint_forward", graph)
        except Exception as exc:  # private API: fail with advice rather than a stack trace
            raise FingerprintError(
                f"could not instrument the TorchScript model ({exc}); export it with torch.export (.pt2) instead"
            ) from exc

    def layer_outputs(self, x: np.ndarray, names: Sequence[str]) -> list[torch.Tensor]:
        batch = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        with torch.no_grad():
            outs = self._fn(self.module._c, batch)
        by_name = dict(zip(self._names, outs[1:], strict=True))
        return [by_name[n] for n in names]


def _load_torchscript(path: Path, device: torch.device) -> TorchScriptModel:
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:
        raise FingerprintError(f"torch.jit.load could not read {path.name}: {exc}") from exc
    module.eval()
    model = TorchScriptModel(
        framework="pytorch",
        model_format="torchscript",
        input_shape=None,
        input_layout="first",
        weights_sha256=_hash_state(dict(module.state_dict())),
        file_sha256=None,
        device=device,
        module=module,
    )
    model.build()
    return model


# --------------------------------------------------------------------------- entry point


def load_torch_model(
    source: str | os.PathLike | bytes,
    device: torch.device,
    *,
    model_def: str | os.PathLike | bytes | None = None,
    allow_model_code: bool = False,
) -> LoadedModel:
    """Load a PyTorch model file (or its bytes), recognising the format from its content."""
    with tempfile.TemporaryDirectory(prefix="dfp_ray_torch_") as tmp:
        if isinstance(source, bytes | bytearray):
            path = Path(tmp) / "model.bin"
            path.write_bytes(bytes(source))
        else:
            path = Path(source)
            if not path.is_file():
                raise FingerprintError(f"model file not found: {path}")
        file_sha = hashlib.sha256(path.read_bytes()).hexdigest()
        fmt = sniff_model_format(path)
        if fmt == "pt2":
            model: LoadedModel = _load_pt2(path, device)
        elif fmt == "torchscript":
            model = _load_torchscript(path, device)
        elif fmt in ("state_dict", "safetensors"):
            model = _load_eager(path, fmt, model_def, allow_model_code, device)
        elif fmt == "keras":
            raise FingerprintError(f"{path.name} is a Keras model; use model_type 'keras'")
        else:
            raise FingerprintError(
                f"{path.name} is not a recognised PyTorch model: expected a torch.export .pt2, a TorchScript .pt, "
                "or a state dict (torch.save(model.state_dict()) or .safetensors) with a model_def"
            )
    model.file_sha256 = file_sha
    if not model.layers:
        raise FingerprintError("the PyTorch model has no layers with weights or pooling to fingerprint")
    return model
