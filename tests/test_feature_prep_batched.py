"""Data prep of many frames at once, and vocabularies learnt from decoded columns, give what the
one-frame paths give (a pool actor's grouped fits rely on it: same models, less pandas work)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dfp_ray.autoencoder.encoding import FeatureColumns, FeatureEncoder
from dfp_ray.pipeline.data_prep import prepare_features, prepare_features_many
from dfp_ray.schemas import load_schema


def _duo_rows(user: str, n: int, seed: int) -> pd.DataFrame:
    """Mapped Duo rows over three days, with ties in time, missing values and repeats."""
    rng = np.random.default_rng(seed)
    base = pd.Timestamp("2023-01-02", tz="UTC")
    times = base + pd.to_timedelta(np.sort(rng.integers(0, 3 * 86_400, n)) // 600 * 600, unit="s")
    location = rng.choice(["Oslo, NO", "Lima, PE", None], n).astype(object)
    return pd.DataFrame({
        "timestamp": times[rng.permutation(n)],  # out of order: prep sorts
        "username": user,
        "accessdevicebrowser": rng.choice(["Chrome", "Firefox"], n),
        "accessdeviceos": rng.choice(["Windows", None], n).astype(object),
        "authdevicename": rng.choice(["phone-1", "phone-2"], n),
        "result": rng.random(n) < 0.9,
        "reason": rng.choice(["user_approved", "user_denied"], n),
        "location": location,
        "application": rng.choice(["vpn", "mail", "wiki"], n),
        "factor": rng.choice(["duo_push", "passcode"], n),
        "event_id": [f"{user}-{i}" for i in range(n)],
    })


def test_stacked_data_prep_equals_one_frame_at_a_time():
    schema = load_schema("duo")
    frames = [_duo_rows(f"user{i}", n, seed=i) for i, n in enumerate([1, 7, 40, 150, 3])]
    frames.append(pd.concat([frames[2], frames[3]]))  # two users in one frame: counters per user
    frames.append(frames[1].iloc[:0])  # an empty frame
    frames.append(frames[3].copy())  # the same user in two frames: each frame counts its own rows
    expected = [prepare_features(f, schema) for f in frames]
    got = prepare_features_many(frames, schema)
    assert len(got) == len(expected)
    for want, have in zip(expected, got, strict=True):
        pd.testing.assert_frame_equal(have, want)
    # the counters restart per frame: user1's first event of a day counts 0, whatever precedes it
    assert got[1]["logcount"].iloc[0] == 0


def test_frames_of_different_dtypes_are_prepared_one_by_one():
    """An int column in one frame and an all-missing one in another would be upcast to floats
    if stacked ("1" becoming "1.0" as a category); such frames keep the one-frame path."""
    schema = load_schema("duo")
    a, b = _duo_rows("a", 20, 1), _duo_rows("b", 20, 2)
    a["application"] = 1  # int64
    b["application"] = np.nan  # float64
    got = prepare_features_many([a, b], schema)
    assert set(got[0]["application"]) == {"1"}
    assert set(got[1]["application"]) == {"nan"}


@pytest.mark.parametrize("rows", [None, 5, 30])
def test_vocabularies_from_decoded_columns(rows):
    values = ["b", "a", "b", None, "nan", "c", "a", "b", 1, "1", "d", "c"] * 3
    frame = pd.DataFrame({"cat": pd.Series(values, dtype=object), "num": np.arange(len(values), dtype=float)})
    cols = FeatureColumns.from_frame(frame, ["cat"], ["num"], [])
    enc = FeatureEncoder.fit_columns(cols, rows, ["cat"], ["num"], [])
    head = frame if rows is None else frame.iloc[:rows]
    as_str = head["cat"].map(lambda v: "nan" if v is None else str(v))
    counts = as_str.value_counts()
    # most frequent first, ties by value; None and "nan" are one class, 1 and "1" too
    expected = sorted(counts.index, key=lambda v: (-counts[v], v))
    assert enc.vocabularies["cat"] == expected
    assert enc.numeric_mean["num"] == pytest.approx(head["num"].mean())
    assert enc.numeric_max["num"] == head["num"].max()
    # the frame path is the same fit
    assert FeatureEncoder.fit(head, ["cat"], ["num"], []).to_dict() == enc.to_dict()


def test_min_count_and_max_categories_from_decoded_columns():
    frame = pd.DataFrame({"cat": ["x"] * 5 + ["y"] * 3 + ["z"] * 3 + ["w"]})
    cols = FeatureColumns.from_frame(frame, ["cat"], [], [])
    assert FeatureEncoder.fit_columns(cols, None, ["cat"], [], [], min_category_count=3).vocabularies["cat"] == [
        "x", "y", "z"]
    assert FeatureEncoder.fit_columns(cols, None, ["cat"], [], [], max_categories=2).vocabularies["cat"] == ["x", "y"]
    only = FeatureEncoder.fit_columns(cols, None, ["cat"], [], [], category_min_count={"cat": 4})
    assert only.vocabularies["cat"] == ["x"]
