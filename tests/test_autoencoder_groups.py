"""Grouped fits (many small users as one stacked network) and the row-based width rule.

A grouped fit must give every user the model a fit of its own gives it: same weights, same
epochs, same early stop, same scores (up to float summation order). These tests fit users of
different sizes and vocabularies both ways and compare.
"""

from __future__ import annotations

import tempfile

import numpy as np
import pandas as pd
import pytest
import torch

from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder
from dfp_ray.autoencoder.dfp_autoencoder import fit_many

CATS, NUMS, BINS = ["app", "city"], ["count", "gap"], ["ok"]


def frames(seed: int = 0) -> list[pd.DataFrame]:
    """Five users: 12 to 301 rows, 2 to 15 distinct apps, their own habits."""
    rng = np.random.default_rng(seed)
    out = []
    for n, apps in [(150, 4), (40, 9), (301, 2), (77, 15), (12, 3)]:
        weights = rng.dirichlet(np.ones(apps))
        out.append(pd.DataFrame({
            "app": rng.choice([f"app{i}" for i in range(apps)], n, p=weights),
            "city": rng.choice(["paris", "lyon", "oslo"], n, p=[0.7, 0.2, 0.1]),
            "count": rng.poisson(3, n).astype(float), "gap": rng.exponential(2.0, n),
            "ok": rng.random(n) < 0.9,
        }))
    return out


def both_ways(params: AutoencoderParams, group_size: int = 8):
    data = frames()
    alone = [DFPAutoencoder(CATS, NUMS, BINS, params) for _ in data]
    alone_reports = [m.fit(f) for m, f in zip(alone, data, strict=False)]
    grouped = [DFPAutoencoder(CATS, NUMS, BINS, params) for _ in data]
    grouped_reports = fit_many(grouped, data, group_size=group_size)
    return data, alone, alone_reports, grouped, grouped_reports


@pytest.mark.parametrize(("optimizer", "group_size"), [
    (dict(optimizer="adam"), 8),
    (dict(optimizer="adam"), 2),  # groups of users near in row count, not in the order given
    (dict(optimizer="sgd", momentum=0.5, weight_decay=0.01, learning_rate=0.01), 8),
    (dict(optimizer="adam", epochs=60, learning_rate=0.01, early_stopping_patience=2), 8),  # users stop apart
])
def test_a_grouped_fit_is_each_users_own_fit(optimizer, group_size):
    # fp32: the claim is equality up to summation order (bf16 rounds each product's inputs)
    params = AutoencoderParams(encoder_layers=[32, 16], decoder_layers=[32], device="cpu", seed=3,
                               precision="fp32", **optimizer)
    data, alone, alone_reports, grouped, grouped_reports = both_ways(params, group_size)
    for a, g, ra, rg, frame in zip(alone, grouped, alone_reports, grouped_reports, data, strict=False):
        assert (rg.epochs_run, rg.best_epoch, rg.stopped_early, rg.restored_best) == (
            ra.epochs_run, ra.best_epoch, ra.stopped_early, ra.restored_best)
        assert rg.best_val_loss == pytest.approx(ra.best_val_loss, rel=1e-4)
        for pa, pg in zip(a.network.parameters(), g.network.parameters(), strict=False):
            assert pa.shape == pg.shape
            torch.testing.assert_close(pg, pa, atol=1e-4, rtol=1e-4)
        sa, sg = a.score(frame), g.score(frame)
        np.testing.assert_allclose(sg["mean_abs_z"], sa["mean_abs_z"], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(sg["anomaly_score"], sa["anomaly_score"], rtol=1e-3, atol=1e-4)
    if optimizer.get("early_stopping_patience"):
        assert len({r.epochs_run for r in grouped_reports}) > 1, "the case is meant to stop users apart"


def test_models_with_dropout_fit_alone_and_still_match():
    params = AutoencoderParams(encoder_layers=[16], decoder_layers=[16], dropout=0.1, epochs=3, device="cpu", seed=5)
    data = frames()[:2]
    alone = [DFPAutoencoder(CATS, NUMS, BINS, params) for _ in data]
    for m, f in zip(alone, data, strict=False):
        m.fit(f)
    grouped = [DFPAutoencoder(CATS, NUMS, BINS, params) for _ in data]
    fit_many(grouped, data)
    for a, g in zip(alone, grouped, strict=False):
        for pa, pg in zip(a.network.parameters(), g.network.parameters(), strict=False):
            torch.testing.assert_close(pg, pa)


def test_width_rule_sizes_models_by_rows_and_the_widths_are_saved():
    params = AutoencoderParams(epochs=1, device="cpu")  # the default: Morpheus's widths from 4096 rows
    small = DFPAutoencoder(CATS, NUMS, BINS, params)
    small.fit(frames()[0])  # 150 rows -> 135 training rows -> 1/32, at least min_width_fraction (1/4)
    widths = [m.out_features for m in small.network.modules() if isinstance(m, torch.nn.Linear)][:-1]
    assert widths == [128, 125, 128]
    assert (small.params.encoder_layers, small.params.decoder_layers) == ([128, 125], [128])
    with tempfile.TemporaryDirectory() as folder:
        small.save(folder)
        again = DFPAutoencoder.load(folder, device="cpu")
    frame = frames()[0]
    np.testing.assert_allclose(again.score(frame)["mean_abs_z"], small.score(frame)["mean_abs_z"], rtol=1e-6)
    # a refit on more rows resolves the rule again from what was asked for
    big = pd.concat([frames(seed)[2] for seed in range(10)], ignore_index=True)  # 3010 rows
    small.fit(big)
    assert small.params.encoder_layers == [256, 250]
    assert AutoencoderParams(width_rule="fixed").widths_for(10) == ([512, 500], [512])  # Morpheus's fixed widths
    assert AutoencoderParams(min_width_fraction=0.125).widths_for(10) == ([64, 62], [64])
    assert AutoencoderParams(width_rule="rows", encoder_layers=[16], decoder_layers=[]).widths_for(10) == ([16], [])
