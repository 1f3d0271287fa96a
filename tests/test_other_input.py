"""Open vocabularies: a value the model has (nearly) never seen must not be echoed back.

Where training rows carry the "other" class (host names seen once share it, `features.min_count`),
a network fed that class learns to copy it to its output, and a never-seen host then loses
less than a usual one. ``other_input: most_frequent`` (the default) feeds such a value as the
column's most frequent one and keeps "other" as the target. Each test fails if the rule, its
persistence, or its "no change elsewhere" promise is lost.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder

SMALL = dict(encoder_layers=[32, 16], decoder_layers=[32], eval_batch_size=64, seed=3, device="cpu", epochs=30)
HOSTS = [f"srv-{i}" for i in range(6)]


def frame(n: int, seed: int, rare_share: float = 0.08) -> pd.DataFrame:
    """Hosts: six usual ones and a share of hosts seen once; the app follows the host."""
    rng = np.random.default_rng(seed)
    host = rng.choice(HOSTS, size=n, p=[0.3, 0.25, 0.2, 0.1, 0.1, 0.05]).astype(object)
    rare = rng.random(n) < rare_share
    host[rare] = [f"laptop-{seed}-{i}" for i in range(int(rare.sum()))]
    app = np.where(np.isin(host, HOSTS[:3]), "mail", "files").astype(object)
    return pd.DataFrame({"host": host, "app": app, "logcount": rng.integers(1, 6, size=n).astype(float),
                         "result": rng.random(n) > 0.05})


def fit(other_input: str, min_count: dict[str, int] | None = None) -> DFPAutoencoder:
    model = DFPAutoencoder(["host", "app"], ["logcount"], ["result"],
                           AutoencoderParams(**SMALL, other_input=other_input),
                           numeric_scale={"logcount": 1.0}, category_min_count=min_count)
    model.fit(frame(600, seed=1))
    return model


@pytest.fixture(scope="module")
def models() -> tuple[DFPAutoencoder, DFPAutoencoder]:
    return fit("most_frequent", {"host": 2}), fit("echo", {"host": 2})


def never_seen() -> pd.DataFrame:
    rows = frame(60, seed=2, rare_share=0.0)
    rows["host"] = [f"never-seen-{i}" for i in range(len(rows))]
    return rows


def test_a_never_seen_host_is_not_echoed_back_and_scores_unusual(models):
    fill, echo = models
    assert fill.encoder.trained_other == ["host"] == echo.encoder.trained_other
    a, b = fill.score(never_seen()), echo.score(never_seen())
    # fed as itself, the "other" class is partly copied to the output: it loses less
    assert np.median(a["host_loss"]) > 1.4 * np.median(b["host_loss"])
    assert np.median(a["host_z_loss"]) > 1.5 * np.median(b["host_z_loss"])
    # fed as the usual host, "other" costs what a rare host costs in this context: unusual
    assert np.median(a["host_z_loss"]) > 3
    usual = fill.score(frame(200, seed=4, rare_share=0.0))
    assert np.median(a["host_z_loss"]) > 4 * np.median(usual["host_z_loss"])


def test_columns_that_never_trained_on_other_score_the_same_either_way():
    a, b = fit("most_frequent"), fit("echo")  # min count 1: every training host has its class
    assert a.encoder.trained_other == [] and a.network.other_index is None
    probe = pd.concat([frame(40, seed=5), never_seen()], ignore_index=True)
    pd.testing.assert_frame_equal(a.score(probe), b.score(probe))


def test_the_rule_is_saved_with_the_model_and_older_models_keep_echoing(models, tmp_path):
    fill, _ = models
    fill.save(tmp_path / "m")
    again = DFPAutoencoder.load(tmp_path / "m", device="cpu")
    assert again.params.other_input == "most_frequent" and again.encoder.trained_other == ["host"]
    pd.testing.assert_frame_equal(fill.score(never_seen()), again.score(never_seen()))
    # a model saved before trained_other was recorded scores as it always did (no fill)
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["encoder"]["trained_other"]
    meta_path.write_text(json.dumps(meta))
    old = DFPAutoencoder.load(tmp_path / "m", device="cpu")
    assert old.network.other_index is None
    assert np.median(old.score(never_seen())["host_loss"]) < np.median(again.score(never_seen())["host_loss"])


def test_a_grouped_fit_feeds_other_the_same_way_as_a_fit_alone():
    """Small users train in groups (one stacked network): the fill must apply there too."""
    from dfp_ray.autoencoder.dfp_autoencoder import fit_many

    params = AutoencoderParams(**{**SMALL, "precision": "fp32", "epochs": 10})
    data = [frame(n, seed=s) for n, s in [(120, 11), (60, 12), (200, 13)]]

    def make() -> DFPAutoencoder:
        return DFPAutoencoder(["host", "app"], ["logcount"], ["result"], params,
                              numeric_scale={"logcount": 1.0}, category_min_count={"host": 2})

    alone = [make() for _ in data]
    for model, f in zip(alone, data, strict=True):
        model.fit(f)
    grouped = [make() for _ in data]
    fit_many(grouped, data, group_size=8)
    for a, g in zip(alone, grouped, strict=True):
        assert g.encoder.trained_other == ["host"] and g.network.other_index is not None
        sa, sg = a.score(never_seen()), g.score(never_seen())
        np.testing.assert_allclose(sg["host_loss"], sa["host_loss"], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(sg["mean_abs_z"], sa["mean_abs_z"], rtol=1e-3, atol=1e-4)
