"""The in-memory fingerprint: a validated manifest plus one autoencoder per layer."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .archive import DEFAULT_MAX_ARCHIVE_BYTES, FileEntry, Manifest, read_archive, write_archive
from .autoencoders import LayerAutoencoder
from .calibration import threshold_at
from .errors import FingerprintError


@dataclass
class Fingerprint:
    """A model (or dataset) fingerprint. Create with :func:`dfp_ray.fingerprint.create`.

    ``manifest`` holds every setting and distribution (see :mod:`.archive`);
    ``autoencoders[i]`` belongs to ``manifest.layers[i]``.
    """

    manifest: Manifest
    autoencoders: list[LayerAutoencoder]

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def num_layers(self) -> int:
        return self.manifest.num_layers

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.manifest.layers]

    def threshold(self, percentile: float) -> float:
        """Combined-score threshold at ``percentile`` of the calibration rows."""
        return threshold_at(np.asarray(self.manifest.calibration.combined_scores), percentile)

    def sync_files(self) -> dict[str, bytes]:
        """Serialise the autoencoders and record their sizes and hashes in the manifest."""
        blobs = {}
        for layer, ae in zip(self.manifest.layers, self.autoencoders, strict=True):
            state = {k: v.detach().cpu().contiguous() for k, v in ae.state_dict().items()}
            blobs[layer.weights_file] = st_save(state)
        files = {name: FileEntry(size=len(b), sha256=hashlib.sha256(b).hexdigest()) for name, b in blobs.items()}
        self.manifest = self.manifest.model_copy(update={"files": files})
        return blobs

    def to_bytes(self, *, key: bytes | None = None) -> bytes:
        """The fingerprint as zip bytes (what ``save`` writes and an HTTP layer returns).

        With ``key`` the manifest carries an HMAC-SHA256 under it (see :mod:`.archive`).
        """
        return write_archive(self.manifest, self.sync_files(), key=key)

    def save(self, path: str | os.PathLike, *, key: bytes | None = None) -> Path:
        """Write the fingerprint zip to ``path`` (parent folders are created), signed when ``key`` is given."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(self.to_bytes(key=key))
        return out

    @classmethod
    def load(
        cls,
        source: str | os.PathLike | bytes,
        *,
        key: bytes | None = None,
        max_archive_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES,
    ) -> Fingerprint:
        """Read and validate a fingerprint zip (path or bytes); unsafe archives are refused.

        With ``key``, only archives signed with that key are accepted. Weight shapes were
        checked against the manifest by :func:`read_archive` before the networks below are built.
        """
        manifest, blobs = read_archive(source, key=key, max_archive_bytes=max_archive_bytes)
        autoencoders = []
        for layer in manifest.layers:
            ae = LayerAutoencoder(layer.autoencoder)
            try:
                state = st_load(blobs[layer.weights_file])
                ae.load_state_dict(state, strict=True)
            except Exception as exc:
                raise FingerprintError(
                    f"weights of layer {layer.name!r} ({layer.weights_file}) do not fit its autoencoder: {exc}"
                ) from exc
            ae.eval()
            autoencoders.append(ae)
        return cls(manifest=manifest, autoencoders=autoencoders)


def load_fingerprint(source: Fingerprint | str | os.PathLike | bytes, *, key: bytes | None = None) -> Fingerprint:
    """A :class:`Fingerprint` from a path, zip bytes, or an already loaded fingerprint.

    ``key``: accept only archives signed with it (an already loaded fingerprint passes through).
    """
    if isinstance(source, Fingerprint):
        return source
    return Fingerprint.load(source, key=key)
