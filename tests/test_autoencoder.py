"""Tests of dfp_ray.autoencoder: learning, anomaly z-scores, save/load, unseen values, config errors.

Small layers and few epochs everywhere except where Morpheus's defaults themselves are checked.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from dfp_ray.autoencoder import (
    OTHER_LABEL,
    AutoencoderParams,
    DFPAutoencoder,
    TrainingReport,
    embedding_dim,
)
from dfp_ray.autoencoder.encoding import FeatureEncoder, binary_values

CATS = ["browser", "os", "device"]
NUMS = ["logcount", "locincrement"]
BINS = ["result"]

SMALL = dict(encoder_layers=[32, 16], decoder_layers=[32], batch_size=64, eval_batch_size=128)


def make_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """Learnable Duo-like rows: the browser determines the os, device and (mostly) the numerics."""
    rng = np.random.default_rng(seed)
    browser_idx = rng.choice(4, size=n, p=[0.5, 0.25, 0.15, 0.1])
    browsers = np.array(["chrome", "firefox", "safari", "edge"], dtype=object)
    oses = np.array(["windows", "linux", "macos", "windows"], dtype=object)
    devices = np.array(["laptop-1", "laptop-2", "phone-1", "laptop-1"], dtype=object)
    return pd.DataFrame(
        {
            "browser": browsers[browser_idx],
            "os": oses[browser_idx],
            "device": devices[browser_idx],
            "result": browser_idx != 3,
            "logcount": (browser_idx * 10 + rng.integers(0, 3, size=n)).astype(float),
            "locincrement": (1 + (browser_idx == 2)).astype(np.int64),
            "unrelated": rng.random(n),  # extra columns are ignored
        }
    )


@pytest.fixture(scope="module")
def trained() -> tuple[DFPAutoencoder, TrainingReport, pd.DataFrame]:
    df = make_frame(800)
    params = AutoencoderParams(**SMALL, optimizer="adam", learning_rate=0.01, epochs=12, seed=7)
    model = DFPAutoencoder(CATS, NUMS, BINS, params)
    report = model.fit(df)
    return model, report, df


# ---------------------------------------------------------------------------- learning


def test_loss_falls_on_learnable_data(trained):
    model, report, df = trained
    assert report.epochs_run == len(report.train_loss) == len(report.val_loss)
    assert report.train_loss[-1] < 0.3 * report.train_loss[0]
    assert report.val_loss[-1] < 0.3 * report.val_loss[0]
    assert report.best_val_loss == min(report.val_loss)
    assert report.train_rows == 720 and report.val_rows == 80 and report.rows == 800
    assert set(report.train_feature_loss) == set(model.feature_columns) == set(report.val_feature_loss)
    # the deterministic features are reconstructed almost perfectly on validation rows
    assert report.val_feature_loss["os"] < 0.05
    assert report.val_feature_loss["result"] < 0.05


def test_loss_falls_with_morpheus_sgd_defaults():
    """SGD lr 0.001 with decay, swap noise 0.2: the Morpheus recipe still learns."""
    df = make_frame(600, seed=3)
    params = AutoencoderParams(encoder_layers=[64, 48], decoder_layers=[64], epochs=15, batch_size=32,
                               optimizer="sgd", min_batches_per_epoch=1)
    report = DFPAutoencoder(CATS, NUMS, BINS, params).fit(df)
    # slow (that is the recipe) but steady: every epoch improves on the previous one
    assert all(b < a for a, b in zip(report.val_loss, report.val_loss[1:], strict=False))
    assert report.train_loss[-1] < 0.97 * report.train_loss[0]


def test_injected_anomalies_score_higher(trained):
    model, _, df = trained
    normal = make_frame(300, seed=11)
    anomalies = normal.iloc[:50].copy()
    anomalies["browser"] = "chrome"
    anomalies["os"] = "plan9"  # unseen category
    anomalies["device"] = "attacker-box"  # unseen category
    anomalies["logcount"] = 500.0  # far outside training range
    anomalies["result"] = False
    normal_scores = model.score(normal)
    anomaly_scores = model.score(anomalies)
    assert anomaly_scores["mean_abs_z"].min() > normal_scores["mean_abs_z"].quantile(0.99)
    assert anomaly_scores["max_abs_z"].median() > 10 * normal_scores["max_abs_z"].median()
    assert (anomaly_scores["os_z_loss"] > normal_scores["os_z_loss"].max()).all()


# ---------------------------------------------------------------------------- results


def test_result_columns_index_and_formulas(trained):
    model, _, _ = trained
    df = make_frame(40, seed=5)
    df.index = pd.Index([f"event-{i}" for i in range(len(df))], name="txid")
    result = model.score(df)
    expected = [f"{f}_{kind}" for f in model.feature_columns for kind in ("loss", "z_loss", "pred")]
    calibrated = ["alert_threshold", "anomaly_score", "threshold_source"]
    assert list(result.columns) == expected + ["max_abs_z", "mean_abs_z"] + calibrated
    assert model.feature_columns == NUMS + BINS + CATS
    assert result.index.equals(df.index)
    # z divides by the robust scale: Morpheus's std, never below loss_std_floor
    for f in model.feature_columns:
        stats = model.loss_stats[f]
        assert stats["scale"] == pytest.approx(max(stats["std"], model.params.loss_std_floor))
    z = np.column_stack(
        [
            np.abs((result[f"{f}_loss"] - model.loss_stats[f]["mean"]) / model.loss_stats[f]["scale"])
            for f in model.feature_columns
        ]
    )
    np.testing.assert_allclose(result[[f"{f}_z_loss" for f in model.feature_columns]].to_numpy(), z)
    np.testing.assert_allclose(result["max_abs_z"], z.max(axis=1))
    np.testing.assert_allclose(result["mean_abs_z"], z.mean(axis=1))
    threshold = model.threshold()
    assert (result["alert_threshold"] == threshold.value).all() and (result["threshold_source"] == threshold.source).all()
    np.testing.assert_allclose(result["anomaly_score"], result["mean_abs_z"] / threshold.value)
    # predictions: original units, bools, known categories
    assert result["result_pred"].dtype == bool
    assert set(result["os_pred"]) <= {"windows", "linux", "macos"}
    assert (result["os_pred"] == df["os"]).mean() > 0.95
    assert np.abs(result["logcount_pred"] - df["logcount"]).median() < 5.0


def test_loss_statistics_are_streamed_training_row_statistics():
    """Loss stats == mean/std (ddof 0) of the unswapped per-row losses of the training rows."""
    df = make_frame(500, seed=2)
    params = AutoencoderParams(**{**SMALL, "eval_batch_size": 37}, epochs=2, validation_fraction=0.2)
    model = DFPAutoencoder(CATS, NUMS, BINS, params)
    report = model.fit(df)
    train_rows = df.iloc[: report.train_rows]
    scored = model.score(train_rows)
    for f in model.feature_columns:
        losses = scored[f"{f}_loss"].to_numpy()
        assert model.loss_stats[f]["mean"] == pytest.approx(losses.mean(), rel=1e-5, abs=1e-9)
        expected_std = losses.std() if losses.std() > 0 else 1.0
        assert model.loss_stats[f]["std"] == pytest.approx(expected_std, rel=1e-4, abs=1e-9)
        assert report.train_feature_loss[f] == pytest.approx(losses.mean(), rel=1e-5, abs=1e-9)
    val_scored = model.score(df.iloc[report.train_rows :])
    for f in model.feature_columns:
        assert report.val_feature_loss[f] == pytest.approx(val_scored[f"{f}_loss"].mean(), rel=1e-5, abs=1e-9)


# ---------------------------------------------------------------------------- unseen / missing values


def test_unseen_and_missing_values(trained):
    model, _, df = trained
    rows = df.iloc[:4].copy()
    rows["os"] = ["never-seen", None, np.nan, "windows"]
    rows["logcount"] = [np.nan, np.inf, 3.0, 3.0]
    rows["result"] = [np.nan, "true", 0, 1]
    rows = rows.astype({"result": object})
    before = rows.copy()
    result = model.score(rows)
    pd.testing.assert_frame_equal(rows, before)  # the caller's frame is not modified
    text = [c for c in result.columns if c.endswith("_pred") or c == "threshold_source"]  # labels, not numbers
    assert np.isfinite(result.drop(columns=text).astype(float)).all().all()
    assert set(result["os_pred"]) <= {"windows", "linux", "macos"}  # "other" is never predicted
    # NaN/inf numerics are replaced by the training mean before scaling
    mean_row = rows.iloc[[0]].copy()
    mean_row["logcount"] = model.encoder.numeric_mean["logcount"]
    assert model.score(mean_row)["logcount_loss"].iloc[0] == pytest.approx(
        result["logcount_loss"].iloc[0], rel=1e-5
    )
    # unseen and missing categories (missing becomes "nan", unseen in training) cost more than a seen one
    seen_loss = model.score(df.iloc[:1])["os_loss"].iloc[0]
    assert result["os_loss"].iloc[0] > seen_loss
    assert result["os_loss"].iloc[1] > seen_loss


def test_encoder_conventions():
    df = pd.DataFrame(
        {
            "c": ["a", "a", "a", "b", "b", None, "rare"],
            "n": [1.0, 2.0, 3.0, np.nan, 5.0, 6.0, 7.0],
            "flag": [True, None, False, True, False, True, None],
        }
    )
    enc = FeatureEncoder.fit(df, ["c"], ["n"], ["flag"], min_category_count=2)
    assert enc.vocabularies["c"] == ["a", "b"]  # most frequent first; "nan" and "rare" seen once
    assert enc.cardinalities == [3]
    finite = np.array([1.0, 2.0, 3.0, 5.0, 6.0, 7.0])
    assert enc.numeric_mean["n"] == pytest.approx(finite.mean())
    assert enc.numeric_std["n"] == pytest.approx(finite.std())  # ddof 0
    frame = enc.transform(df)
    assert frame.codes[:, 0].tolist() == [0, 0, 0, 1, 1, 2, 2]  # None and rare -> other (2)
    assert frame.dense[3, 0].item() == pytest.approx(0.0)  # NaN -> mean -> 0 after scaling
    assert frame.dense[:, 1].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]  # None -> False
    capped = FeatureEncoder.fit(df, ["c"], [], [], max_categories=1)
    assert capped.vocabularies["c"] == ["a"]
    mixed = pd.Series(["TRUE", "no", "1", "yes", None, "f"], dtype=object)
    assert binary_values(mixed).tolist() == [True, False, True, True, False, False]
    assert binary_values(pd.Series([0, 2, np.nan])).tolist() == [False, True, False]
    const = FeatureEncoder.fit(pd.DataFrame({"n": [4.0, 4.0]}), [], ["n"], [])
    assert const.numeric_std["n"] == 1.0  # std 0 -> 1
    with pytest.raises(ValueError, match="'n'.*non-numeric"):
        FeatureEncoder.fit(pd.DataFrame({"n": ["x", "y"]}), [], ["n"], [])
    with pytest.raises(ValueError, match=r"lacks feature columns \['c'\]"):
        enc.transform(pd.DataFrame({"n": [1.0], "flag": [True]}))


# ---------------------------------------------------------------------------- save / load


def test_save_load_round_trip(trained, tmp_path):
    model, report, df = trained
    target = tmp_path / "models" / "alice"
    model.save(target)
    assert sorted(p.name for p in target.iterdir()) == ["model.json", "model.safetensors"]
    metadata = json.loads((target / "model.json").read_text())
    assert metadata["encoder"]["vocabularies"]["browser"][0] == "chrome"
    assert metadata["params"]["learning_rate"] == 0.01
    assert set(metadata["loss_stats"]) == set(model.feature_columns)
    weights = load_file(str(target / "model.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in model.network.state_dict().items())

    assert metadata["format_version"] == 2 and metadata["calibration"]["holdout_rows"] == report.val_rows

    loaded = DFPAutoencoder.load(target, device="cpu")
    assert loaded.feature_columns == model.feature_columns
    assert loaded.loss_stats == model.loss_stats
    assert loaded.calibration == model.calibration
    assert loaded.n_train_rows == model.n_train_rows == report.train_rows
    assert loaded.training_report == report
    assert loaded.params.model_dump(exclude={"device"}) == model.params.model_dump(exclude={"device"})
    probe = pd.concat([df.iloc[:100], make_frame(20, seed=9).assign(os="unseen-os")], ignore_index=True)
    pd.testing.assert_frame_equal(loaded.score(probe), model.score(probe), check_exact=True)


def test_a_model_saved_before_calibration_loads_and_scores_like_morpheus(trained, tmp_path):
    """Format 1 (no scale, no calibration): z divides by the plain std; no threshold columns,
    so the detection rule falls back to its fixed threshold for that model."""
    model, _, df = trained
    model.save(tmp_path / "v1")
    meta = json.loads((tmp_path / "v1" / "model.json").read_text())
    meta["format_version"] = 1
    for key in ("calibration", "numeric_scale", "category_min_count"):
        meta.pop(key)
    for stats in meta["loss_stats"].values():
        stats.pop("scale")
    (tmp_path / "v1" / "model.json").write_text(json.dumps(meta))
    old = DFPAutoencoder.load(tmp_path / "v1", device="cpu")
    assert old.calibration is None and old.threshold() is None
    scored = old.score(df.head(5))
    assert "alert_threshold" not in scored.columns
    f = model.feature_columns[0]
    stats = model.loss_stats[f]
    np.testing.assert_allclose(scored[f"{f}_z_loss"], np.abs((scored[f"{f}_loss"] - stats["mean"]) / stats["std"]))


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        DFPAutoencoder.load(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"format": "something-else"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a dfp_ray.autoencoder model"):
        DFPAutoencoder.load(tmp_path)
    with pytest.raises(RuntimeError, match="not fitted"):
        DFPAutoencoder(CATS, NUMS, BINS).score(make_frame(3))
    with pytest.raises(RuntimeError, match="not been fitted"):
        DFPAutoencoder(CATS, NUMS, BINS).save(tmp_path / "x")


# ---------------------------------------------------------------------------- determinism, early stopping


def test_fit_is_deterministic_on_cpu_with_a_seed():
    df = make_frame(300, seed=4)
    params = AutoencoderParams(**SMALL, epochs=3, seed=123, device="cpu")
    a, b = DFPAutoencoder(CATS, NUMS, BINS, params), DFPAutoencoder(CATS, NUMS, BINS, params)
    ra, rb = a.fit(df), b.fit(df)
    assert ra.train_loss == rb.train_loss and ra.val_loss == rb.val_loss
    sa, sb = a.network.state_dict(), b.network.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    other = DFPAutoencoder(CATS, NUMS, BINS, params.model_copy(update={"seed": 124}))
    assert other.fit(df).train_loss != ra.train_loss
    # the global torch RNG is left as it was
    state = torch.random.get_rng_state()
    a.fit(df)
    assert torch.equal(state, torch.random.get_rng_state())


def test_early_stopping_and_best_weights():
    """Validation rows come from another distribution: validation loss rises every epoch."""
    train = pd.DataFrame({"c": ["a"] * 90 + ["b"] * 10, "n": np.zeros(100)})
    val = pd.DataFrame({"c": ["b"] * 50, "n": np.ones(50)})
    df = pd.concat([train, val], ignore_index=True)
    params = AutoencoderParams(
        encoder_layers=[8],
        decoder_layers=[],
        optimizer="adam",
        learning_rate=0.05,
        batch_size=16,
        epochs=30,
        validation_fraction=1 / 3,
        early_stopping_patience=2,
        swap_probability=0.0,
    )
    model = DFPAutoencoder(["c"], ["n"], [], params)
    report = model.fit(df)
    assert report.val_rows == 50
    assert report.stopped_early and report.epochs_run < 30
    rises = [b > a for a, b in zip(report.val_loss, report.val_loss[1:], strict=False)]
    assert rises[-2:] == [True, True]
    assert report.best_val_loss == min(report.val_loss)
    assert report.restored_best and report.best_epoch < report.epochs_run
    final_val = model.score(val)[["c_loss", "n_loss"]].mean().mean()
    assert final_val == pytest.approx(report.best_val_loss, rel=1e-5)

    no_patience = DFPAutoencoder(
        ["c"], ["n"], [], params.model_copy(update={"early_stopping_patience": 0, "epochs": 4})
    )
    assert no_patience.fit(df).epochs_run == 4


def test_validation_with_dropout_runs_in_eval_mode():
    """With dropout, validation and loss statistics must see the network without it: the
    reported validation loss of the final weights equals what scoring those rows gives."""
    df = make_frame(120)
    params = AutoencoderParams(**SMALL, epochs=3, dropout=0.5, restore_best_weights=False)
    model = DFPAutoencoder(CATS, NUMS, BINS, params)
    report = model.fit(df)
    assert not model.network.training
    val = df.iloc[report.train_rows :]
    scored = model.score(val)
    per_feature = [scored[f"{f}_loss"].mean() for f in model.feature_columns]
    assert float(np.mean(per_feature)) == pytest.approx(report.val_loss[-1], rel=1e-5)
    again = model.score(val)
    assert np.allclose(again["mean_abs_z"], scored["mean_abs_z"])


def test_fit_takes_a_wider_thread_count_from_the_next_epoch_and_restores_it():
    """The owner's thread hook is asked before every epoch (and the loss statistics); a wider
    count applies from then on, and the caller's count is back when fit returns."""
    seen: list[int] = []

    def threads() -> int:
        seen.append(torch.get_num_threads())
        return 1 if len(seen) == 1 else 2

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = DFPAutoencoder(CATS, NUMS, BINS, AutoencoderParams(**SMALL, epochs=4))
        report = model.fit(make_frame(80), threads=threads)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert report.epochs_run == 4
    assert seen == [1, 1, 2, 2, 2]  # 4 epochs + loss statistics; the first epoch ran on one thread


def test_no_validation_and_tiny_frames():
    df = make_frame(2)
    params = AutoencoderParams(**SMALL, epochs=1)
    report = DFPAutoencoder(CATS, NUMS, BINS, params).fit(df)
    assert (report.train_rows, report.val_rows) == (1, 1)
    report = DFPAutoencoder(CATS, NUMS, BINS, params.model_copy(update={"validation_fraction": 0.0})).fit(df)
    assert report.val_loss == [] and report.best_val_loss is None and report.val_rows == 0
    with pytest.raises(ValueError, match="at least 2 rows"):
        DFPAutoencoder(CATS, NUMS, BINS, params).fit(make_frame(1))
    with pytest.raises(ValueError, match=r"lacks feature columns \['os'\]"):
        DFPAutoencoder(CATS, NUMS, BINS, params).fit(make_frame(10).drop(columns=["os"]))


# ---------------------------------------------------------------------------- configuration


def test_morpheus_defaults_and_layer_sizes():
    p = AutoencoderParams()
    assert (p.encoder_layers, p.decoder_layers, p.activation, p.dropout) == ([512, 500], [512], "relu", None)
    # ours: the widths are Morpheus's from 4096 training rows, down to a quarter for small users
    assert (p.width_rule, p.width_full_rows, p.min_width_fraction) == ("rows", 4096, 0.25)
    assert (p.swap_probability, p.learning_rate, p.lr_decay, p.batch_size, p.epochs) == (
        0.2,
        0.001,
        0.99,
        512,
        30,
    )
    assert (p.validation_fraction, p.early_stopping_patience, p.min_category_count) == (0.1, 5, 1)
    # ours, measured in docs/scoring.md; optimizer="sgd", min_batches_per_epoch=1, loss_std_floor=0,
    # clip_inputs=False, other_input="echo" is Morpheus
    assert (p.optimizer, p.min_batches_per_epoch, p.loss_std_floor, p.clip_inputs) == ("adam", 8, 0.1, True)
    assert p.other_input == "most_frequent"
    assert (p.device, p.seed, p.max_embedding_dim) == ("auto", 42, 600)
    assert [embedding_dim(n) for n in (2, 5, 301, 1000, 10**6)] == [
        round(1.6 * 2**0.56),
        round(1.6 * 5**0.56),
        39,
        77,
        600,
    ]
    model = DFPAutoencoder(CATS, NUMS, BINS, AutoencoderParams(epochs=1, device="cpu", width_rule="fixed"))
    model.fit(make_frame(64))
    linear = [m for m in model.network.modules() if isinstance(m, torch.nn.Linear)]
    embeds = sum(model.embedding_dims)
    assert [(m.in_features, m.out_features) for m in linear] == [
        (len(NUMS) + len(BINS) + embeds, 512),
        (512, 500),
        (500, 512),
        (512, 2 + 1 + 5 + 4 + 4),
    ]
    assert model.embedding_dims == [embedding_dim(5), embedding_dim(4), embedding_dim(4)]


def test_config_validation_errors_name_the_field():
    cases = {
        "batch_size": {"batch_size": 0},
        "swap_probability": {"swap_probability": 1.5},
        "device": {"device": "gpu"},
        "encoder_layers": {"encoder_layers": [64, 0]},
        "activation": {"activation": "swish"},
        "learning_rat": {"learning_rat": 0.1},  # unknown keys are errors
    }
    for field, kwargs in cases.items():
        with pytest.raises(ValidationError) as info:
            AutoencoderParams(**kwargs)
        assert field in str(info.value), (field, str(info.value))
    assert AutoencoderParams(device="cuda:1").device == "cuda:1"
    with pytest.raises(ValueError, match="'os' is listed twice"):
        DFPAutoencoder(["os"], ["os"], [])
    with pytest.raises(ValueError, match="no feature columns"):
        DFPAutoencoder([], [], [])
    with pytest.raises(ValueError, match="list of non-empty column names"):
        DFPAutoencoder("os", [], [])
    every_field_documented = all(f.description for f in AutoencoderParams.model_fields.values())
    assert every_field_documented


def test_cuda_requested_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    model = DFPAutoencoder(CATS, NUMS, BINS, AutoencoderParams(**SMALL, epochs=1, device="cuda"))
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        model.fit(make_frame(10))


@pytest.mark.gpu
def test_cuda_fit_score_and_load_on_cpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    df = make_frame(400)
    model = DFPAutoencoder(CATS, NUMS, BINS, AutoencoderParams(**SMALL, epochs=3, device="auto"))
    report = model.fit(df)
    assert report.device.startswith("cuda")
    gpu_scores = model.score(df)
    model.save(tmp_path)
    cpu_scores = DFPAutoencoder.load(tmp_path, device="cpu").score(df)
    losses = [c for c in gpu_scores.columns if c.endswith("_loss")]
    np.testing.assert_allclose(cpu_scores[losses], gpu_scores[losses], rtol=1e-3, atol=1e-4)


def test_bf16_precision_runs_and_stays_close(trained):
    model, _, df = trained
    asked = model.params.precision
    try:
        model.params = model.params.model_copy(update={"precision": "fp32"})
        fp32 = model.score(df)
        model.params = model.params.model_copy(update={"precision": "bf16"})
        bf16 = model.score(df)
    finally:
        model.params = model.params.model_copy(update={"precision": asked})
    assert math.isclose(bf16["mean_abs_z"].mean(), fp32["mean_abs_z"].mean(), rel_tol=0.1)
    assert (bf16["os_pred"] == fp32["os_pred"]).mean() > 0.99


def test_precision_auto_is_bf16_only_for_large_batches_where_the_cpu_multiplies_it_natively(trained, tmp_path):
    from dfp_ray.autoencoder import kernels
    from dfp_ray.autoencoder.trainer import MIN_BF16_BATCH

    native = "bf16" if kernels.cpu_has_native_bf16() else "fp32"
    _, report, _ = trained
    assert AutoencoderParams().precision == "auto"
    assert MIN_BF16_BATCH == 64
    assert report.precision == native  # 64-row batches: bf16 pays from there
    small = DFPAutoencoder(CATS, NUMS, BINS, AutoencoderParams(**SMALL, epochs=1))
    # 200 rows, 180 trained: 23-row batches, where autocast's per-step weight casts cost more
    assert small.fit(make_frame(200)).precision == "fp32"
    big = DFPAutoencoder(CATS, NUMS, BINS, AutoencoderParams(**{**SMALL, "batch_size": 512}, epochs=1))
    df = make_frame(4700)
    assert big.fit(df).precision == big.params.precision == native
    assert big.requested_params.precision == "auto"
    big.save(tmp_path)
    loaded = DFPAutoencoder.load(tmp_path, device="cpu")
    assert loaded.params.precision == native
    np.testing.assert_allclose(loaded.score(df)["mean_abs_z"], big.score(df)["mean_abs_z"], rtol=1e-5)


def test_max_rows_per_epoch_samples_large_frames_and_leaves_small_ones_alone():
    df = make_frame(600)
    def fit(cap):
        model = DFPAutoencoder(CATS, NUMS, BINS, AutoencoderParams(**SMALL, epochs=4, max_rows_per_epoch=cap))
        return model, model.fit(df)

    (full, full_report), (same, same_report) = fit(None), fit(10_000)
    assert full_report.epoch_rows == same_report.epoch_rows == full_report.train_rows == 540
    for a, b in zip(full.network.parameters(), same.network.parameters(), strict=True):
        assert torch.equal(a, b)  # a cap above the frame changes nothing
    capped, report = fit(128)
    assert report.epoch_rows == 128 and report.train_rows == 540 and report.epochs_run == 4
    assert not all(torch.equal(a, b) for a, b in zip(full.network.parameters(), capped.network.parameters(),
                                                     strict=True))
    scores = capped.score(df)  # statistics still come from every training row
    assert scores["mean_abs_z"].notna().all() and len(scores) == 600


def test_column_without_known_categories_predicts_other():
    params = AutoencoderParams(**SMALL, epochs=1, min_category_count=1000)
    model = DFPAutoencoder(["os"], ["logcount"], [], params)
    model.fit(make_frame(50))
    assert model.encoder.vocabularies["os"] == []
    assert set(model.score(make_frame(5))["os_pred"]) == {OTHER_LABEL}


def test_onednn_linear_layers_match_torch_default():
    """The oneDNN fp32 path (forward and all gradients) agrees with F.linear up to fp32 rounding."""
    from dfp_ray.autoencoder import kernels
    from dfp_ray.autoencoder.model import DFPNetwork

    if not kernels.onednn_available():
        pytest.skip("this torch build has no oneDNN linear operator")
    torch.manual_seed(0)
    net = DFPNetwork(2, 1, [5, 4], [3, 2], [32, 16], [24], "relu")
    codes = torch.stack([torch.randint(0, 5, (50,)), torch.randint(0, 4, (50,))], dim=1)
    dense = torch.randn(50, 3)
    results = []
    for onednn in (False, True):
        net.use_onednn = onednn
        net.zero_grad()
        losses = net.feature_losses(net(codes, dense), codes, dense)
        losses.mean(dim=0).sum().backward()
        results.append((losses.detach(), {k: p.grad.clone() for k, p in net.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)
    df = make_frame(200)
    fitted = {
        choice: DFPAutoencoder(CATS, NUMS, BINS, AutoencoderParams(**SMALL, epochs=2, cpu_matmul=choice)).fit(
            df
        )
        for choice in ("aten", "onednn")
    }
    assert fitted["aten"].train_loss == pytest.approx(fitted["onednn"].train_loss, rel=1e-4)


def test_seeded_fits_in_concurrent_threads_give_the_sequential_models():
    """User actors may run several fits at once (ray.actor_concurrency > 1): each seeded fit
    must still draw its own initial weights, not interleave draws with the other threads."""
    from concurrent.futures import ThreadPoolExecutor

    frames = [make_frame(300, seed=s) for s in range(8)]
    params = AutoencoderParams(**SMALL, epochs=2, seed=11)

    def fit(df: pd.DataFrame) -> DFPAutoencoder:
        model = DFPAutoencoder(CATS, NUMS, BINS, params)
        model.fit(df)
        return model

    sequential = [fit(df) for df in frames]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(fit, frames))
    for a, b, df in zip(sequential, concurrent, frames, strict=True):
        for name, tensor in a.network.state_dict().items():
            torch.testing.assert_close(tensor, b.network.state_dict()[name], rtol=0, atol=0, msg=name)
        pd.testing.assert_frame_equal(a.score(df), b.score(df))
