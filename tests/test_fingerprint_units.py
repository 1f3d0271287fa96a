"""Fast unit tests of the fingerprint building blocks (datasets, layouts, units, archive, mismatches)."""

from __future__ import annotations

import argparse
import io
import json
import os
import zipfile

import numpy as np
import pytest
import torch

from dfp_ray import fingerprint as nfp
from dfp_ray.fingerprint.activations import fit_input_layout, map_activation, select_units
from dfp_ray.fingerprint.calibration import combine_scores, fit_normaliser, layer_scores, threshold_at

os.environ.setdefault("KERAS_BACKEND", "torch")


# ----------------------------------------------------------------------------- datasets


def test_dataset_formats_are_recognised_by_content(tmp_path):
    arr = np.arange(24, dtype=np.float32).reshape(6, 4)
    np.save(tmp_path / "a.npy", arr)
    np.savez(tmp_path / "a.npz", x=arr, y=np.arange(6))
    (tmp_path / "renamed.bin").write_bytes((tmp_path / "a.npy").read_bytes())
    np.testing.assert_array_equal(nfp.load_dataset(tmp_path / "a.npy"), arr)
    np.testing.assert_array_equal(nfp.load_dataset(tmp_path / "renamed.bin"), arr)
    np.testing.assert_array_equal(nfp.load_dataset((tmp_path / "a.npz").read_bytes(), key="x"), arr)
    with pytest.raises(nfp.FingerprintError, match=r"holds 2 arrays \(x, y\)"):
        nfp.load_dataset(tmp_path / "a.npz")
    with pytest.raises(nfp.FingerprintError, match="'z' not in the .npz"):
        nfp.load_dataset(tmp_path / "a.npz", key="z")
    with pytest.raises(nfp.FingerprintError, match="at least 2 dimensions"):
        nfp.load_dataset(np.arange(5))
    with pytest.raises(nfp.FingerprintError, match="format not recognised"):
        nfp.load_dataset(b"hello world")


def test_npz_member_larger_than_the_limit_is_refused(tmp_path):
    np.savez_compressed(tmp_path / "big.npz", x=np.zeros((1000, 1000)))
    with pytest.raises(nfp.UnsafeInputError, match="over the limit"):
        nfp.load_dataset(tmp_path / "big.npz", max_bytes=100_000)


# ----------------------------------------------------------------------------- layouts and units


@pytest.mark.parametrize(
    ("shape", "want", "layout"),
    [
        ((5, 784), (28, 28, 1), "last"),
        ((5, 28, 28), (28, 28, 1), "last"),
        ((5, 1, 28, 28), (28, 28, 1), "last"),
        ((5, 28, 28, 1), (1, 28, 28), "first"),
        ((5, 28, 28), (1, 28, 28), "first"),
        ((5, 784), (1, 28, 28), "first"),
    ],
)
def test_fit_input_layout(shape, want, layout):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    out = fit_input_layout(x, want, layout)
    assert out.shape == (5, *want)
    # Same pixels wherever they moved: compare as 28x28 images.
    img = x.reshape(5, 28, 28) if x.size == 5 * 784 else x
    np.testing.assert_array_equal(out.reshape(5, 28, 28), img.reshape(5, 28, 28))


def test_fit_input_layout_without_declared_shape_and_mismatch():
    x = np.zeros((3, 28, 28, 3), np.float32)
    assert fit_input_layout(x, None, "first").shape == (3, 3, 28, 28)
    assert fit_input_layout(np.zeros((3, 28, 28), np.float32), None, "first").shape == (3, 1, 28, 28)
    with pytest.raises(nfp.FingerprintError, match=r"samples have shape \(10,\) but the model expects \(28, 28, 1\)"):
        fit_input_layout(np.zeros((3, 10), np.float32), (28, 28, 1), "last")


def test_unit_selection_is_seeded_sorted_and_sized():
    a = select_units(1000, 0.2, seed=3, layer_index=1)
    assert len(a) == 200 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, select_units(1000, 0.2, seed=3, layer_index=1))
    assert not np.array_equal(a, select_units(1000, 0.2, seed=3, layer_index=2))
    assert len(select_units(10, 0.2, 0, 0)) == 10  # small layers keep at least 16 units (or all)
    assert len(select_units(100, 0.01, 0, 0)) == 16
    with pytest.raises(nfp.FingerprintError, match="partial_activations"):
        select_units(10, 0.0, 0, 0)


def test_activation_mapping_is_layout_independent_and_fixed_size():
    t = torch.randn(2, 8, 13, 13)
    first = map_activation(t, "first", True, 4)
    last = map_activation(t.permute(0, 2, 3, 1), "last", True, 4)
    assert first.shape == (2, 2 * 8 * 16)
    torch.testing.assert_close(first, last)
    # Means come first, then maxima; larger inputs map to the same size.
    assert torch.all(first[:, 128:] >= first[:, :128])
    assert map_activation(torch.randn(2, 8, 40, 40), "first", True, 4).shape == (2, 256)
    assert map_activation(t, "first", False, 4).shape == (2, 8 * 13 * 13)
    assert map_activation(torch.randn(2, 10), "first", True, 4).shape == (2, 10)


# ----------------------------------------------------------------------------- calibration


def test_calibrated_threshold_flags_about_100_minus_p_percent():
    rng = np.random.default_rng(1)
    layers = 5
    cal = rng.lognormal(size=(layers, 2000)) * np.arange(1, layers + 1)[:, None]
    fresh = rng.lognormal(size=(layers, 20000)) * np.arange(1, layers + 1)[:, None]
    norms = [fit_normaliser(c) for c in cal]
    for method in ("max", "mean"):
        cal_scores = combine_scores(np.vstack([layer_scores(c, *n) for c, n in zip(cal, norms, strict=True)]), method)
        new_scores = combine_scores(np.vstack([layer_scores(c, *n) for c, n in zip(fresh, norms, strict=True)]), method)
        for p in (90, 95, 99):
            rate = 100 * np.mean(new_scores > threshold_at(cal_scores, p))
            assert abs(rate - (100 - p)) < 1.2, (method, p, rate)


# ----------------------------------------------------------------------------- fingerprints and archives


@pytest.fixture(scope="module")
def tiny_torch(tmp_path_factory):
    """A small random CNN saved in every torch format (untrained: enough to test plumbing)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3)
    ).eval()
    out = tmp_path_factory.mktemp("tiny")
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.export.save(torch.export.export(model, (torch.zeros(2, 1, 12, 12),), dynamic_shapes=({0: batch},)),
                      str(out / "m.pt2"))
    torch.export.save(torch.export.export(model, (torch.zeros(4, 1, 12, 12),)), str(out / "static.pt2"))
    torch.jit.save(torch.jit.script(model), str(out / "m_script.pt"))
    torch.save(model.state_dict(), out / "m_state.pt")
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(out / "m.safetensors"))
    (out / "def.py").write_text(
        "import torch\n"
        "def build_model():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),\n"
        "                               torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3))\n"
    )
    x = np.random.default_rng(0).random((150, 12, 12)).astype(np.float32)
    return out, model, x


def test_all_torch_formats_give_the_same_layers_hash_and_activations(tiny_torch):
    out, model, x = tiny_torch
    batch = x[:10, None]
    loaded = {
        "pt2": nfp.load_model(out / "m.pt2", device="cpu"),
        "static_pt2": nfp.load_model(out / "static.pt2", device="cpu"),
        "torchscript": nfp.load_model(out / "m_script.pt", device="cpu"),
        "state_dict": nfp.load_model(out / "m_state.pt", model_def=out / "def.py", allow_model_code=True, device="cpu"),
        "safetensors": nfp.load_model(out / "m.safetensors", model_def=out / "def.py", allow_model_code=True, device="cpu"),
    }
    with torch.no_grad():
        ref = [model[0](torch.as_tensor(batch)), None, None]
        ref[1] = model[2](model[1](ref[0]))
        ref[2] = model[4](model[3](ref[1]))
    for name, m in loaded.items():
        assert m.layer_names == ["0", "2", "4"], name
        assert m.weights_sha256 == loaded["pt2"].weights_sha256, name
        outs = m.layer_outputs(batch, m.layer_names)  # 10 rows: the static .pt2 pads to batches of 4
        for got, want in zip(outs, ref, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert loaded["pt2"].input_shape == (1, 12, 12)


def test_fingerprint_round_trip_and_manifest(tiny_torch, tmp_path):
    out, _, x = tiny_torch
    fp = nfp.create(x, out / "m.pt2", partial_activations=0.5, epochs=3, seed=4)
    path = fp.save(tmp_path / "fp.zip")
    again = nfp.load_fingerprint(path)
    a = nfp.score(fp, x[:40], out / "m.pt2")
    b = nfp.score(again, x[:40], out / "m_script.pt")
    assert a.sample_scores == pytest.approx(b.sample_scores, rel=1e-5, abs=1e-5)
    with zipfile.ZipFile(path) as zf:
        names = sorted(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
    assert names == ["layers/000.safetensors", "layers/001.safetensors", "layers/002.safetensors", "manifest.json"]
    assert manifest["format"] == "dfp-ray-fingerprint" and manifest["format_version"] == 2
    assert manifest["kind"] == "layered" and manifest["num_layers"] == 3
    assert manifest["model"]["weights_sha256"] == nfp.load_model(out / "m.pt2", device="cpu").weights_sha256
    assert manifest["created_at"].endswith("Z") or "+00:00" in manifest["created_at"]
    assert manifest["settings"]["partial_activations"] == 0.5 and manifest["settings"]["seed"] == 4
    conv = manifest["layers"][0]
    assert conv["raw_shape"] == [4, 10, 10] and conv["mapped_size"] == 2 * 4 * 16
    assert conv["units_kept"] == select_units(128, 0.5, 4, 0).tolist()
    assert len(conv["rmse_calibration"]) == manifest["calibration"]["calibration_rows"] == 45
    assert set(manifest["calibration"]["thresholds"]) >= {"95", "99"}
    assert manifest["calibration"]["thresholds"]["95"] == pytest.approx(fp.threshold(95))
    for name, entry in manifest["files"].items():
        assert entry["size"] == len(zipfile.ZipFile(path).read(name))


def test_scoring_mismatches_are_clear_errors(tiny_torch):
    out, model, x = tiny_torch
    fp = nfp.create(x, out / "m.pt2", epochs=2, activation_mapping=False)
    with pytest.raises(nfp.FingerprintMismatchError, match="num_layers is 2 but the fingerprint has 3 layers"):
        nfp.score(fp, x[:5], out / "m.pt2", num_layers=2)
    with pytest.raises(nfp.FingerprintMismatchError, match="created without activation mapping.*--no-activation-mapping"):
        nfp.score(fp, x[:5], out / "m.pt2", activation_mapping=True)
    assert nfp.score(fp, x[:5], out / "m.pt2", num_layers=3, activation_mapping=False).n_samples == 5
    with pytest.raises(nfp.FingerprintError, match="layered .* pass the same model"):
        nfp.score(fp, x[:5])
    other = torch.nn.Sequential(*[m for m in model]).eval()
    with torch.no_grad():
        other[4].weight.add_(0.01)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(other), buf)
    with pytest.raises(nfp.FingerprintMismatchError, match="weights differ"):
        nfp.score(fp, x[:5], buf.getvalue())
    raw = nfp.create(x.reshape(150, -1), epochs=2)
    with pytest.raises(nfp.FingerprintMismatchError, match="non-layered .* omit the model"):
        nfp.score(raw, x[:5], out / "m.pt2")
    with pytest.raises(nfp.FingerprintMismatchError, match="samples have 100 values"):
        nfp.score(raw, np.zeros((5, 100), np.float32))
    with pytest.raises(nfp.FingerprintError, match="percentile must be between 0 and 100"):
        nfp.score(raw, x[:5], percentile=100)


def test_bad_settings_and_inputs_are_reported():
    x = np.zeros((30, 4), np.float32)
    with pytest.raises(nfp.FingerprintError, match="the dataset has 30 rows"):
        nfp.create(x)
    with pytest.raises(ValueError, match="partial_activations"):
        nfp.create(np.zeros((200, 4), np.float32), partial_activations=1.5)
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        nfp.create(np.zeros((200, 4), np.float32), no_such_option=1)


def test_keras_dot_keras_format_and_layer_choice(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=(8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu", name="c"),
                              keras.layers.GlobalAveragePooling2D(name="gap"), keras.layers.Dense(2, name="out")])
    model.save(str(tmp_path / "m.keras"))
    x = np.random.default_rng(0).random((120, 64)).astype(np.float32)  # flat rows, reshaped to 8x8x1
    loaded = nfp.load_model((tmp_path / "m.keras").read_bytes(), device="cpu")
    assert loaded.framework == "keras" and loaded.layer_names == ["c", "gap", "out"]
    assert loaded.default_layer_names == ["c", "gap"]  # the output layer is selectable, not a default
    fp = nfp.create(x, loaded, layers=["c", "out"], epochs=2)
    assert fp.layer_names == ["c", "out"] and fp.manifest.input_shape == [8, 8, 1]
    assert fp.manifest.layers[0].raw_shape == [4, 6, 6]  # stored channel-first
    with pytest.raises(nfp.FingerprintError, match="layer 'nope' not found.*c, gap, out"):
        nfp.create(x, loaded, layers=["nope"], epochs=1)
    with pytest.raises(nfp.FingerprintError, match="model_type is 'pytorch' but the file is a keras model"):
        nfp.load_model(tmp_path / "m.keras", "pytorch")


def test_keras_functional_model_with_a_branch(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=(6,))
    a = keras.layers.Dense(5, activation="relu", name="a")(inp)
    b = keras.layers.Dense(5, name="b")(inp)
    out = keras.layers.Dense(2, name="out")(keras.layers.Add(name="add")([a, b]))
    model = keras.Model(inp, out)
    model.save(str(tmp_path / "f.h5"))
    loaded = nfp.load_model(tmp_path / "f.h5", device="cpu")
    # Every layer counts, weights or not; the output layer is found from the model's outputs.
    assert loaded.layer_names == ["a", "b", "add", "out"]
    assert loaded.default_layer_names == ["a", "b", "add"]
    x = np.random.default_rng(0).random((7, 6)).astype(np.float32)
    outs = loaded.layer_outputs(x, ["out", "a"])
    np.testing.assert_allclose(outs[0].detach().cpu().numpy(), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    kernel, bias = model.get_layer("a").get_weights()
    np.testing.assert_allclose(outs[1].detach().cpu().numpy(), np.maximum(x @ kernel + bias, 0), rtol=1e-5, atol=1e-6)


def test_every_cli_option_has_help():
    from dfp_ray.commands import fingerprint as command

    root = argparse.ArgumentParser()
    command.register(root.add_subparsers())
    stack = [root]
    seen = 0
    while stack:
        parser = stack.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif not isinstance(action, argparse._HelpAction) and action.dest != "help":
                assert action.help, f"{parser.prog}: option {action.option_strings or action.dest} has no help"
                seen += 1
    assert seen > 30


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_scores_match_cpu(tiny_torch):
    out, _, x = tiny_torch
    fp_gpu = nfp.create(x, out / "m.pt2", epochs=3, device="cuda")
    assert fp_gpu.autoencoders[0].mean.device.type == "cpu"  # stored on CPU, usable anywhere
    on_gpu = nfp.score(fp_gpu, x[:50], out / "m.pt2", device="cuda")
    on_cpu = nfp.score(fp_gpu, x[:50], out / "m.pt2", device="cpu")
    np.testing.assert_allclose(on_gpu.sample_scores, on_cpu.sample_scores, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("d", [1, 10, 300, 5000])
def test_expected_state_shapes_match_the_network(d):
    """The archive reader checks weights against these shapes instead of building the network first."""
    from dfp_ray.fingerprint.autoencoders import AutoencoderShape, LayerAutoencoder, expected_state_shapes

    shape = AutoencoderShape.for_input(d)
    actual = {name: tuple(t.shape) for name, t in LayerAutoencoder(shape).state_dict().items()}
    assert expected_state_shapes(shape) == actual
