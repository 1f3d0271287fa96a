"""The per-request fast path (dfp_ray/serve/dfp_fast.py) against the batch pipeline's own functions.

Real models (small autoencoders trained here in-process on `dfp-ray datagen` logs) of Duo and
Azure score a day of records, sent in requests of several users in time order, then records
out of time order, records of the next day, unknown categories and missing fields. Each record's
counters, z-scores, scores, detection and explanation must equal what ``map_fields ->
prepare_features (history + new) -> score_users -> filter_detections`` give the same records.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from dfp_ray.autoencoder.params import AutoencoderParams
from dfp_ray.config import DetectionConfig
from dfp_ray.pipeline.data_prep import frame_from_records, prepare_features
from dfp_ray.pipeline.filter_detections import filter_detections
from dfp_ray.pipeline.inference import score_users
from dfp_ray.pipeline.training import train_model
from dfp_ray.registry import ModelRef
from dfp_ray.schemas import load_schema
from dfp_ray.schemas.mapping import flatten_any, map_fields
from dfp_ray.serve.dfp_fast import DayHistory, FastMapper, score_rows
from dfp_ray.tools.datagen import DatagenConfig, generate

PARAMS = {"encoder_layers": [16, 8], "decoder_layers": [16], "epochs": 2, "device": "cpu", "seed": 1}
DET = DetectionConfig()


@pytest.fixture(scope="module", params=["duo", "azure"])
def source(request, tmp_path_factory):
    name = request.param
    data = tmp_path_factory.mktemp(f"fast_{name}")
    generate(DatagenConfig(out=str(data), sources=[name], users=3, train_days=2, infer_days=1,
                           events_per_user_per_day=10, seed=5))
    schema = load_schema(name)
    train, infer = [], []
    for part, out in (("training", train), ("inference", infer)):
        for f in sorted((data / name / part).glob("*.json")):
            out += json.loads(f.read_text())
    frame, _ = frame_from_records(train, schema, derive=False)
    model, _, _ = train_model(frame, schema, AutoencoderParams.model_validate(PARAMS))
    ref = ModelRef(name=f"DFP-{name}-generic_user", version="1")
    return name, schema, model, ref, infer


def _time_key(schema):
    path = next(f.path for f in schema.fields if f.name == schema.time_column).split(".")
    return path[0]


def _variants(name, schema, records):
    """The day in time order, then odd ones: out of order, next day, unknown categories, missing."""
    key = _time_key(schema)
    day = list(records)
    odd = []
    first, last = copy.deepcopy(day[0]), copy.deepcopy(day[-1])
    odd.append(first)  # an early record again, after later ones of its user (out of order)
    unknown = copy.deepcopy(day[len(day) // 2])
    if name == "duo":
        unknown["access_device"]["browser"] = "NeverSeenBrowser"
        unknown["access_device"]["location"]["city"] = "Atlantis"
        unknown["application"] = None
        unknown.pop("reason", None)
        nxt = copy.deepcopy(last)
        nxt[key] = int(nxt[key]) + 86_400
    else:
        props = unknown["properties"]
        props["deviceDetail"]["browser"] = "Mosaic 1.0"
        props["location"]["city"] = "Atlantis"
        props.pop("appDisplayName", None)
        nxt = copy.deepcopy(last)
        nxt[key] = (pd.Timestamp(nxt[key]) + pd.Timedelta(days=1)).isoformat().replace("+00:00", "Z")
    odd += [unknown, nxt, copy.deepcopy(nxt)]
    return [day[i:i + 7] for i in range(0, len(day), 7)] + [odd]


def test_the_fast_path_gives_each_record_the_pipelines_scores(source):
    name, schema, model, ref, records = source
    resolve = lambda user: (model, ref)  # noqa: E731 - every user on the one (generic) model
    _compare(source, resolve, DET)


def test_the_fast_path_gives_the_pipelines_population_check(source):
    """Users on a model of their own, the generic model as the population check: same scores,
    population scores, detected_by and explanations (the check's own detections explained by
    the generic model) on both paths. A high alert rate makes both sides flag rows."""
    name, schema, generic, _, records = source
    frame, _ = frame_from_records(records, schema, derive=False)
    own, _, _ = train_model(frame, schema, AutoencoderParams.model_validate({**PARAMS, "seed": 2}))
    resolve = lambda user: (own, ModelRef(name=f"DFP-{name}-{user}", version="3"))  # noqa: E731
    det = DetectionConfig(alert_rate=0.2, population_share=0.5)
    kinds = _compare(source, resolve, det, population_model=generic)
    assert "population" in kinds and kinds & {"model", "model+population"}, kinds


def _compare(source, resolve, det, population_model=None) -> set:
    """Score every request both ways and compare record by record; the detected_by values seen."""
    name, schema, model, ref, records = source
    DET = det  # noqa: N806 - the rule both paths apply
    mapper = FastMapper(schema)
    assert mapper.why_not is None
    kinds: set = set()
    histories: dict[str, DayHistory] = {}
    history_rows = None  # the reference path's same-day history: mapped rows, as the pandas scorer held them
    cols = [c.column for c in schema.counters if c.column]
    checked = detections = 0
    for request in _variants(name, schema, records):
        fast = mapper.map(request)
        assert fast is not None, request
        # reference: the pipeline's functions on history + new
        raw = flatten_any(request)
        raw["_source_file"] = np.arange(len(request))
        new, report = map_fields(raw, schema)
        assert not report.skipped
        combined = new if history_rows is None else pd.concat([history_rows, new], ignore_index=True)
        prepared = prepare_features(combined, schema)
        fresh = prepared[prepared["_source_file"].to_numpy() >= 0].reset_index(drop=True)
        want, _ = score_users(fresh, schema, resolve, detection=DET, population_model=population_model)
        flagged = set(filter_detections(want, DET)["_source_file"].tolist())
        times = combined[schema.time_column]
        newest = times.groupby(combined[schema.user_column]).transform("max").dt.floor("D")
        history_rows = combined[(times >= newest).to_numpy()].assign(_source_file=-1)
        # fast path
        users = fast.columns[schema.user_column]
        counters = {c.name: [0] * len(fast) for c in schema.counters}
        for u in dict.fromkeys(users):
            idx = [i for i, x in enumerate(users) if x == u]
            t = fast.times[idx].tolist()
            v = {c: [fast.columns[c][i] for i in idx] for c in cols}
            day = histories.setdefault(u, DayHistory())
            for cname, got in day.counters(schema, t, v).items():
                for i, g in zip(idx, got, strict=True):
                    counters[cname][i] = g
            day.remember(schema, t, v, 5000)
        got = score_rows(schema, DET, fast, counters, resolve, None, "DFP-x-generic_user", 3,
                         population_model=population_model)
        assert not got.failed
        by_pos = {int(p): i for i, p in enumerate(got.cols["_source_file"].tolist())}
        for _, row in want.iterrows():
            i = by_pos[int(row["_source_file"])]
            for c in schema.counters:
                assert got.cols[f"counter:{c.name}"][i] == int(row[c.name]), (c.name, row["_source_file"])
            for f in model.feature_columns:
                assert got.cols[f"z:{f}"][i] == row[f + "_z_loss"], f  # same rows, same batches: bit-equal
            assert got.cols["mean_abs_z"][i] == row["mean_abs_z"]
            assert got.cols["anomaly_score"][i] == row["anomaly_score"]
            assert got.cols["threshold"][i] == row["alert_threshold"]
            assert bool(got.cols["detection"][i]) is (int(row["_source_file"]) in flagged)
            assert got.cols["explanation"][i] == row["explanation"]
            assert got.cols["event_id"][i] == row["event_id"]
            if population_model is not None:
                assert np.array_equal(got.cols["population_score"][i], row["population_score"], equal_nan=True)
                assert got.cols["detected_by"][i] == row["detected_by"]
                kinds.add(row["detected_by"])
            else:
                assert "detected_by" not in got.cols and "detected_by" not in want.columns
            checked += 1
            detections += bool(got.cols["detection"][i])
    assert checked == sum(len(r) for r in _variants(name, schema, records))
    return kinds


def test_records_the_fast_mapper_does_not_take_go_the_pandas_way():
    schema = load_schema("duo")
    mapper = FastMapper(schema)
    ok = {"timestamp": 1_660_000_000, "txid": "a", "user": {"name": "u"}, "result": "success"}
    assert mapper.map([ok]) is not None
    for bad in ({**ok, "timestamp": "not a time"}, {**ok, "user": {"name": 5}}, {**ok, "user": None},
                {**ok, "access_device": {"browser": ["x"]}}, {**ok, "access_device": "text"},
                {**ok, "result": 1}, {**ok, "username": "shadow"}, {**ok, "user.name": "dotted"}, 42,
                {**ok, "access_device": {"location": {"a.b": 1}}}, {**ok, "access_device": {"location": "x"}},
                {**ok, "application": {"name": {"x": 1}}}, {**ok, "user": {"name": "u", "x.y": 1}},
                {**ok, "application": {}}):
        assert mapper.map([ok, bad]) is None, bad
    # nulls (and absent objects) on a field's path are missing values, not refusals
    for fine in ({**ok, "access_device": None}, {**ok, "access_device": {"location": None}}):
        got = mapper.map([ok, fine])
        assert got is not None and got.columns["location"] == [None, None], fine


def test_the_fast_mapper_maps_as_map_fields():
    for name in ("duo", "azure"):
        schema = load_schema(name)
        mapper = FastMapper(schema)
        if name == "duo":
            recs = [{"timestamp": 1_660_000_000 + i, "txid": f"t{i}", "user": {"name": "u"},
                     "access_device": {"browser": "" if i == 1 else "Chrome", "location": {"city": "X", "state": None,
                                                                                          "country": "Y" if i else ""}},
                     "result": ["success", "denied", "weird"][i % 3], "reason": None} for i in range(4)]
        else:
            recs = [{"time": f"2022-08-0{i + 1}T10:00:0{i}.5Z", "properties": {
                "userPrincipalName": "u@x", "id": f"i{i}", "deviceDetail": {"browser": ["Chrome 118.0.1", "Edge", "Firefox 7"][i % 3]},
                "location": {"city": "C", "countryOrRegion": None if i else "ES"}}} for i in range(4)]
        fast = mapper.map(recs)
        want, _ = map_fields(flatten_any(recs), schema)
        for c, values in fast.columns.items():
            expected = [None if (v is None or v is pd.NA or (isinstance(v, float) and v != v)) else v
                        for v in want[c].tolist()]
            assert values == expected, (name, c)
        assert fast.times.tolist() == want[schema.time_column].dt.as_unit("ns").array.asi8.tolist()
