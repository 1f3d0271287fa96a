"""The fingerprint archive: a zip holding ``manifest.json`` and one safetensors file per layer.

Layout (format version 2)::

    manifest.json            # Manifest below: every setting, layer, unit and distribution
    layers/000.safetensors   # autoencoder of layer 0: net.* weights, mean, scale
    layers/001.safetensors
    ...

Weights are safetensors (raw tensors, no pickle). The manifest lists every weights file with
its size and SHA-256 (``files``) and, beside them, ``integrity``: the SHA-256 of the
manifest's own content (every field but ``integrity``, as canonical JSON) and optionally an
HMAC-SHA256 of the same bytes under a key the writer holds. The content hash makes an
edited manifest (a changed threshold, normaliser or percentile) fail to load instead of
silently changing verdicts; it is not a signature (anyone can recompute it). The HMAC is:
a reader given the key refuses archives without it or with a wrong one, so a server can
accept only fingerprints it made itself. Because ``files`` is inside the hashed content,
the hash and the HMAC cover the weights too.

Reading is defensive because fingerprints are uploaded by clients. An archive is refused
with a :class:`FingerprintError` (never another exception) when: it is larger than
``max_archive_bytes``; it is not a readable zip (including forged sizes, CRCs, headers,
compression methods or encryption, which :mod:`zipfile` reports in several ways); a member
name is absolute, contains ``..``, a backslash, a drive letter or NUL, or appears twice; a
member is a symlink or directory; a member declares more than ``max_member_bytes`` or all
more than ``max_total_bytes``, or a member expands more than ``MAX_RATIO`` times (zip
bombs); it holds any file the manifest does not name, or lacks one it names. Those checks
use the zip's directory only, before anything is decompressed. Members are then read with
a hard cap on bytes (a lying header cannot get past it), the manifest's content hash (and
HMAC) is checked, the manifest is validated field by field (unknown fields and duplicate
JSON keys are errors), and each weights file is checked against its size and SHA-256.
Weight *shapes* are checked against the manifest from the safetensors header, before any
network is built (see :func:`check_weights_header`), so a small archive declaring huge layers
cannot make the reader allocate memory.

Why over ~400 lines: the fingerprint archive format, written and read (with its validation
against tampering) in one place so the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import math
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .autoencoders import AutoencoderShape, expected_state_shapes
from .errors import FingerprintError, UnsafeInputError

FORMAT_NAME = "dfp-ray-fingerprint"
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
MAX_RATIO = 100
DEFAULT_MAX_ARCHIVE_BYTES = 1024**3
DEFAULT_MAX_MEMBER_BYTES = 512 * 1024**2
DEFAULT_MAX_TOTAL_BYTES = 2 * 1024**3
MAX_MANIFEST_BYTES = 64 * 1024**2
"""Largest manifest.json accepted (parsed JSON costs several times its size in memory)."""
_MAX_SAFETENSORS_HEADER = 1024**2
KEY_ENV_VAR = "DFP_RAY_FINGERPRINT_KEY"
"""Environment variable conventionally holding the HMAC key (CLI ``--key-env``, serve config)."""

# Everything zipfile (and the decompressors under it) raises for a damaged or forged archive:
# bad magic numbers, CRC or size mismatches, truncated streams, unsupported compression
# methods, encrypted members, impossible offsets.
_ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
    OSError,
    ValueError,
    OverflowError,
    struct.error,
    KeyError,
    IndexError,
)
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


class Integrity(_Strict):
    """Hashes over the manifest's content (every field but this one, as canonical JSON)."""

    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    hmac_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="HMAC-SHA256 under the writer's key")


class Manifest(_Strict):
    format: Literal["dfp-ray-fingerprint"] = FORMAT_NAME
    format_version: Literal[2] = FORMAT_VERSION
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
    integrity: Integrity | None = Field(None, description="set when written; required when read")

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


def canonical_content(raw: Mapping[str, Any]) -> bytes:
    """The bytes the integrity hashes cover: the manifest without ``integrity``, canonical JSON.

    Computed on the parsed JSON (not on the pydantic model), so what is hashed on reading is
    exactly what was written, whatever pydantic would normalise.
    """
    body = {k: v for k, v in raw.items() if k != "integrity"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True).encode()


def _hmac(key: bytes, content: bytes) -> str:
    return hmac.new(key, content, hashlib.sha256).hexdigest()


def key_from_env(name: str | None) -> bytes | None:
    """The HMAC key held in environment variable ``name`` (``None`` when unset or empty)."""
    if not name:
        return None
    value = os.environ.get(name, "")
    return value.encode() if value else None


def seal(raw: dict[str, Any], key: bytes | None) -> dict[str, Any]:
    """Return ``raw`` (a JSON-ready manifest dict) with its ``integrity`` section computed."""
    content = canonical_content(raw)
    out = {k: v for k, v in raw.items() if k != "integrity"}
    out["integrity"] = {"manifest_sha256": _sha256(content), "hmac_sha256": _hmac(key, content) if key else None}
    return out


def write_archive(manifest: Manifest, blobs: dict[str, bytes], *, key: bytes | None = None) -> bytes:
    """Serialise a manifest and its weights files into zip bytes (deterministic member order).

    With ``key``, the manifest carries an HMAC-SHA256 of its content under that key.
    """
    manifest = manifest.model_copy(
        update={"files": {name: FileEntry(size=len(data), sha256=_sha256(data)) for name, data in sorted(blobs.items())}}
    )
    raw = seal(manifest.model_dump(mode="json"), key)
    Manifest.model_validate(raw)  # re-run validators on the final form
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST_NAME, json.dumps(raw, indent=1))
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


def _corrupt(exc: BaseException, where: str) -> FingerprintError:
    return FingerprintError(
        f"the fingerprint archive is damaged or forged ({where}: {type(exc).__name__}: {exc}); "
        "use the zip that dfp-ray wrote, unchanged"
    )


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FingerprintError(f"manifest.json repeats the key {key!r}; refusing an ambiguous manifest")
        out[key] = value
    return out


def verify_integrity(raw: dict[str, Any], key: bytes | None) -> None:
    """Check the manifest's content hash and, when ``key`` is given, its HMAC."""
    section = raw.get("integrity")
    if not isinstance(section, dict):
        raise FingerprintError(
            "the fingerprint manifest has no integrity section, so edits to it could not be detected; "
            "re-create the fingerprint with this dfp-ray"
        )
    try:
        integrity = Integrity.model_validate(section)
    except ValidationError as exc:
        raise FingerprintError(f"invalid integrity section in the fingerprint manifest: {exc}") from exc
    content = canonical_content(raw)
    if not hmac.compare_digest(_sha256(content), integrity.manifest_sha256):
        raise FingerprintError(
            "manifest.json was modified after the fingerprint was written (its content hash does not match): "
            "thresholds, normalisers or other settings may have been edited; use the original zip or re-create it"
        )
    if key is None:
        return
    if integrity.hmac_sha256 is None:
        raise UnsafeInputError(
            "refused fingerprint: it is not signed, and this reader only accepts fingerprints signed with its key "
            "(create it through the same server, or with the same key: CLI --key-env)"
        )
    if not hmac.compare_digest(_hmac(key, content), integrity.hmac_sha256):
        raise UnsafeInputError(
            "refused fingerprint: its signature does not match this reader's key (signed with another key, or "
            "edited and re-hashed); create it through the same server, or with the same key"
        )


def check_weights_header(blob: bytes, shape: AutoencoderShape, where: str) -> None:
    """Check a safetensors file's declared tensors against the manifest's autoencoder shape.

    Reads only the JSON header (bounded), so nothing is allocated for the tensors: the
    network is built only after every name, dtype, shape and byte range here agrees with
    what ``shape`` implies and the header accounts for every byte of ``blob``.
    """
    if len(blob) < 8:
        raise FingerprintError(f"{where}: not a safetensors file ({len(blob)} bytes)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > _MAX_SAFETENSORS_HEADER or 8 + n > len(blob):
        raise FingerprintError(f"{where}: safetensors header length {n} is impossible for a {len(blob)}-byte file")
    try:
        header = json.loads(blob[8 : 8 + n])
    except (ValueError, UnicodeDecodeError) as exc:
        raise FingerprintError(f"{where}: safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise FingerprintError(f"{where}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    want = expected_state_shapes(shape)
    if set(header) != set(want):
        raise FingerprintError(
            f"{where}: weights hold tensors {sorted(header)} but an autoencoder needs {sorted(want)}"
        )
    data_len = len(blob) - 8 - n
    spans = []
    for name, dims in want.items():
        entry = header[name]
        if not isinstance(entry, dict) or entry.get("dtype") != "F32":
            raise FingerprintError(f"{where}: tensor {name} must be float32 (F32), header says {entry!r:.200}")
        got = entry.get("shape")
        if got != list(dims):
            raise FingerprintError(
                f"{where}: the manifest declares {name} of shape {list(dims)} (autoencoder {shape.input_size}->"
                f"{shape.hidden_size}->{shape.code_size}) but the weights file holds shape {got!r:.200}; "
                "refusing the fingerprint before building its network"
            )
        offsets = entry.get("data_offsets")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or offsets[1] - offsets[0] != 4 * math.prod(dims)
            or offsets[0] < 0
            or offsets[1] > data_len
        ):
            raise FingerprintError(f"{where}: tensor {name} has impossible data offsets {offsets!r:.200}")
        spans.append((offsets[0], offsets[1]))
    spans.sort()
    covered = 0
    for start, end in spans:
        if start != covered:
            raise FingerprintError(f"{where}: tensors overlap or leave gaps in the data section")
        covered = end
    if covered != data_len:
        raise FingerprintError(f"{where}: {data_len - covered} bytes of the weights file belong to no tensor")


def read_archive(
    source: str | os.PathLike | bytes,
    *,
    key: bytes | None = None,
    max_archive_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> tuple[Manifest, dict[str, bytes]]:
    """Validate and read a fingerprint zip; returns the manifest and the weights files' bytes.

    ``key``: when given, the archive must carry a matching HMAC (see the module docstring).
    Every problem raises :class:`FingerprintError` (or its subclass :class:`UnsafeInputError`).
    """
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
    except _ZIP_ERRORS as exc:
        raise _corrupt(exc, "zip directory") from exc
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
            try:
                with zf.open(name) as fh:
                    out = fh.read(limit + 1)
            except _ZIP_ERRORS as exc:
                raise _corrupt(exc, f"member {name!r}") from exc
            if len(out) > limit:
                raise UnsafeInputError(f"refused fingerprint archive: member {name!r} decompresses past {limit} bytes")
            return out

        try:
            raw = json.loads(read(MANIFEST_NAME, MAX_MANIFEST_BYTES), object_pairs_hook=_no_duplicate_keys)
        except (ValueError, RecursionError) as exc:
            if isinstance(exc, FingerprintError):
                raise
            raise FingerprintError(f"manifest.json is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise FingerprintError("manifest.json must hold a JSON object")
        if raw.get("format") == FORMAT_NAME and raw.get("format_version") != FORMAT_VERSION:
            raise FingerprintError(
                f"fingerprint format version {raw.get('format_version')!r} is not supported (this dfp-ray reads "
                f"version {FORMAT_VERSION}, which adds the manifest integrity hash); re-create the fingerprint"
            )
        verify_integrity(raw, key)
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
        for layer in manifest.layers:
            check_weights_header(blobs[layer.weights_file], layer.autoencoder, f"layer {layer.name!r} ({layer.weights_file})")
    return manifest, blobs
