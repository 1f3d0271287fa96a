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
from fingerprint_helpers import forge_member_size, read_manifest, rezip, with_manifest

from dfp_ray import fingerprint as nfp
from dfp_ray.cli import main as cli_main
from dfp_ray.fingerprint.archive import read_archive, seal

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


def test_archive_round_trip_is_accepted(small_fingerprint_bytes):
    manifest, blobs = read_archive(small_fingerprint_bytes)
    assert set(blobs) == {"layers/000.safetensors"}


@pytest.mark.parametrize("name", ["../evil.txt", "layers/../../evil.txt", "/etc/evil.txt", "C:/evil.txt"])
def test_archive_with_escaping_paths_is_refused(small_fingerprint_bytes, name, tmp_path):
    bad = rezip(small_fingerprint_bytes, extra={name: b"x"})
    with pytest.raises(nfp.UnsafeInputError, match="unsafe member path"):
        nfp.load_fingerprint(bad)
    path = tmp_path / "bad.zip"
    path.write_bytes(bad)
    assert cli_main(["fingerprint", "info", "--fingerprint", str(path)]) == 2
    assert not (tmp_path.parent / "evil.txt").exists()


def test_zip_bomb_is_refused_before_decompression(small_fingerprint_bytes):
    bomb = rezip(small_fingerprint_bytes, replace={"layers/000.safetensors": bytes(64 * 1024**2)})
    assert len(bomb) < 1024**2  # 64 MiB of zeros compress to ~64 KiB
    with pytest.raises(nfp.UnsafeInputError, match="zip bomb"):
        nfp.load_fingerprint(bomb)


def test_oversize_member_is_refused(small_fingerprint_bytes):
    with pytest.raises(nfp.UnsafeInputError, match="declares .* bytes"):
        read_archive(small_fingerprint_bytes, max_member_bytes=1000)


def test_more_files_than_the_manifest_names_is_refused(small_fingerprint_bytes):
    bad = rezip(small_fingerprint_bytes, extra={"layers/001.safetensors": b"not named in the manifest"})
    with pytest.raises(nfp.UnsafeInputError, match="files the manifest does not name: layers/001.safetensors"):
        nfp.load_fingerprint(bad)


def test_tampered_weights_or_manifest_are_refused(small_fingerprint_bytes):
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(small_fingerprint_bytes)).read("manifest.json"))
    with pytest.raises(nfp.FingerprintError, match="does not match its size/hash"):
        nfp.load_fingerprint(rezip(small_fingerprint_bytes, replace={"layers/000.safetensors": b"\x00" * 100}))
    manifest["surprise"] = 1
    with pytest.raises(nfp.FingerprintError, match="manifest.json was modified"):
        nfp.load_fingerprint(rezip(small_fingerprint_bytes, replace={"manifest.json": json.dumps(manifest).encode()}))
    # Re-hashed (anyone can recompute a plain hash), the unknown field is still refused by validation.
    with pytest.raises(nfp.FingerprintError, match="invalid fingerprint manifest"):
        nfp.load_fingerprint(rezip(small_fingerprint_bytes, replace={"manifest.json": json.dumps(seal(manifest, None)).encode()}))
    del manifest["surprise"]
    manifest["format_version"] = 99
    with pytest.raises(nfp.FingerprintError, match="format version 99 is not supported"):
        nfp.load_fingerprint(rezip(small_fingerprint_bytes, replace={"manifest.json": json.dumps(manifest).encode()}))


# ----------------------------------------------------------------------------- archive hardening (issue 11, item 8)


@pytest.mark.parametrize(("member", "declared"), [("manifest.json", 100), ("layers/000.safetensors", 64)])
def test_forged_member_size_is_a_clean_error(small_fingerprint_bytes, member, declared, tmp_path, capsys):
    """A header declaring fewer bytes than the member holds makes zipfile raise BadZipFile (CRC):
    reported as a damaged archive, never a traceback."""
    forged = forge_member_size(small_fingerprint_bytes, member, declared)
    with pytest.raises(nfp.FingerprintError, match="damaged or forged"):
        nfp.load_fingerprint(forged)
    path = tmp_path / "forged.zip"
    path.write_bytes(forged)
    assert cli_main(["fingerprint", "info", "--fingerprint", str(path)]) == 2
    assert "damaged or forged" in capsys.readouterr().err


def test_forged_larger_member_size_still_reads_only_the_real_bytes(small_fingerprint_bytes):
    """Declaring more bytes than stored cannot inflate what is read: the stream ends, hashes still match."""
    forged = forge_member_size(small_fingerprint_bytes, "layers/000.safetensors", 10**6)
    again = nfp.load_fingerprint(forged)
    assert again.manifest.files == nfp.load_fingerprint(small_fingerprint_bytes).manifest.files


def test_randomly_damaged_archives_raise_only_fingerprint_errors(small_fingerprint_bytes):
    """400 seeded bit-flips and truncations: each loads or fails with FingerprintError, nothing else."""
    rng = np.random.default_rng(11)
    outcomes = {"loaded": 0, "refused": 0}
    for trial in range(400):
        data = bytearray(small_fingerprint_bytes)
        if trial % 10 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        else:
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 9))):
                data[int(pos)] = int(rng.integers(0, 256))
        try:
            nfp.load_fingerprint(bytes(data))
            outcomes["loaded"] += 1
        except nfp.FingerprintError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 300, outcomes  # most damage is detected (the rest hits unused bytes)


_PEAK_RSS_PROBE = """
import resource, sys
from dfp_ray import fingerprint as nfp
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    nfp.load_fingerprint(data)
    outcome = "loaded"
except nfp.FingerprintError as exc:
    outcome = "refused: " + str(exc)
grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(grown_kib)
print(outcome)
"""


def test_manifest_declaring_huge_layers_is_refused_before_allocation(small_fingerprint_bytes, tmp_path):
    """A few-KB archive whose (re-hashed) manifest declares a 4M-wide hidden layer: ~0.5 GB of weights.

    Refused from the weights file's header, before the network is built: the reader's peak
    memory (measured in a fresh process) does not grow.
    """
    import subprocess
    import sys

    manifest = read_manifest(small_fingerprint_bytes)
    manifest["layers"][0]["autoencoder"]["hidden_size"] = 2**22
    forged = with_manifest(small_fingerprint_bytes, manifest, reseal=True)
    assert len(forged) < 20_000
    path = tmp_path / "huge.zip"
    path.write_bytes(forged)
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS_PROBE, str(path)], capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    grown_mib = int(out[0]) / 1024
    assert out[1].startswith("refused: ") and "declares net.0.weight of shape [4194304, 12]" in out[1], out[1]
    assert "before building its network" in out[1]
    assert grown_mib < 64, f"peak memory grew {grown_mib:.0f} MiB while refusing the archive"


@pytest.mark.parametrize(
    "edit",
    ["threshold", "normaliser", "default_percentile", "calibration_score", "units_kept"],
)
def test_edited_manifest_numbers_are_refused(small_fingerprint_bytes, edit):
    """Each number that decides verdicts is covered by the manifest's content hash."""
    manifest = read_manifest(small_fingerprint_bytes)
    if edit == "threshold":
        manifest["calibration"]["thresholds"]["95"] += 5.0
    elif edit == "normaliser":
        manifest["layers"][0]["normaliser"]["centre"] += 1.0
    elif edit == "default_percentile":
        manifest["default_percentile"] = 99.9
    elif edit == "calibration_score":
        manifest["calibration"]["combined_scores"][0] = 1e9
    else:
        manifest["layers"][0]["units_kept"][0] = manifest["layers"][0]["units_kept"][1]
    edited = with_manifest(small_fingerprint_bytes, manifest, reseal=False)
    with pytest.raises(nfp.FingerprintError, match="manifest.json was modified after the fingerprint was written"):
        nfp.load_fingerprint(edited)
    data = np.random.default_rng(1).normal(size=(30, 12)).astype(np.float32)
    with pytest.raises(nfp.FingerprintError, match="modified"):
        nfp.score(edited, data)
    assert nfp.score(small_fingerprint_bytes, data).n_samples == 30  # positive control


def test_manifest_with_duplicate_keys_is_refused(small_fingerprint_bytes):
    text = json.dumps(read_manifest(small_fingerprint_bytes))
    doubled = text[:-1] + ', "default_percentile": 50.0}'
    with pytest.raises(nfp.FingerprintError, match="repeats the key 'default_percentile'"):
        nfp.load_fingerprint(rezip(small_fingerprint_bytes, replace={"manifest.json": doubled.encode()}))


def test_version_1_archives_without_integrity_are_refused(small_fingerprint_bytes):
    manifest = read_manifest(small_fingerprint_bytes)
    del manifest["integrity"]
    with pytest.raises(nfp.FingerprintError, match="no integrity section"):
        nfp.load_fingerprint(with_manifest(small_fingerprint_bytes, manifest, reseal=False))
    manifest["format_version"] = 1
    with pytest.raises(nfp.FingerprintError, match="format version 1 is not supported.*re-create"):
        nfp.load_fingerprint(with_manifest(small_fingerprint_bytes, manifest, reseal=False))


def test_hmac_signed_archives(tmp_path, monkeypatch, capsys):
    """With a key, a reader accepts only archives signed with that key."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(200, 12)).astype(np.float32)
    fp = nfp.create(data, epochs=2)
    signed = fp.to_bytes(key=b"server-key")
    unsigned = fp.to_bytes()
    assert read_manifest(signed)["integrity"]["hmac_sha256"] and read_manifest(unsigned)["integrity"]["hmac_sha256"] is None
    assert nfp.load_fingerprint(signed, key=b"server-key").num_layers == 1
    assert nfp.load_fingerprint(signed).num_layers == 1  # readers without a key check the content hash only
    with pytest.raises(nfp.UnsafeInputError, match="not signed"):
        nfp.load_fingerprint(unsigned, key=b"server-key")
    with pytest.raises(nfp.UnsafeInputError, match="signature does not match"):
        nfp.load_fingerprint(signed, key=b"another-key")
    # An attacker who edits a number and recomputes the plain hash still fails the HMAC.
    manifest = read_manifest(signed)
    manifest["calibration"]["thresholds"]["95"] = 1e9
    forged = with_manifest(signed, {**manifest, "integrity": None}, reseal=True)
    with pytest.raises(nfp.UnsafeInputError, match="not signed"):
        nfp.load_fingerprint(forged, key=b"server-key")
    forged = with_manifest(signed, manifest, reseal=True, key=b"guessed-key")
    with pytest.raises(nfp.UnsafeInputError, match="signature does not match"):
        nfp.score(forged, data[:20], key=b"server-key")
    # The CLI takes the key from an environment variable it is told the name of.
    monkeypatch.setenv("FP_TEST_KEY", "server-key")
    np.save(tmp_path / "d.npy", data)
    out = tmp_path / "signed.zip"
    assert cli_main(["fingerprint", "create", "--dataset", str(tmp_path / "d.npy"), "--epochs", "2", "--no-progress",
                     "--key-env", "FP_TEST_KEY", "--out", str(out)]) == 0
    assert nfp.load_fingerprint(out, key=b"server-key").num_layers == 1
    (tmp_path / "unsigned.zip").write_bytes(unsigned)
    assert cli_main(["fingerprint", "score", "--fingerprint", str(tmp_path / "unsigned.zip"), "--dataset",
                     str(tmp_path / "d.npy"), "--key-env", "FP_TEST_KEY"]) == 2
    assert "not signed" in capsys.readouterr().err
    assert cli_main(["fingerprint", "info", "--fingerprint", str(out), "--key-env", "FP_TEST_UNSET_VAR"]) == 2
    assert "FP_TEST_UNSET_VAR is not set" in capsys.readouterr().err


def test_nan_datasets_are_refused():
    data = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    data[7, 2] = np.nan
    with pytest.raises(nfp.FingerprintError, match="1 NaN or infinite values.*row 7"):
        nfp.create(data, epochs=1)
    big = np.full((100, 4), 1e300)  # finite in float64, infinite as float32
    with pytest.raises(nfp.FingerprintError, match="400 NaN or infinite"):
        nfp.create(big, epochs=1)
