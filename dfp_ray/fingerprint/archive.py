"""The fingerprint archive: a zip holding ``manifest.json`` and one safetensors file per layer.

Layout (format version 1)::

    manifest.json            # Manifest below: every setting, layer, unit and distribution
    layers/000.safetensors   # autoencoder of layer 0: net.* weights, mean, scale
    layers/001.safetensors
    ...

Weights are safetensors (raw tensors, no pickle). The manifest lists every weights file with
its size and SHA-256.

Reading is defensive because fingerprints are uploaded by clients. An archive is refused
before anything is decompressed into memory when it: is larger than ``max_archive_bytes``;
has a member name that is absolute, contains ``..``, a backslash or a drive letter, or
appears twice; has a symlink or directory member; declares a member over
``max_member_bytes`` or a total over ``max_total_bytes``, or a member that expands more than
``MAX_RATIO`` times (zip bombs); holds any file the manifest does not name, or lacks one it
names. Members are then read with a hard cap on bytes (a lying header cannot get past it)
and checked against the manifest's sizes and hashes, and the manifest is validated field by
field (unknown fields are errors).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .autoencoders import AutoencoderShape
from .errors import FingerprintError, UnsafeInputError

FORMAT_NAME = "dfp-ray-fingerprint"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_RATIO = 100
DEFAULT_MAX_ARCHIVE_BYTES = 1024**3
DEFAULT_MAX_MEMBER_BYTES = 512 * 1024**2
DEFAULT_MAX_TOTAL_BYTES = 2 * 1024**3
_MAX_MANIFEST_BYTES = 256 * 1024**2
_WEIGHTS_NAME = re.compile(r"^layers/[0-9]{3,6}\.safetensors$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(_Strict):
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Normaliser(_Strict):
    """Robust centre and scale of log(RMSE) on the calibration rows."""

    centre: float
    scale: float = Field(gt=0)


class LayerManifest(_Strict):
    index: int = Field(ge=0)
    name: str
    kind: str
    raw_shape: list[int] = Field(description="per-sample output shape, channel-first")
    mapped_size: int = Field(ge=1, description="values per sample after activation mapping")
    units_kept: list[int] = Field(description="indices into the mapped vector that the autoencoder reads")
    autoencoder: AutoencoderShape
    weights_file: str
    normaliser: Normaliser
    rmse_calibration: list[float] = Field(
        description="RMSE of each calibration row, in the same row order for every layer"
    )
    rmse_fit_mean: float = Field(description="mean RMSE on the autoencoder's own training rows")

    @model_validator(mode="after")
    def _check(self) -> LayerManifest:
        if not _WEIGHTS_NAME.match(self.weights_file):
            raise ValueError(f"weights_file {self.weights_file!r} is not of the form layers/NNN.safetensors")
        if len(self.units_kept) != self.autoencoder.input_size:
            raise ValueError("units_kept and the autoencoder input size disagree")
        if self.units_kept and (min(self.units_kept) < 0 or max(self.units_kept) >= self.mapped_size):
            raise ValueError("units_kept has indices outside the mapped vector")
        return self


class ModelManifest(_Strict):
    framework: Literal["keras", "pytorch"]
    format: str
    weights_sha256: str
    file_sha256: str | None = None
    input_layout: Literal["first", "last"]


class Settings(_Strict):
    """The creation settings that scoring must reproduce or report."""

    partial_activations: float = Field(gt=0, le=1)
    activation_mapping: bool
    mapping_grid: int = Field(ge=1)
    seed: int
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    calibration_fraction: float = Field(gt=0, lt=1)
    combine: Literal["max", "mean"]


class CalibrationManifest(_Strict):
    fit_rows: int = Field(ge=1)
    calibration_rows: int = Field(ge=1)
    combined_scores: list[float] = Field(description="combined score of each calibration row (row order)")
    thresholds: dict[str, float] = Field(description="combined-score threshold per common percentile")


class Manifest(_Strict):
    format: Literal["dfp-ray-fingerprint"] = FORMAT_NAME
    format_version: Literal[1] = FORMAT_VERSION
    created_at: datetime
    dfp_ray_version: str
    kind: Literal["layered", "non-layered"]
    num_layers: int = Field(ge=1)
    input_shape: list[int] = Field(description="per-sample shape of the data as fed to the model (or flattened)")
    default_percentile: float = Field(gt=0, lt=100)
    settings: Settings
    model: ModelManifest | None
    layers: list[LayerManifest]
    calibration: CalibrationManifest
    files: dict[str, FileEntry]

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        if self.num_layers != len(self.layers):
            raise ValueError(f"num_layers is {self.num_layers} but {len(self.layers)} layers are listed")
        if (self.kind == "layered") != (self.model is not None):
            raise ValueError("a layered fingerprint needs a model section and a non-layered one must not have one")
        named = [layer.weights_file for layer in self.layers]
        if len(set(named)) != len(named) or set(named) != set(self.files):
            raise ValueError("files must list exactly the layers' weights files, once each")
        if [layer.index for layer in self.layers] != list(range(len(self.layers))):
            raise ValueError("layer indices must be 0..n-1 in order")
        rows = {len(layer.rmse_calibration) for layer in self.layers} | {len(self.calibration.combined_scores)}
        if rows != {self.calibration.calibration_rows}:
            raise ValueError("every layer's rmse_calibration and combined_scores must have calibration_rows entries")
        return self


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_archive(manifest: Manifest, blobs: dict[str, bytes]) -> bytes:
    """Serialise a manifest and its weights files into zip bytes (deterministic member order)."""
    manifest = manifest.model_copy(
        update={"files": {name: FileEntry(size=len(data), sha256=_sha256(data)) for name, data in sorted(blobs.items())}}
    )
    Manifest.model_validate(manifest.model_dump())  # re-run validators on the final form
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST_NAME, json.dumps(manifest.model_dump(mode="json"), indent=1))
        for name, data in sorted(blobs.items()):
            zf.writestr(name, data)
    return buf.getvalue()


def _check_member_name(name: str) -> None:
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or re.match(r"^[A-Za-z]:", name)
        or ".." in parts
        or "\x00" in name
    ):
        raise UnsafeInputError(f"refused fingerprint archive: unsafe member path {name!r} (absolute or '..' paths)")


def read_archive(
    source: str | os.PathLike | bytes,
    *,
    max_archive_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> tuple[Manifest, dict[str, bytes]]:
    """Validate and read a fingerprint zip; returns the manifest and the weights files' bytes."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FingerprintError(f"fingerprint file not found: {path}")
        if path.stat().st_size > max_archive_bytes:
            raise UnsafeInputError(f"refused fingerprint archive: {path} is over {max_archive_bytes} bytes")
        data = path.read_bytes()
    if len(data) > max_archive_bytes:
        raise UnsafeInputError(f"refused fingerprint archive: {len(data)} bytes is over {max_archive_bytes}")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise FingerprintError(f"the fingerprint is not a zip archive: {exc}") from exc
    with zf:
        infos = zf.infolist()
        seen: set[str] = set()
        total = 0
        for info in infos:
            _check_member_name(info.filename)
            if info.filename in seen:
                raise UnsafeInputError(f"refused fingerprint archive: member {info.filename!r} appears twice")
            seen.add(info.filename)
            mode = info.external_attr >> 16
            if info.is_dir() or stat.S_ISLNK(mode):
                raise UnsafeInputError(f"refused fingerprint archive: {info.filename!r} is a directory or symlink")
            if info.file_size > max_member_bytes:
                raise UnsafeInputError(
                    f"refused fingerprint archive: member {info.filename!r} declares {info.file_size} bytes "
                    f"(limit {max_member_bytes})"
                )
            if info.file_size > 1024**2 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise UnsafeInputError(
                    f"refused fingerprint archive: member {info.filename!r} expands {info.file_size} bytes from "
                    f"{info.compress_size} (a zip bomb?)"
                )
            total += info.file_size
        if total > max_total_bytes:
            raise UnsafeInputError(f"refused fingerprint archive: members total {total} bytes (limit {max_total_bytes})")
        if MANIFEST_NAME not in seen:
            raise FingerprintError("the fingerprint archive has no manifest.json: not a dfp-ray fingerprint")

        def read(name: str, limit: int) -> bytes:
            with zf.open(name) as fh:
                out = fh.read(limit + 1)
            if len(out) > limit:
                raise UnsafeInputError(f"refused fingerprint archive: member {name!r} decompresses past {limit} bytes")
            return out

        try:
            raw = json.loads(read(MANIFEST_NAME, _MAX_MANIFEST_BYTES))
        except json.JSONDecodeError as exc:
            raise FingerprintError(f"manifest.json is not valid JSON: {exc}") from exc
        if isinstance(raw, dict) and raw.get("format") == FORMAT_NAME and raw.get("format_version") != FORMAT_VERSION:
            raise FingerprintError(
                f"fingerprint format version {raw.get('format_version')!r} is not supported (this dfp-ray reads "
                f"version {FORMAT_VERSION}); re-create the fingerprint"
            )
        try:
            manifest = Manifest.model_validate(raw)
        except ValidationError as exc:
            raise FingerprintError(f"invalid fingerprint manifest: {exc}") from exc
        extra = seen - {MANIFEST_NAME} - set(manifest.files)
        if extra:
            raise UnsafeInputError(
                f"refused fingerprint archive: it holds files the manifest does not name: {', '.join(sorted(extra))}"
            )
        missing = set(manifest.files) - seen
        if missing:
            raise FingerprintError(f"fingerprint archive lacks files its manifest names: {', '.join(sorted(missing))}")
        blobs: dict[str, bytes] = {}
        for name, entry in manifest.files.items():
            blob = read(name, min(entry.size, max_member_bytes))
            if len(blob) != entry.size or _sha256(blob) != entry.sha256:
                raise FingerprintError(f"fingerprint member {name!r} does not match its size/hash in the manifest")
            blobs[name] = blob
    return manifest, blobs
