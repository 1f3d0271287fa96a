"""Every refused input is really tried, refused with its reason, and nothing in it runs.

Each hostile input carries a payload that would create a marker file if it were executed;
the tests assert the refusal message *and* that the marker does not exist.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dfp_ray import fingerprint as nfp
from dfp_ray.cli import main as cli_main
from dfp_ray.fingerprint.archive import read_archive

os.environ.setdefault("KERAS_BACKEND", "torch")


class _WritesMarker:
    """Unpickling this calls open(path, 'w'): a stand-in for os.system in a real attack."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


@pytest.fixture(scope="module")
def small_fingerprint_bytes() -> bytes:
    rng = np.random.default_rng(0)
    fp = nfp.create(rng.normal(size=(200, 12)).astype(np.float32), epochs=2)
    return fp.to_bytes()


# ----------------------------------------------------------------------------- datasets


def test_pickle_that_would_run_code_is_refused(tmp_path, marker):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"x": np.zeros((3, 4)), "payload": _WritesMarker(marker)}))
    with pytest.raises(nfp.UnsafeInputError, match=r"references (io|builtins)\.open"):
        nfp.load_dataset(path, key="x")
    assert not marker.exists()
    # Protocol 0 (text) pickles are refused the same way.
    with pytest.raises(nfp.UnsafeInputError, match="only contain numpy arrays"):
        nfp.load_dataset(pickle.dumps(_WritesMarker(marker), protocol=0))
    assert not marker.exists()


def test_pickle_refused_through_the_cli_too(tmp_path, marker, capsys):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_WritesMarker(marker)))
    rc = cli_main(["fingerprint", "create", "--dataset", str(evil), "--out", str(tmp_path / "fp.zip"), "--no-progress"])
    assert rc == 2
    assert "refused a pickle that references io.open" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "fp.zip").exists()


def test_pickled_numpy_arrays_are_accepted():
    arr = np.arange(12, dtype=np.float64).reshape(3, 4)
    for protocol in (2, 4, 5):
        np.testing.assert_array_equal(nfp.load_dataset(pickle.dumps(arr, protocol=protocol)), arr)
    np.testing.assert_array_equal(nfp.load_dataset(pickle.dumps({"train": arr}), key="train"), arr)


def test_object_arrays_are_refused(tmp_path):
    obj = np.array([[1, "a"], [2, "b"]], dtype=object)
    with pytest.raises(nfp.UnsafeInputError, match="object array"):
        nfp.load_dataset(pickle.dumps(obj))
    np.save(tmp_path / "obj.npy", obj, allow_pickle=True)
    with pytest.raises(nfp.UnsafeInputError, match="object arrays are refused"):
        nfp.load_dataset(tmp_path / "obj.npy")


# ----------------------------------------------------------------------------- Keras


def test_keras_h5_with_lambda_layer_is_refused(tmp_path, marker):
    import keras

    def side_effect(x):
        Path(str(marker)).write_text("ran")
        return x * 2.0

    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3, name="d"),
                              keras.layers.Lambda(side_effect, name="sneaky")])
    path = tmp_path / "lambda.h5"
    model.save(str(path))
    marker.unlink(missing_ok=True)  # building the model above called the function once
    with pytest.raises(nfp.UnsafeInputError, match=r"Lambda layers \('sneaky' \(Lambda\)\)"):
        nfp.load_model(path, "keras", device="cpu")
    with pytest.raises(nfp.UnsafeInputError, match="Lambda"):
        nfp.create(np.zeros((100, 4), np.float32), path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- PyTorch

MODEL_DEF_WITH_SIDE_EFFECT = """
from pathlib import Path
import torch
from torch import nn
Path({marker!r}).write_text("model_def ran")

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)
"""


def test_model_def_needs_explicit_permission(tmp_path, marker):
    torch.manual_seed(0)
    state = tmp_path / "state.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3)).state_dict(), state)
    # The state dict of a Sequential has keys "0.weight"; the def below names it "fc": rename.
    torch.save({"fc." + k.split(".", 1)[1]: v for k, v in torch.load(state).items()}, state)
    model_def = tmp_path / "model_def.py"
    model_def.write_text(MODEL_DEF_WITH_SIDE_EFFECT.format(marker=str(marker)))
    data = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    with pytest.raises(nfp.UnsafeInputError, match="refused to execute the model_def file.*allow_model_code=True"):
        nfp.create(data, state, model_type="pytorch", model_def=model_def)
    assert not marker.exists()
    rc = cli_main(["fingerprint", "create", "--model", str(state), "--model-def", str(model_def), "--dataset",
                   str(_save(tmp_path / "d.npy", data)), "--out", str(tmp_path / "fp.zip"), "--no-progress"])
    assert rc == 2 and not marker.exists()
    # Positive control: with permission the same file runs (marker appears) and the model is usable.
    fp = nfp.create(data, state, model_def=model_def, allow_model_code=True, epochs=2)
    assert marker.exists() and fp.layer_names == ["fc"]


def _save(path: Path, arr: np.ndarray) -> Path:
    np.save(path, arr)
    return path


def test_whole_module_pickle_is_refused(tmp_path, marker):
    path = tmp_path / "module.pt"
    torch.save({"weights": torch.zeros(2), "payload": _WritesMarker(marker)}, path)
    with pytest.raises(nfp.UnsafeInputError, match="weights_only=True"):
        nfp.load_model(path, "pytorch", model_def=b"", allow_model_code=False)
    assert not marker.exists()


def test_pt2_with_pickled_member_is_refused(tmp_path, marker):
    """torch.export.load would unpickle sample inputs with full pickle as a fallback: vetted first."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(2, 4),)), str(good))
    evil = tmp_path / "evil.pt2"
    payload = io.BytesIO()
    torch.save(_WritesMarker(marker), payload)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data/sample_inputs/model.pt"):
                data = payload.getvalue()
            dst.writestr(info, data)
    with pytest.raises(nfp.UnsafeInputError, match="not a weights-only pickle"):
        nfp.load_model(evil, "pytorch", device="cpu")
    assert not marker.exists()
    assert nfp.load_model(good, "pytorch", device="cpu").layer_names == ["0"]  # positive control


# ----------------------------------------------------------------------------- fingerprint archives


def _rezip(original: bytes, extra: dict[str, bytes] | None = None, replace: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(original)) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, (replace or {}).get(info.filename, src.read(info)))
        for name, data in (extra or {}).items():
            dst.writestr(name, data)
    return buf.getvalue()


def test_archive_round_trip_is_accepted(small_fingerprint_bytes):
    manifest, blobs = read_archive(small_fingerprint_bytes)
    assert set(blobs) == {"layers/000.safetensors"}


@pytest.mark.parametrize("name", ["../evil.txt", "layers/../../evil.txt", "/etc/evil.txt", "C:/evil.txt"])
def test_archive_with_escaping_paths_is_refused(small_fingerprint_bytes, name, tmp_path):
    bad = _rezip(small_fingerprint_bytes, extra={name: b"x"})
    with pytest.raises(nfp.UnsafeInputError, match="unsafe member path"):
        nfp.load_fingerprint(bad)
    path = tmp_path / "bad.zip"
    path.write_bytes(bad)
    assert cli_main(["fingerprint", "info", "--fingerprint", str(path)]) == 2
    assert not (tmp_path.parent / "evil.txt").exists()


def test_zip_bomb_is_refused_before_decompression(small_fingerprint_bytes):
    bomb = _rezip(small_fingerprint_bytes, replace={"layers/000.safetensors": bytes(64 * 1024**2)})
    assert len(bomb) < 1024**2  # 64 MiB of zeros compress to ~64 KiB
    with pytest.raises(nfp.UnsafeInputError, match="zip bomb"):
        nfp.load_fingerprint(bomb)


def test_oversize_member_is_refused(small_fingerprint_bytes):
    with pytest.raises(nfp.UnsafeInputError, match="declares .* bytes"):
        read_archive(small_fingerprint_bytes, max_member_bytes=1000)


def test_more_files_than_the_manifest_names_is_refused(small_fingerprint_bytes):
    bad = _rezip(small_fingerprint_bytes, extra={"layers/001.safetensors": b"not named in the manifest"})
    with pytest.raises(nfp.UnsafeInputError, match="files the manifest does not name: layers/001.safetensors"):
        nfp.load_fingerprint(bad)


def test_tampered_weights_or_manifest_are_refused(small_fingerprint_bytes):
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(small_fingerprint_bytes)).read("manifest.json"))
    with pytest.raises(nfp.FingerprintError, match="does not match its size/hash"):
        nfp.load_fingerprint(_rezip(small_fingerprint_bytes, replace={"layers/000.safetensors": b"\x00" * 100}))
    manifest["surprise"] = 1
    with pytest.raises(nfp.FingerprintError, match="invalid fingerprint manifest"):
        nfp.load_fingerprint(_rezip(small_fingerprint_bytes, replace={"manifest.json": json.dumps(manifest).encode()}))
    del manifest["surprise"]
    manifest["format_version"] = 99
    with pytest.raises(nfp.FingerprintError, match="format version 99 is not supported"):
        nfp.load_fingerprint(_rezip(small_fingerprint_bytes, replace={"manifest.json": json.dumps(manifest).encode()}))
