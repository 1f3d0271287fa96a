"""Loading datasets (numpy arrays) from untrusted files or bytes, safely.

Accepted formats, recognised by their content (not their file name):

* ``.npy``: loaded with ``allow_pickle=False``; object arrays are refused.
* ``.npz``: one named array (``key``), or the only array in the archive.
* pickles: only numpy arrays (or a dict/list/tuple of them) are admitted. The pickle is
  read by :class:`NumpyOnlyUnpickler`, which resolves no global except the handful of numpy
  functions that rebuild an ``ndarray``; anything else (``os.system``, a class with a
  ``__reduce__``, ...) is refused *before* it can be called. The original service
  unpickled uploads as-is, which lets any upload run code; this closes that hole while still
  accepting what honest clients sent (``pickle.dump(array)``).

Sizes are checked from headers before data is read, so a small file cannot make us allocate
gigabytes.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FingerprintError, UnsafeInputError

DEFAULT_MAX_BYTES = 4 * 1024**3
"""Largest array (decompressed) a dataset may hold, in bytes."""

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"

# The only globals a pickled numpy array needs (numpy 1.x and 2.x spellings).
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        # Protocol 2 pickles spell bytes as _codecs.encode(text, "latin1"): it only turns a
        # string into bytes.
        ("_codecs", "encode"),
    }
)

DatasetSource = str | os.PathLike | bytes | np.ndarray


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else.

    ``find_class`` is the only way a pickle can reach a callable; refusing every name not in
    the allow-list means a hostile pickle fails with :class:`UnsafeInputError` at the first
    foreign global, before any of its code runs. Persistent ids (used by torch's format) are
    refused too.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeInputError(
            f"refused a pickle that references {module}.{name}: dataset pickles may only contain "
            "numpy arrays (save the data with numpy.save instead of pickle to avoid this check)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeInputError("refused a pickle that uses persistent ids: only numpy arrays are accepted")


def _read_source(source: str | os.PathLike | bytes, max_bytes: int) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FingerprintError(f"dataset file not found: {path}")
        size = path.stat().st_size
        if size > max_bytes:
            raise UnsafeInputError(f"dataset file {path} is {size} bytes, over the limit of {max_bytes}")
        data = path.read_bytes()
    if len(data) > max_bytes:
        raise UnsafeInputError(f"dataset is {len(data)} bytes, over the limit of {max_bytes}")
    return data


def _check_npy_header(stream: io.BufferedIOBase | Any, where: str, max_bytes: int) -> None:
    """Read an .npy header (leaves the stream after it) and refuse oversize or object arrays."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:  # (3, 0): same layout as 2.0 with utf8 field names
        shape, _fortran, dtype = np.lib.format._read_array_header(stream, version)  # noqa: SLF001
    if dtype.hasobject:
        raise UnsafeInputError(f"{where}: object arrays are refused (they need pickle); store numeric data")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes > max_bytes:
        raise UnsafeInputError(f"{where}: array of shape {shape} needs {nbytes} bytes, over the limit of {max_bytes}")


def _load_npy(data: bytes, max_bytes: int) -> np.ndarray:
    _check_npy_header(io.BytesIO(data), "npy", max_bytes)
    return np.load(io.BytesIO(data), allow_pickle=False)


def _load_npz(data: bytes, key: str | None, max_bytes: int) -> np.ndarray:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise FingerprintError(f"dataset looks like an .npz but is not a readable zip: {exc}") from exc
    with zf:
        members = {info.filename[:-4] if info.filename.endswith(".npy") else info.filename: info
                   for info in zf.infolist()}
        if key is None:
            if len(members) != 1:
                raise FingerprintError(
                    f"the .npz holds {len(members)} arrays ({', '.join(sorted(members))}); "
                    "name the one to use (dataset key / --dataset-key)"
                )
            key = next(iter(members))
        if key not in members:
            raise FingerprintError(f"array {key!r} not in the .npz; it holds: {', '.join(sorted(members))}")
        info = members[key]
        if info.file_size > max_bytes + 4096:
            raise UnsafeInputError(f"npz member {key!r} declares {info.file_size} bytes, over the limit of {max_bytes}")
        with zf.open(info) as member:
            _check_npy_header(member, f"npz member {key!r}", max_bytes)
        with zf.open(info) as member:
            raw = member.read(max_bytes + 4096 + 1)
    if len(raw) > max_bytes + 4096:
        raise UnsafeInputError(f"npz member {key!r} decompresses past the limit of {max_bytes} bytes")
    return np.load(io.BytesIO(raw), allow_pickle=False)


def _pick(obj: Any, key: str | None) -> Any:
    if isinstance(obj, dict):
        if key is None:
            if len(obj) != 1:
                raise FingerprintError(
                    f"the pickle holds a dict of {len(obj)} entries ({', '.join(map(str, obj))}); name the one to use"
                )
            return next(iter(obj.values()))
        if key not in obj:
            raise FingerprintError(f"key {key!r} not in the pickled dict; it holds: {', '.join(map(str, obj))}")
        return obj[key]
    if isinstance(obj, list | tuple):
        if key is not None:
            if not key.isdigit() or int(key) >= len(obj):
                raise FingerprintError(f"the pickle holds a sequence of {len(obj)} items; key must be an index, got {key!r}")
            return obj[int(key)]
        if obj and all(isinstance(item, np.ndarray) for item in obj):
            return obj[0]  # (x, y) pairs: features come first
    return obj


def _load_pickle(data: bytes, key: str | None) -> np.ndarray:
    try:
        obj = NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except UnsafeInputError:
        raise
    except Exception as exc:  # truncated or malformed pickle
        raise FingerprintError(f"could not read the dataset pickle: {exc}") from exc
    arr = _pick(obj, key)
    if not isinstance(arr, np.ndarray):
        raise FingerprintError(f"the dataset pickle holds a {type(arr).__name__}, not a numpy array")
    if arr.dtype.hasobject:
        raise UnsafeInputError("the dataset pickle holds an object array; store numeric data")
    return arr


def load_dataset(
    source: DatasetSource,
    *,
    key: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Load a numeric numpy array from a path, raw bytes (an upload) or an array.

    ``key`` names the array inside an ``.npz`` or a pickled dict. The format is recognised
    from the content, so an upload's file name does not matter. Raises
    :class:`UnsafeInputError` for inputs refused for safety and :class:`FingerprintError`
    for inputs that are merely wrong.
    """
    if isinstance(source, np.ndarray):
        arr = source
    else:
        data = _read_source(source, max_bytes)
        if not data:
            raise FingerprintError("the dataset is empty (0 bytes)", field="dataset")
        try:
            if data.startswith(_NPY_MAGIC):
                arr = _load_npy(data, max_bytes)
            elif data.startswith(_ZIP_MAGIC):
                arr = _load_npz(data, key, max_bytes)
            elif data[:1] == b"\x80" or data[:1] in (b"(", b"c", b"]", b"}"):
                arr = _load_pickle(data, key)
            else:
                raise FingerprintError(
                    "dataset format not recognised: expected .npy, .npz or a pickled numpy array", field="dataset"
                )
        except FingerprintError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
                KeyError, IndexError, TypeError, OverflowError) as exc:
            # A damaged or forged header/zip: numpy and zipfile raise many types for those.
            raise FingerprintError(
                f"could not read the dataset ({type(exc).__name__}: {exc}); send an intact .npy, .npz or "
                "pickled numpy array",
                field="dataset",
            ) from exc
    if (
        arr.dtype.hasobject
        or np.issubdtype(arr.dtype, np.complexfloating)
        or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_)
    ):
        raise FingerprintError(f"dataset must be real numbers, got dtype {arr.dtype}", field="dataset")
    if arr.ndim < 2:
        raise FingerprintError(
            f"dataset must have one row per sample (at least 2 dimensions), got shape {arr.shape}", field="dataset"
        )
    if arr.shape[0] == 0 or arr.size == 0:
        raise FingerprintError(f"dataset is empty (shape {arr.shape})", field="dataset")
    return arr


def check_finite(x: np.ndarray) -> np.ndarray:
    """Refuse NaN and infinite values (also those a float32 cast creates); returns ``x``.

    A NaN would propagate into every reconstruction error and from there into the
    calibration, where it would silently disable the threshold.
    """
    if np.issubdtype(x.dtype, np.floating):
        with np.errstate(over="ignore", invalid="ignore"):
            as32 = x if x.dtype == np.float32 else x.astype(np.float32)
        bad = ~np.isfinite(as32)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise FingerprintError(
                f"dataset has {int(bad.sum())} NaN or infinite values (as float32), the first in row {row}; "
                "clean or impute them first",
                field="dataset",
            )
    return x
