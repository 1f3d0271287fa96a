"""``clip_inputs``: the network sees each numeric input clamped to its training range.

Why it matters (measured in docs/autoencoder.md, 'Inputs'): a network can copy a value it never
saw straight through to its output, so a 3 a.m. login of a 9-to-5 user reconstructs well and
scores as ordinary. With the clamp the input can say no more than "as late as ever seen", the
prediction stays among the user's habits and the loss measures how far the real value is.
"""

from __future__ import annotations

import tempfile

import numpy as np
import pandas as pd
import pytest

from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder
from dfp_ray.autoencoder.dfp_autoencoder import fit_many
from dfp_ray.autoencoder.encoding import FeatureEncoder

CATS, NUMS, BINS = ["app"], ["hour", "count"], ["ok"]


def office_hours(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """A user who works 9 to 17 and uses two applications."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "app": rng.choice(["mail", "crm"], n, p=[0.7, 0.3]),
        "hour": rng.uniform(9.0, 17.0, n),
        "count": rng.poisson(4, n).astype(float),
        "ok": rng.random(n) < 0.95,
    })


def params(**kw) -> AutoencoderParams:
    base = dict(encoder_layers=[32, 16], decoder_layers=[32], device="cpu", seed=5, precision="fp32",
                validation_fraction=0.0, epochs=40, calibration_rows=0)
    return AutoencoderParams(**{**base, **kw})


def test_the_encoder_keeps_each_numeric_columns_training_range():
    train = office_hours()
    encoder = FeatureEncoder.fit(train, CATS, NUMS, BINS)
    assert encoder.numeric_min["hour"] == pytest.approx(train["hour"].min())
    assert encoder.numeric_max["count"] == train["count"].max()
    bounds = encoder.input_bounds()
    assert bounds is not None and bounds.shape == (2, 3)
    low = (train["hour"].min() - encoder.numeric_mean["hour"]) / encoder.numeric_std["hour"]
    assert float(bounds[0, 0]) == pytest.approx(low, rel=1e-5)
    assert np.isinf(bounds[:, 2].numpy()).all()  # binary columns are not clamped
    again = FeatureEncoder.from_dict(encoder.to_dict())
    assert again.numeric_max == encoder.numeric_max
    # a model saved before the range existed loads without a clamp
    old = {k: v for k, v in encoder.to_dict().items() if k not in ("numeric_min", "numeric_max")}
    assert FeatureEncoder.from_dict(old).input_bounds() is None


def test_a_value_beyond_the_training_range_is_not_copied_through():
    train = office_hours()
    night = train.iloc[:20].assign(hour=3.0)
    usual = train.iloc[:20]
    clipped = DFPAutoencoder(CATS, NUMS, BINS, params())
    clipped.fit(train)
    raw = DFPAutoencoder(CATS, NUMS, BINS, params(clip_inputs=False))
    raw.fit(train)
    # training rows lie inside their own range: the two fits are the same model
    pd.testing.assert_frame_equal(clipped.score(usual), raw.score(usual))
    with_clip, without = clipped.score(night), raw.score(night)
    # with the clamp the predicted hour stays within the user's hours; the loss grows with the distance
    assert (with_clip["hour_pred"] > 7.0).all()
    assert (with_clip["hour_loss"] > without["hour_loss"]).all()
    assert with_clip["hour_z_loss"].median() > 1.5 * without["hour_z_loss"].median()


def test_the_clamp_is_saved_with_the_model():
    train = office_hours()
    model = DFPAutoencoder(CATS, NUMS, BINS, params())
    model.fit(train)
    night = train.iloc[:10].assign(hour=2.0, count=40.0)
    with tempfile.TemporaryDirectory() as folder:
        model.save(folder)
        loaded = DFPAutoencoder.load(folder, device="cpu")
    pd.testing.assert_frame_equal(loaded.score(night), model.score(night))


def test_grouped_fits_clamp_their_validation_rows_as_single_fits_do():
    # the newest (validation) rows of each user lie beyond its training range: early stopping and the
    # restored epoch depend on the clamp, in a group as alone
    users = []
    for seed in range(3):
        frame = office_hours(120 + 40 * seed, seed)
        frame.loc[frame.index[-12:], "hour"] = 22.0 + seed  # late evenings in the held-out tail
        users.append(frame)
    p = params(validation_fraction=0.1, epochs=30, early_stopping_patience=2, learning_rate=0.01)
    alone = [DFPAutoencoder(CATS, NUMS, BINS, p) for _ in users]
    reports = [m.fit(f) for m, f in zip(alone, users, strict=True)]
    grouped = [DFPAutoencoder(CATS, NUMS, BINS, p) for _ in users]
    grouped_reports = fit_many(grouped, users, group_size=4)
    for a, g, ra, rg, frame in zip(alone, grouped, reports, grouped_reports, users, strict=True):
        assert (rg.epochs_run, rg.best_epoch) == (ra.epochs_run, ra.best_epoch)
        assert rg.best_val_loss == pytest.approx(ra.best_val_loss, rel=1e-4)
        np.testing.assert_allclose(g.score(frame)["mean_abs_z"], a.score(frame)["mean_abs_z"], rtol=1e-4)
