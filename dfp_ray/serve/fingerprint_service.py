"""The fingerprint service's work, without HTTP or Ray: validated forms in, answers out.

Both endpoints follow REFERENCE B's field names (the original service's client must work
unchanged) and add optional fields. ``generate`` and ``detect`` are job handlers
(:data:`dfp_ray.serve.jobs.Handler`): the synchronous route calls them directly, the
``?async=true`` route through the job runner, so both give the same answers and errors.

Every user error becomes an :class:`ApiError` naming the field at fault: each upload is
loaded on its own (dataset, model, fingerprint), so a library error is attributed to the
upload that caused it unless the error itself names another field.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dfp_ray import fingerprint as nfp
from dfp_ray.fingerprint.config import LayerScore
from dfp_ray.fingerprint.scoring import check_options

from .config import FingerprintServiceConfig
from .errors import ApiError, from_fingerprint_error
from .jobs import JobOutput, Progress
from .uploads import FormSpec

DATASET_HELP = "numpy array of samples: .npy, .npz or a pickled numpy array (pickles may hold numpy arrays only)"
MODEL_HELP = ("the trained model: Keras .h5/.keras, or PyTorch .pt2 (torch.export), TorchScript .pt, or a state dict "
              "(.pt/.safetensors) with model_def")
MODEL_DEF_HELP = "PyTorch model-definition file (Python) for a state dict; only when the server allows model code"
FINGERPRINT_HELP = "the fingerprint zip returned by /generate_fingerprint"

class _Form(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_type: Literal["keras", "pytorch"] | None = Field(
        None, description="framework of `model`: keras or pytorch; recognised from the file when omitted, checked when given"
    )
    dataset_key: str | None = Field(None, max_length=200, description="array name inside an .npz or a pickled dict")


class GenerateForm(_Form):
    """Text fields of POST /generate_fingerprint (files: dataset, model, model_def)."""

    partial_activations: float = Field(1.0, gt=0, le=1, description="fraction of each layer's (mapped) units kept")
    activation_mapping: bool = Field(
        True, description="map conv/pool outputs to the mean and max of each cell of a grid per channel "
        "(alias: activation_mappings)"
    )
    mapping_grid: int = Field(4, ge=1, le=64, description="grid cells per spatial dimension for activation mapping")
    epochs: int | None = Field(None, ge=1, description="autoencoder training epochs (default and maximum: server config)")
    seed: int = Field(0, ge=0, lt=2**63, description="seed for unit choice, data split and training")
    percentile: float | None = Field(
        None, gt=0, lt=100, description="default threshold percentile stored in the fingerprint (server default: 95)"
    )
    layers: str | None = Field(
        None, max_length=10_000, description="comma-separated layer names (default: every layer but the output)"
    )
    input_shape: str | None = Field(
        None, max_length=200, description="per-sample input shape such as 1,28,28, for models that do not declare one"
    )
    combine: Literal["max", "mean"] = Field("max", description="how normalised per-layer scores combine")

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            dims = [int(part) for part in value.replace("x", ",").split(",") if part.strip()]
        except ValueError:
            raise ValueError("expected comma-separated positive integers such as 1,28,28") from None
        if not dims or any(d <= 0 or d > 1_000_000 for d in dims) or len(dims) > 8:
            raise ValueError("expected 1-8 positive integers such as 1,28,28")
        return ",".join(map(str, dims))


class OutlierForm(_Form):
    """Text fields of POST /outlier_detection (files: fingerprint, dataset, model, model_def)."""

    num_layers: int | None = Field(
        None, ge=1, le=100_000,
        description="the number of layers the fingerprint covers; checked when given (a mismatch is a 422 listing them)",
    )
    activation_mapping: bool | None = Field(
        None, description="whether the fingerprint used activation mapping; checked when given (alias: activation_mappings)"
    )
    percentile: float | None = Field(
        None, gt=0, lt=100, description="threshold percentile of the calibration scores (default: the fingerprint's, 95)"
    )


def _text_fields(model: type[BaseModel]) -> dict[str, str]:
    return {name: info.description or "" for name, info in model.model_fields.items()}


GENERATE_SPEC = FormSpec(
    files={"dataset": DATASET_HELP, "model": MODEL_HELP, "model_def": MODEL_DEF_HELP},
    fields=_text_fields(GenerateForm),
    required_files=("dataset",),
    aliases={"activation_mappings": "activation_mapping"},
)
OUTLIER_SPEC = FormSpec(
    files={"fingerprint": FINGERPRINT_HELP, "dataset": DATASET_HELP, "model": MODEL_HELP, "model_def": MODEL_DEF_HELP},
    fields=_text_fields(OutlierForm),
    required_files=("fingerprint", "dataset"),
    aliases={"activation_mappings": "activation_mapping"},
)


class OutlierDetectionResult(BaseModel):
    """The answer of POST /outlier_detection: the original's ``score`` plus the details behind it."""

    score: float = Field(description="percentage (0-100) of samples deemed outliers (the original service's answer)")
    percentile: float = Field(description="threshold percentile used")
    threshold: float = Field(description="combined-score threshold at that percentile of the calibration scores")
    n_samples: int
    n_outliers: int
    kind: Literal["layered", "non-layered"]
    combine: Literal["max", "mean"]
    num_layers: int = Field(description="layers the fingerprint covers")
    layer_names: list[str]
    signed: bool = Field(description="whether the fingerprint carries an HMAC signature")
    flags: list[bool] = Field(description="per sample: is it an outlier")
    sample_scores: list[float] = Field(description="per sample combined score (higher = more unusual)")
    layers: list[LayerScore] = Field(description="per layer: normalised scores, raw RMSE, own threshold and flag rate")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ModelCache:
    """Loaded models by content hash, LRU-bounded; each with a lock (models are not shared across threads at once)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[nfp.LoadedModel, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.loads = 0

    def get(self, key: str, load: Any) -> tuple[nfp.LoadedModel, threading.Lock]:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        entry = (load(), threading.Lock())
        with self._lock:
            self.loads += 1
            if self.size > 0:
                self._items[key] = entry
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return entry


def _files(inputs: Path, spec: FormSpec) -> dict[str, Path]:
    return {name: inputs / f"{name}.upload" for name in spec.files if (inputs / f"{name}.upload").is_file()}


class FingerprintService:
    """Holds the server's fingerprint settings, HMAC key and model cache (one per replica)."""

    def __init__(self, cfg: FingerprintServiceConfig) -> None:
        self.cfg = cfg
        self.key = cfg.resolve_key()
        self.models = ModelCache(cfg.model_cache_size)

    # ------------------------------------------------------------------ checks before any work

    def precheck(self, params: dict[str, Any], files: dict[str, Path]) -> None:
        """Refusals that need no loading: uploaded code, options without the files they qualify."""
        if "model_def" in files and not self.cfg.allow_model_code:
            raise ApiError(
                403, "model_code_not_allowed",
                "this server does not execute uploaded model_def files (they are Python code that would run on the "
                "server). Send a torch.export .pt2 or TorchScript model instead, or start the server with "
                "--allow-model-code (fingerprint.allow_model_code: true) if every client is trusted",
                "model_def",
            )
        if "model" not in files:
            for name in ("model_def", "model_type"):
                if name in files or params.get(name) is not None:
                    raise ApiError(422, "missing_field", f"{name} was given without a model file: add the 'model' "
                                   "file field, or drop it", "model")
        epochs = params.get("epochs")
        if epochs is not None and epochs > self.cfg.max_epochs:
            raise ApiError(422, "invalid_field", f"epochs is {epochs}, over this server's maximum of "
                           f"{self.cfg.max_epochs} (fingerprint.max_epochs)", "epochs")

    # ------------------------------------------------------------------ loading, each upload on its own

    def _dataset(self, path: Path, key: str | None) -> Any:
        try:
            return nfp.load_dataset(path, key=key, max_bytes=self.cfg.max_dataset_bytes)
        except nfp.FingerprintError as exc:
            raise from_fingerprint_error(exc, "dataset") from None

    def _model(self, files: dict[str, Path], model_type: str | None) -> tuple[nfp.LoadedModel, threading.Lock] | None:
        path = files.get("model")
        if path is None:
            return None
        model_def = files.get("model_def")
        key = "|".join([_sha256(path), model_type or "", _sha256(model_def) if model_def else "", self.cfg.device])

        def load() -> nfp.LoadedModel:
            try:
                return nfp.load_model(path, model_type, model_def=model_def,  # type: ignore[arg-type]
                                      allow_model_code=self.cfg.allow_model_code, device=self.cfg.device)
            except nfp.FingerprintError as exc:
                raise from_fingerprint_error(exc, "model") from None

        return self.models.get(key, load)

    def _fingerprint(self, path: Path) -> nfp.Fingerprint:
        try:
            return nfp.Fingerprint.load(path, key=self.key, max_archive_bytes=self.cfg.max_archive_bytes)
        except nfp.FingerprintError as exc:
            raise from_fingerprint_error(exc, "fingerprint") from None

    # ------------------------------------------------------------------ the two handlers

    def generate(self, params: dict[str, Any], inputs: Path, progress: Progress) -> JobOutput:
        """POST /generate_fingerprint: the fingerprint zip (signed when the server has a key)."""
        form = GenerateForm.model_validate(params)
        files = _files(inputs, GENERATE_SPEC)
        self.precheck(params, files)
        progress("loading the dataset", 0.0)
        x = self._dataset(files["dataset"], form.dataset_key)
        progress("loading the model", 0.02)
        model = self._model(files, form.model_type)
        overrides: dict[str, Any] = {
            "partial_activations": form.partial_activations,
            "activation_mapping": form.activation_mapping,
            "mapping_grid": form.mapping_grid,
            "epochs": form.epochs or self.cfg.epochs,
            "seed": form.seed,
            "combine": form.combine,
            "default_percentile": form.percentile or self.cfg.default_percentile,
            "device": self.cfg.device,
        }
        if form.layers:
            overrides["layers"] = [name.strip() for name in form.layers.split(",") if name.strip()]
        if form.input_shape:
            overrides["input_shape"] = tuple(int(d) for d in form.input_shape.split(","))
        try:
            if model is None:
                fp = nfp.create(x, None, progress_callback=progress, **overrides)
            else:
                loaded, lock = model
                with lock:
                    fp = nfp.create(x, loaded, progress_callback=progress, **overrides)
        except nfp.FingerprintError as exc:
            raise from_fingerprint_error(exc, None) from None
        data = fp.to_bytes(key=self.key)
        headers = {
            "X-Fingerprint-Kind": fp.kind,
            "X-Fingerprint-Num-Layers": str(fp.num_layers),
            "X-Fingerprint-Layers": ",".join(name.encode("ascii", "backslashreplace").decode() for name in fp.layer_names),
            "X-Fingerprint-Signed": "true" if self.key else "false",
        }
        return JobOutput(data=data, media_type="application/zip", filename="fingerprint.zip", headers=headers)

    def detect(self, params: dict[str, Any], inputs: Path, progress: Progress) -> JobOutput:
        """POST /outlier_detection: ``{"score": percent of outliers, ...}``."""
        form = OutlierForm.model_validate(params)
        files = _files(inputs, OUTLIER_SPEC)
        self.precheck(params, files)
        progress("loading the fingerprint", 0.0)
        fp = self._fingerprint(files["fingerprint"])
        percentile = form.percentile if form.percentile is not None else fp.manifest.default_percentile
        try:
            check_options(fp, percentile, form.num_layers, form.activation_mapping)
        except nfp.FingerprintError as exc:
            raise from_fingerprint_error(exc, None) from None
        if fp.kind == "layered" and "model" not in files:
            raise ApiError(422, "missing_field", "this fingerprint is layered (made from a model): send the same model "
                           "in the 'model' file field", "model")
        if fp.kind == "non-layered" and "model" in files:
            raise ApiError(422, "invalid_field", "this fingerprint is non-layered (made from raw data): omit the model",
                           "model")
        progress("loading the dataset", 0.1)
        x = self._dataset(files["dataset"], form.dataset_key)
        progress("loading the model", 0.2)
        model = self._model(files, form.model_type)
        progress("scoring", 0.3)
        try:
            if model is None:
                result = nfp.score(fp, x, None, percentile=percentile, device=self.cfg.device)
            else:
                loaded, lock = model
                with lock:
                    result = nfp.score(fp, x, loaded, percentile=percentile, device=self.cfg.device)
        except nfp.FingerprintError as exc:
            raise from_fingerprint_error(exc, None) from None
        body = OutlierDetectionResult(
            **result.model_dump(),
            num_layers=fp.num_layers,
            layer_names=fp.layer_names,
            signed=bool(fp.manifest.integrity and fp.manifest.integrity.hmac_sha256),
        )
        progress("done", 1.0)
        return JobOutput(data=body.model_dump_json().encode(), media_type="application/json", filename="result.json")

