"""Warm start (params.warm_start, fit(init_from=...)): a new version starts from the previous one.

Values, not calls: the warm-started network before training computes the previous model's
function of the raw values (numeric scalers refitted, categories mapped by value), new
categories keep their fresh rows, incompatible models fall back to exactly the cold fit, and a
grouped fit gives every user the same warm-started model as a fit of its own.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import pytest
import torch

from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder
from dfp_ray.autoencoder.dfp_autoencoder import fit_many
from dfp_ray.pipeline.training import _warm_from

CATS, NUMS, BINS = ["app", "city"], ["count", "gap"], ["ok"]
PARAMS = AutoencoderParams(encoder_layers=[32, 16], decoder_layers=[32], device="cpu", seed=3, precision="fp32",
                           warm_start="previous", warm_start_epochs=6, width_rule="fixed")  # widths as given


def frame(n: int, apps: list[str], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "app": rng.choice(apps, n),
        "city": rng.choice(["paris", "lyon", "oslo"], n, p=[0.7, 0.2, 0.1]),
        "count": rng.poisson(3, n).astype(float), "gap": rng.exponential(2.0, n),
        "ok": rng.random(n) < 0.9,
    })


APPS = ["mail", "vpn", "wiki", "crm"]


def fitted(df: pd.DataFrame, params: AutoencoderParams = PARAMS) -> DFPAutoencoder:
    model = DFPAutoencoder(CATS, NUMS, BINS, params)
    model.fit(df)
    return model


def initial(df: pd.DataFrame, init_from: DFPAutoencoder | None, params: AutoencoderParams = PARAMS):
    """The (model, fit state) of a fit of ``df`` just before its training loop."""
    model = DFPAutoencoder(CATS, NUMS, BINS, params)
    with contextlib.ExitStack() as rng:
        state = model._begin_fit(df, rng, init_from)
    return model, state


def raw_outputs(model: DFPAutoencoder, network, encoder, rows: pd.DataFrame):
    """Numeric predictions in raw units, binary logits, categorical logits."""
    encoded = encoder.transform(rows)
    with torch.no_grad():
        numeric, binary, logits = network.eval()(encoded.codes, encoded.dense)
    return encoder.inverse_numeric(numeric.numpy()), binary.numpy(), logits.numpy()


def test_a_warm_start_begins_with_the_previous_models_function():
    full = frame(400, APPS)
    old = fitted(full.iloc[:300])
    model, state = initial(full, old)
    assert state.warm_started and state.warm_start_reason is None
    # the scalers were refitted on the new rows, so the weights had to be re-expressed
    assert state.encoder.numeric_mean != old.encoder.numeric_mean
    # same values, in another order (most frequent first): rows are mapped by value
    assert {c: sorted(v) for c, v in state.encoder.vocabularies.items()} == {
        c: sorted(v) for c, v in old.encoder.vocabularies.items()}
    rows = full.iloc[300:]
    new = raw_outputs(model, state.network, state.encoder, rows)
    before = raw_outputs(old, old.network, old.encoder, rows)
    np.testing.assert_allclose(new[0], before[0], rtol=1e-4, atol=1e-4)  # numeric, raw units
    np.testing.assert_allclose(new[1], before[1], rtol=1e-4, atol=1e-4)  # binary logits
    # categorical logits, column by column and class by class (by label)
    at_new = at_old = 0
    for column in CATS:
        labels_new = list(state.encoder.category_labels(column))
        labels_old = list(old.encoder.category_labels(column))
        order = [at_old + labels_old.index(v) for v in labels_new]
        np.testing.assert_allclose(new[2][:, at_new:at_new + len(labels_new)], before[2][:, order],
                                   rtol=1e-4, atol=1e-4)
        at_new, at_old = at_new + len(labels_new), at_old + len(labels_old)


def test_a_warm_fit_runs_few_epochs_and_matches_a_cold_fit():
    full = frame(400, APPS)
    old = fitted(full.iloc[:300])
    cold = DFPAutoencoder(CATS, NUMS, BINS, PARAMS.model_copy(update={"warm_start": "off"}))
    cold_report = cold.fit(full)
    warm = DFPAutoencoder(CATS, NUMS, BINS, PARAMS)
    report = warm.fit(full, init_from=old)
    assert report.warm_started and not cold_report.warm_started
    assert report.epochs_run <= PARAMS.warm_start_epochs < cold_report.epochs_run
    assert warm.params.epochs == PARAMS.warm_start_epochs  # the epochs it ran under, stored with it
    assert warm.requested_params.epochs == PARAMS.epochs
    assert report.best_val_loss == pytest.approx(cold_report.best_val_loss, rel=0.1)
    assert np.isfinite(warm.score(full.tail(20))["mean_abs_z"]).all()


def test_new_categories_keep_fresh_rows_shared_ones_are_copied():
    old = fitted(frame(300, APPS))
    new_df = frame(300, [*APPS, "payroll"], seed=1)
    model, state = initial(new_df, old)
    _, cold = initial(new_df, None)
    assert state.warm_started
    vocab_old, vocab_new = old.encoder.vocabularies["app"], state.encoder.vocabularies["app"]
    assert "payroll" in vocab_new and "payroll" not in vocab_old
    emb_old, emb_new, emb_cold = (n.embeddings[0].weight.detach() for n in (old.network, state.network, cold.network))
    d = min(emb_old.shape[1], emb_new.shape[1])
    head_old, head_new, head_cold = (n.head.weight.detach() for n in (old.network, state.network, cold.network))
    offset = len(NUMS) + len(BINS)  # the app column's output rows come first
    for i, value in enumerate(vocab_new):
        if value in vocab_old:
            j = vocab_old.index(value)
            assert torch.equal(emb_new[i, :d], emb_old[j, :d])
            assert torch.equal(head_new[offset + i], head_old[offset + j])
        else:
            assert torch.equal(emb_new[i], emb_cold[i])  # its fresh, seeded initial row
            assert torch.equal(head_new[offset + i], head_cold[offset + i])
            assert not any(torch.equal(emb_new[i, :d], row[:d]) for row in emb_old)
    report = model.fit(new_df, init_from=old)
    assert report.warm_started
    scores = model.score(new_df[new_df["app"] == "payroll"].head(5))
    assert np.isfinite(scores["mean_abs_z"]).all()


def test_a_width_change_falls_back_to_exactly_the_cold_fit():
    df = frame(300, APPS)
    old = fitted(df.iloc[:250])
    wider = PARAMS.model_copy(update={"encoder_layers": [64, 16]})
    warm = DFPAutoencoder(CATS, NUMS, BINS, wider)
    report = warm.fit(df, init_from=old)
    assert not report.warm_started
    assert "hidden widths differ" in report.warm_start_reason
    assert warm.params.epochs == PARAMS.epochs
    cold = DFPAutoencoder(CATS, NUMS, BINS, wider)
    cold_report = cold.fit(df)
    assert report.epochs_run == cold_report.epochs_run
    for (name, a), b in zip(warm.network.state_dict().items(), cold.network.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_other_features_fall_back_to_cold():
    df = frame(200, APPS)
    old = DFPAutoencoder(["app"], NUMS, BINS, PARAMS)
    old.fit(df)
    report = DFPAutoencoder(CATS, NUMS, BINS, PARAMS).fit(df, init_from=old)
    assert not report.warm_started and report.warm_start_reason == "the previous model has other features"


def test_grouped_warm_fits_are_each_users_own_warm_fit():
    sizes = [(150, APPS), (90, APPS[:3]), (220, [*APPS, "payroll"]), (60, APPS)]
    olds = [fitted(frame(n - 30, apps[:3], seed=k)) for k, (n, apps) in enumerate(sizes)]
    data = [frame(n, apps, seed=10 + k) for k, (n, apps) in enumerate(sizes)]
    alone = [DFPAutoencoder(CATS, NUMS, BINS, PARAMS) for _ in data]
    alone_reports = [m.fit(f, init_from=o) for m, f, o in zip(alone, data, olds, strict=True)]
    grouped = [DFPAutoencoder(CATS, NUMS, BINS, PARAMS) for _ in data]
    grouped_reports = fit_many(grouped, data, group_size=8, init_from=olds)
    for a, g, ra, rg, df in zip(alone, grouped, alone_reports, grouped_reports, data, strict=True):
        assert ra.warm_started and rg.warm_started
        assert (rg.epochs_run, rg.best_epoch) == (ra.epochs_run, ra.best_epoch)
        assert rg.best_val_loss == pytest.approx(ra.best_val_loss, rel=1e-4)
        np.testing.assert_allclose(g.score(df)["mean_abs_z"], a.score(df)["mean_abs_z"], rtol=1e-3, atol=1e-4)


def test_the_pipeline_warm_starts_only_when_asked():
    old = fitted(frame(100, APPS))
    assert _warm_from(PARAMS, old) is old
    assert _warm_from(AutoencoderParams(), old) is None
    assert AutoencoderParams().warm_start == "off"


def test_the_controller_warm_starts_from_the_registered_version(tmp_path):
    from pipeline_helpers import small_config

    from dfp_ray.controllers.user import UserController
    from dfp_ray.pipeline.file_to_df import load_files
    from dfp_ray.schemas import load_schema, map_fields
    from dfp_ray.tools.datagen import DatagenConfig, generate

    data = tmp_path / "data"
    generate(DatagenConfig(out=str(data), sources=["duo"], users=2, train_days=4, infer_days=1,
                           events_per_user_per_day=8, seed=3))
    schema = load_schema("duo")
    files = sorted(str(p) for p in (data / "duo" / "training").glob("*.json"))
    frame, _ = map_fields(load_files(files).frame, schema)
    cfg = small_config(tmp_path / "run", **{"autoencoder.warm_start": "previous", "autoencoder.epochs": 12,
                                            "autoencoder.warm_start_epochs": 3})
    worker = UserController(cfg, schema, threads=1)
    first = worker.train("someone", frame.iloc[: len(frame) * 3 // 4])
    second = worker.train("someone", frame)
    assert first.trained and second.trained and first.model_version != second.model_version
    assert first.epochs_run > 3 >= second.epochs_run
    tagged = worker.registry.version_with_tag(cfg.source, "someone", "warm_start_from", first.model_version)
    assert tagged is not None and tagged.label == second.model_version
    cold = UserController(small_config(tmp_path / "cold", **{"autoencoder.epochs": 12}), schema, threads=1)
    cold.train("someone", frame.iloc[:10])
    assert cold.train("someone", frame).epochs_run > 3  # warm start off (the default): cold
