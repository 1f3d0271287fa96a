"""One frame scored by many models (inference in a user actor) gives exactly what each model
gives on its own rows, and parsing a batch in chunks gives the frame of parsing it whole."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder
from dfp_ray.pipeline.data_prep import prepare_features
from dfp_ray.pipeline.file_to_df import read_and_map
from dfp_ray.pipeline.fsspec_loader import expand_globs
from dfp_ray.pipeline.inference import score_groups
from dfp_ray.schemas import load_schema
from dfp_ray.tools.datagen import DatagenConfig, generate

SMALL = AutoencoderParams(encoder_layers=[32, 16], decoder_layers=[32], epochs=3, seed=5, device="cpu")


@pytest.fixture(scope="module")
def schema():
    return load_schema("duo")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    generate(DatagenConfig(out=str(out), sources=["duo"], users=5, train_days=4, infer_days=2,
                           events_per_user_per_day=8, seed=9), progress=False)
    return out


def _mapped(data, schema, part: str) -> pd.DataFrame:
    refs = expand_globs([str(data / "duo" / part / "*.json")])
    return read_and_map(refs, schema).frame


def test_many_models_score_a_frame_like_each_model_alone(data, schema):
    f = schema.features
    train = prepare_features(_mapped(data, schema, "training"), schema)
    users = sorted(train[schema.user_column].unique())
    models = {}
    for user in users[:3]:  # the other users have no model and are left out
        model = DFPAutoencoder(f.categorical, f.numeric, f.binary, SMALL)
        model.fit(train[train[schema.user_column] == user].reset_index(drop=True))
        models[user] = model
    prepared = prepare_features(_mapped(data, schema, "inference"), schema).reset_index(drop=True)
    user_of_row = prepared[schema.user_column]
    groups = [(m, f"DFP-duo-{u}:1", np.flatnonzero(user_of_row.to_numpy() == u)) for u, m in models.items()]

    out = score_groups(prepared, schema, groups)

    assert len(out) == sum(len(rows) for _, _, rows in groups)
    assert out[schema.time_column].is_monotonic_increasing
    for user, model in models.items():
        mine = out[out[schema.user_column] == user].reset_index(drop=True)
        alone = model.score(prepared[user_of_row == user]).reset_index(drop=True)
        assert (mine["model_version"] == f"DFP-duo-{user}:1").all()
        # thresholds pool the held-out scores of every user model in the call (docs/scoring.md)
        model_columns = [c for c in alone.columns if c not in ("alert_threshold", "anomaly_score", "threshold_source")]
        pd.testing.assert_frame_equal(mine[model_columns], alone[model_columns], check_exact=False, rtol=1e-6)
        assert mine["threshold_source"].isin(["own", "population", "blend"]).all()
        # the input columns travel with their scores
        assert mine["event_id"].tolist() == prepared.loc[user_of_row == user, "event_id"].tolist()
    assert set(out[schema.user_column]) == set(models)


def test_no_groups_give_an_empty_frame(data, schema):
    prepared = prepare_features(_mapped(data, schema, "inference"), schema).reset_index(drop=True)
    assert score_groups(prepared, schema, []).empty


def test_a_batch_parsed_in_chunks_equals_the_batch_parsed_whole(data, schema):
    refs = expand_globs([str(data / "duo" / "training" / "*.json")])
    assert len(refs) > 4
    whole = read_and_map(refs, schema).frame
    cut = len(refs) // 3
    parts = [read_and_map(refs[:cut], schema).frame, read_and_map(refs[cut:], schema).frame]
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), whole)
