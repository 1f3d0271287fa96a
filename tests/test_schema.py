"""Schema mapping of real-shaped Azure and Duo records and the derived per-user-per-day counters."""

from __future__ import annotations

import textwrap

import pandas as pd
import pytest

from dfp_ray.pipeline.data_prep import add_derived_features, frame_from_records
from dfp_ray.schemas import SourceSchema, load_schema
from dfp_ray.yaml_config import ConfigError


def duo_record(ts, user, *, city="Austin", state="Texas", country="US", browser="Chrome", os_="Mac OS X",
               device="iphone", result="success", reason="user_approved", txid="t"):
    return {
        "timestamp": ts, "isotimestamp": pd.Timestamp(ts, unit="s", tz="UTC").isoformat(), "txid": txid,
        "user": {"name": user, "key": "DU123", "groups": ["staff"]},
        "access_device": {"browser": browser, "os": os_, "ip": "10.0.0.1",
                          "location": {"city": city, "state": state, "country": country}},
        "auth_device": {"name": device, "ip": None, "location": {}},
        "application": {"name": "VPN", "key": "DI1"}, "factor": "duo_push",
        "event_type": "authentication", "result": result, "reason": reason,
    }


def azure_record(time, upn, *, app="Office 365", city="Paris", country="FR", browser="Edge 100",
                 display_name="LAPTOP-1", failure="Other.", id_="a1"):
    device = {"deviceId": "", "operatingSystem": "Windows10", "browser": browser, "trustType": ""}
    if display_name is not None:
        device["displayName"] = display_name
    return {
        "time": time, "category": "SignInLogs", "operationName": "Sign-in activity",
        "properties": {
            "id": id_, "userPrincipalName": upn, "appDisplayName": app, "clientAppUsed": "Browser",
            "deviceDetail": device, "ipAddress": "1.2.3.4", "isInteractive": True,
            "location": {"city": city, "state": "IDF", "countryOrRegion": country,
                         "geoCoordinates": {"latitude": 48.8, "longitude": 2.3}},
            "status": {"errorCode": 0, "failureReason": failure}, "riskEventTypes_v2": [],
            "riskLevelDuringSignIn": "none",
        },
    }


def test_duo_mapping_nested_fields_and_result_boolean():
    schema = load_schema("duo")
    t0 = 1659312000  # 2022-08-01T00:00:00Z
    recs = [
        duo_record(t0 + 10, "alice", txid="a"),
        duo_record(t0 + 20, "alice", result="denied", reason="invalid_passcode", txid="b", state=None),
        duo_record(t0 + 30, "alice", result="fraud", reason="user_marked_fraud", txid="c", browser=None),
    ]
    df, report = frame_from_records(recs, schema)
    assert report.kept == 3 and report.skipped_total == 0
    assert list(df["event_id"]) == ["a", "b", "c"]
    assert list(df["result"]) == [True, False, False]
    assert df.loc[0, "location"] == "Austin, Texas, US"
    assert df.loc[1, "location"] == "Austin, US"  # a missing part is left out of the join
    assert df.loc[2, "accessdevicebrowser"] == "nan"  # missing string -> the category "nan"
    assert str(df["timestamp"].dt.tz) == "UTC"
    assert df["timestamp"].iloc[0] == pd.Timestamp("2022-08-01T00:00:10Z")
    assert set(schema.feature_columns) <= set(df.columns)
    # Morpheus's 7 Duo features, plus application, location and the cyclic hour / weekday pairs
    assert len(schema.feature_columns) == 13
    assert {"application", "location", "hour_of_day_sin", "day_of_week_cos"} <= set(schema.feature_columns)


def test_azure_mapping_missing_display_name_and_lists():
    schema = load_schema("azure")
    recs = [
        azure_record("2022-08-01T10:00:00.123Z", "bob@corp.example", id_="x1"),
        azure_record("2022-08-01T11:00:00Z", "bob@corp.example", app="Teams", display_name=None, id_="x2"),
    ]
    df, report = frame_from_records(recs, schema)
    assert report.kept == 2
    assert list(df["username"]) == ["bob@corp.example"] * 2
    assert df.loc[0, "location"] == "Paris, FR"
    assert df.loc[1, "deviceDetaildisplayName"] == "nan"
    assert list(df["appincrement"]) == [1, 2]
    assert list(df["event_id"]) == ["x1", "x2"]
    # Morpheus's 9 Azure features, plus location and the cyclic hour / weekday pairs
    assert len(schema.feature_columns) == 14
    assert {"location", "hour_of_day_sin", "day_of_week_cos"} <= set(schema.feature_columns)


def test_malformed_records_are_counted_and_skipped(caplog):
    schema = load_schema("duo")
    recs = [
        duo_record(1659312000, "alice", txid="ok"),
        {"timestamp": "not a time", "user": {"name": "alice"}, "txid": "bad-time"},
        {"timestamp": 1659312000, "user": {}, "txid": "no-user"},
        {"timestamp": 1659312000, "user": {"name": ["a", "b"]}, "txid": "list-user"},
    ]
    with caplog.at_level("WARNING"):
        df, report = frame_from_records(recs, schema)
    assert list(df["event_id"]) == ["ok"]
    assert report.total == 4 and report.kept == 1 and report.skipped_total == 3
    assert any("unparsable datetime" in k for k in report.skipped)
    assert any("missing required 'username'" in k for k in report.skipped)
    assert any("wrong type for 'username'" in k for k in report.skipped)
    assert "skipped 3 of 4 records" in caplog.text


def test_counters_follow_utc_days_and_sort_unsorted_input():
    schema = load_schema("duo")
    rows = pd.DataFrame({
        "timestamp": pd.to_datetime([
            "2022-08-01T23:59:59Z", "2022-08-01T08:00:00Z", "2022-08-02T00:00:00Z",
            "2022-08-01T12:00:00Z", "2022-08-01T09:00:00Z", "2022-08-02T01:00:00Z",
        ], utc=True),
        "username": ["u", "u", "u", "u", "v", "u"],
        "location": ["A", "A", "A", "B", "A", "C"],
    })
    out = add_derived_features(rows, schema)
    assert list(out["timestamp"]) == sorted(rows["timestamp"])
    u = out[out["username"] == "u"]
    # Aug 1: 08:00 A, 12:00 B, 23:59:59 A | Aug 2: 00:00 A, 01:00 C
    assert list(u["logcount"]) == [0, 1, 2, 0, 1]
    assert list(u["locincrement"]) == [1, 2, 2, 1, 2]
    v = out[out["username"] == "v"]
    assert list(v["logcount"]) == [0] and list(v["locincrement"]) == [1]


def test_counters_use_utc_not_local_offsets():
    schema = load_schema("azure")
    recs = [
        azure_record("2022-08-01T23:30:00-02:00", "u@x", id_="1"),  # = 2022-08-02T01:30Z
        azure_record("2022-08-02T02:00:00Z", "u@x", id_="2"),
    ]
    df, _ = frame_from_records(recs, schema)
    assert list(df["logcount"]) == [0, 1]  # both on Aug 2 UTC


def test_third_source_needs_only_yaml(tmp_path):
    path = tmp_path / "lanl.yaml"
    path.write_text(textwrap.dedent("""
        name: lanl
        fields:
          - {name: timestamp, path: time, type: datetime, time_format: epoch_s, required: true}
          - {name: username, path: src_user, required: true}
          - {name: dst, path: dst_computer}
          - {name: auth_type, path: auth_type}
          - name: success
            path: outcome
            type: bool
            true_values: [Success]
            false_values: [Fail]
        event_id_column: null
        counters:
          - {name: logcount, kind: running_count}
          - {name: dstincrement, kind: distinct_so_far, column: dst}
        features:
          categorical: [auth_type]
          binary: [success]
          numeric: [logcount, dstincrement]
    """))
    schema = load_schema(path)
    raw = pd.DataFrame({"time": [1, 2, 3], "src_user": ["U1", "U1", "U1"], "dst_computer": ["C1", "C2", "C1"],
                        "auth_type": ["Kerberos", "NTLM", None], "outcome": ["Success", "Fail", "Success"]})
    df, _ = frame_from_records(raw, schema)
    assert list(df["dstincrement"]) == [1, 2, 2]
    assert list(df["success"]) == [True, False, True]
    assert list(df["auth_type"]) == ["Kerberos", "NTLM", "nan"]


def test_schema_errors_name_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nfields:\n  - {name: timestamp, path: t, type: datetime, colour: red}\n"
                    "features: {categorical: []}\n")
    with pytest.raises(ConfigError) as err:
        load_schema(path)
    text = str(err.value)
    assert str(path) in text and "fields.0.colour" in text and "unknown key" in text


def test_schema_rejects_unknown_feature():
    with pytest.raises(ValueError, match="neither fields nor counters"):
        SourceSchema.model_validate({
            "name": "x", "fields": [{"name": "timestamp", "path": "t", "type": "datetime"},
                                    {"name": "username", "path": "u"}], "event_id_column": None,
            "features": {"categorical": ["nope"]},
        })


def test_unknown_builtin_schema_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match="azure"):
        load_schema("okta")


# ---------------------------------------------------------------------------- real sources

LANL_SAMPLE = "/work/shared/data/lanl/lanl_auth_sample_days0-2_from_safekit.csv.gz"


@pytest.mark.skipif(not __import__("pathlib").Path(LANL_SAMPLE).exists(), reason="LANL sample not on this machine")
def test_lanl_schema_maps_the_real_sample():
    from dfp_ray.tools.quality import read_lanl

    schema = load_schema("lanl")
    raw = read_lanl(LANL_SAMPLE)
    df, report = frame_from_records(raw, schema)
    assert report.kept == len(raw) == 15_000 and report.skipped_total == 0
    # seconds from the collection's start, counted from the schema's origin: day N is 2015-01-(N+1)
    assert df["timestamp"].min() == pd.Timestamp("2015-01-01T00:00:01Z")
    assert sorted(df["timestamp"].dt.day.unique()) == [1, 2, 3]
    assert df["event_id"].is_unique  # synthesised: the source has no id
    # LANL writes "?" for unknown: missing, i.e. the category "nan"
    assert (raw["auth_type"] == "?").sum() == (df["auth_type"] == "nan").sum() > 0
    assert "?" not in set(df["logon_type"])
    assert df["success"].mean() > 0.98 and df["success"].dtype == bool
    first = df[df["username"] == "U101@DOM1"].iloc[0]
    assert (first["src_computer"], first["dst_computer"], first["auth_orientation"]) == ("C1862", "C1862", "AuthMap")
    assert df.groupby([df["username"], df["timestamp"].dt.day])["logcount"].min().eq(0).all()


def test_epoch_origin_missing_values_pattern_and_hash_ids():
    schema = SourceSchema.model_validate({
        "name": "t", "event_id_column": "event_id",
        "fields": [
            {"name": "timestamp", "path": "t", "type": "datetime", "time_format": "epoch_s",
             "time_origin": "2020-01-01T00:00:00Z"},
            {"name": "username", "path": "u"},
            {"name": "event_id", "hash": ["t", "u", "b"]},
            {"name": "browser", "path": "b", "pattern": "^(.+?) [0-9][0-9.]*$", "missing_values": ["?", "-"]},
        ],
        "features": {"categorical": ["browser"]},
    })
    raw = pd.DataFrame({"t": [0, 86_400, 86_400, 5], "u": ["a", "a", "a", "b"],
                        "b": ["Chrome 118.0.5993", "Mobile Safari", "Mobile Safari", "?"]})
    df, _ = frame_from_records(raw, schema)
    assert list(df["timestamp"]) == [pd.Timestamp("2020-01-01T00:00:00Z"), pd.Timestamp("2020-01-01T00:00:05Z"),
                                     pd.Timestamp("2020-01-02T00:00:00Z"), pd.Timestamp("2020-01-02T00:00:00Z")]
    assert list(df["browser"]) == ["Chrome", "nan", "Mobile Safari", "Mobile Safari"]
    ids = list(df["event_id"])
    assert len(set(ids)) == 4  # identical lines keep distinct ids ("-0", "-1")
    assert ids[2][:16] == ids[3][:16] and {ids[2][-2:], ids[3][-2:]} == {"-0", "-1"}
    again, _ = frame_from_records(raw, schema)
    assert list(again["event_id"]) == ids  # stable: the same lines give the same ids


def test_time_features_are_cyclic_and_declared_in_yaml():
    import numpy as np

    schema = load_schema("duo")
    assert {"hour_of_day_sin", "hour_of_day_cos", "day_of_week_sin", "day_of_week_cos"} <= set(schema.features.numeric)
    assert "application" in schema.features.categorical
    t0 = 1704067200  # 2024-01-01T00:00:00Z, a Monday
    recs = [duo_record(t0 + 23 * 3600 + 59 * 60, "a", txid="x"), duo_record(t0 + 86_400 * 5 + 60, "a", txid="y")]
    df = add_derived_features(frame_from_records(recs, schema, derive=False)[0], schema)
    hour = np.degrees(np.arctan2(df["hour_of_day_sin"], df["hour_of_day_cos"])) % 360 / 15
    assert hour.round(2).tolist() == [23.98, 0.02]  # 23:59 and 00:01 sit next to each other on the circle
    day = np.degrees(np.arctan2(df["day_of_week_sin"], df["day_of_week_cos"])) % 360 / (360 / 7)
    assert day.round(2).tolist() == [pytest.approx(0.0 + 23.98 / 24, abs=0.01), pytest.approx(5.0, abs=0.01)]
    weekend = SourceSchema.model_validate({**schema.model_dump(), "time_features": [
        {"name": "weekend", "kind": "weekend", "timezone": "Asia/Tokyo"}], "features": {"binary": ["weekend"]}})
    df = add_derived_features(frame_from_records(recs, weekend, derive=False)[0], weekend)
    assert df["weekend"].tolist() == [False, True]  # Tokyo: Tuesday 08:59, then Saturday 09:01


def test_time_feature_and_min_count_errors_name_the_problem():
    base = load_schema("duo").model_dump()
    with pytest.raises(ValueError, match="unknown timezone 'Mars/Base'"):
        SourceSchema.model_validate({**base, "time_features": [{"name": "h", "kind": "hour_of_day", "timezone": "Mars/Base"}]})
    with pytest.raises(ValueError, match="not categorical features"):
        SourceSchema.model_validate({**base, "features": {**base["features"], "min_count": {"logcount": 2}}})
    with pytest.raises(ValueError, match="needs a group"):
        SourceSchema.model_validate({**base, "fields": [*base["fields"], {"name": "x", "path": "x", "pattern": "abc"}]})
