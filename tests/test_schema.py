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
    assert len(schema.feature_columns) == 7


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
    assert len(schema.feature_columns) == 9


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
