"""`dfp-ray datagen`: determinism, label integrity, raw formats, layout, control messages, S3."""

from __future__ import annotations

import filecmp
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from dfp_ray.cli import main as cli_main
from dfp_ray.messages import parse_control_messages
from dfp_ray.pipeline.data_prep import frame_from_records
from dfp_ray.schemas import load_schema
from dfp_ray.tools.datagen import ANOMALY_KINDS, GROUND_TRUTH_COLUMNS, DatagenConfig, generate

try:
    from tests.ports import free_port
except ImportError:
    from ports import free_port

SMALL = dict(users=10, train_days=4, infer_days=2, events_per_user_per_day=5.0)
FILE_RE = {
    "duo": re.compile(r"^DUO_(\d{4}-\d{2}-\d{2})T(\d{2})_(\d{2})_(\d{2})\.(\d{3})Z\.json$"),
    "azure": re.compile(r"^AZUREAD_(\d{4}-\d{2}-\d{2})T(\d{2})_(\d{2})_(\d{2})\.(\d{3})Z\.json$"),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("datagen") / "data"
    summary = generate(DatagenConfig(out=str(out), seed=11, **SMALL), progress=False)
    return out, summary


def _records(folder: Path) -> list[dict]:
    records = []
    for path in sorted(folder.glob("*.json")):
        records.extend(json.loads(path.read_text(encoding="utf-8")))
    return records


def _event_id(source: str, record: dict) -> str:
    return record["txid"] if source == "duo" else record["properties"]["id"]


def _data_files(root: Path) -> list[str]:
    """Every file whose bytes must not depend on where the data set was written."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.parts[-2] != "control_messages" and p.name != "manifest.json"
    )


def test_same_seed_writes_identical_bytes_and_another_seed_differs(tmp_path, dataset):
    first, _ = dataset
    again = tmp_path / "again"
    generate(DatagenConfig(out=str(again), seed=11, **SMALL), progress=False)
    names = _data_files(first)
    assert names == _data_files(again) and len(names) > 20
    match, mismatch, errors = filecmp.cmpfiles(first, again, names, shallow=False)
    assert mismatch == [] and errors == []
    # Manifest and control messages only differ by the output path they name.
    for rel in ["manifest.json", *sorted(p.name for p in (first / "control_messages").iterdir())]:
        rel = rel if rel == "manifest.json" else f"control_messages/{rel}"
        a = (first / rel).read_text().replace(str(first), "OUT")
        b = (again / rel).read_text().replace(str(again), "OUT")
        assert a == b, rel

    other = tmp_path / "other"
    generate(DatagenConfig(out=str(other), seed=12, **SMALL), progress=False)
    a_ids = {_event_id("duo", r) for r in _records(first / "duo" / "training")}
    b_ids = {_event_id("duo", r) for r in _records(other / "duo" / "training")}
    assert a_ids.isdisjoint(b_ids)


def test_a_source_alone_is_the_same_as_in_a_full_run(tmp_path, dataset):
    first, _ = dataset
    only = tmp_path / "azure_only"
    generate(DatagenConfig(out=str(only), seed=11, sources=["azure"], **SMALL), progress=False)
    names = [n for n in _data_files(first) if n.startswith("azure")]
    assert names == _data_files(only)
    assert filecmp.cmpfiles(first, only, names, shallow=False)[1] == []


@pytest.mark.parametrize("source", ["duo", "azure"])
def test_labels_point_at_real_inference_records_and_every_attack_event_is_labelled(dataset, source):
    out, summary = dataset
    truth = pd.read_csv(out / source / "ground_truth.csv", dtype=str)
    assert tuple(truth.columns) == GROUND_TRUTH_COLUMNS
    assert len(truth) > 0 and truth["event_id"].is_unique
    assert set(truth["kind"]) == set(ANOMALY_KINDS)  # 10 users: every kind injected
    assert set(truth["source"]) == {source}

    train = _records(out / source / "training")
    infer = _records(out / source / "inference")
    ids = [_event_id(source, r) for r in train + infer]
    assert len(ids) == len(set(ids)), "event ids must be unique"
    assert all(uuid.UUID(i).version == 4 for i in ids[:50])
    by_id = {_event_id(source, r): r for r in infer}
    train_ids = {_event_id(source, r) for r in train}
    assert not set(truth["event_id"]) & train_ids, "no anomaly in the training window"
    for row in truth.itertuples():
        rec = by_id[row.event_id]
        if source == "duo":
            assert rec["user"]["name"] == row.username
            assert rec["isotimestamp"].startswith(row.timestamp[:-1])
        else:
            assert rec["properties"]["userPrincipalName"] == row.username
            assert rec["time"].startswith(row.timestamp[:-1])

    # Per-kind counts agree with the summary and the manifest.
    manifest = json.loads((out / "manifest.json").read_text())
    counts = truth["kind"].value_counts().to_dict()
    assert summary.sources[source].anomalies == manifest["sources"][source]["anomalies"] == counts
    assert manifest["options"]["seed"] == 11

    # Containment: once an attack starts, its victim has no unlabelled event later that UTC day.
    schema = load_schema(source)
    frame, report = frame_from_records(infer, schema)
    assert report.skipped_total == 0
    frame["labelled"] = frame["event_id"].isin(truth["event_id"])
    frame["day"] = frame["timestamp"].dt.floor("D")
    for (user, day), g in frame[frame["labelled"]].groupby(["username", "day"]):
        rest = frame[(frame["username"] == user) & (frame["day"] == day) & ~frame["labelled"]]
        assert (rest["timestamp"] < g["timestamp"].min()).all()


@pytest.mark.parametrize("source", ["duo", "azure"])
def test_every_labelled_event_shows_something_its_user_never_did_in_training(dataset, source):
    """Label quality: a never-seen category, or a day counter beyond the user's training maximum."""
    out, _ = dataset
    schema = load_schema(source)
    train, _ = frame_from_records(_records(out / source / "training"), schema)
    infer, _ = frame_from_records(_records(out / source / "inference"), schema)
    truth = pd.read_csv(out / source / "ground_truth.csv", dtype=str)
    attacks = infer[infer["event_id"].isin(truth["event_id"])]
    f = schema.features
    assert len(attacks) == len(truth)
    for user, rows in attacks.groupby("username"):
        hist = train[train["username"] == user]
        assert len(hist) > 0
        new_cat = pd.Series(False, index=rows.index)
        for c in f.categorical + f.binary:
            new_cat |= ~rows[c].isin(set(hist[c]))
        # Per-day counters: the session as a whole goes beyond anything the user did in training.
        beyond = any(rows[c].max() > hist[c].max() for c in f.numeric)
        assert new_cat.all(), f"{user}: an attack event has only values seen in training"
        assert beyond, f"{user}: the attack session stays inside the user's daily counters"


@pytest.mark.parametrize("source", ["duo", "azure"])
def test_files_layout_names_and_raw_format(dataset, source):
    out, summary = dataset
    s = summary.sources[source]
    for window, days in (
        ("training", ("2022-08-01", "2022-08-04")),
        ("inference", ("2022-08-05", "2022-08-06")),
    ):
        files = sorted((out / source / window).iterdir())
        assert len(files) == s.files[window] > 0
        for path in files:
            m = FILE_RE[source].match(path.name)
            assert m, path.name
            assert days[0] <= m.group(1) <= days[1]
            records = json.loads(path.read_text())
            assert isinstance(records, list) and records
            stamp = f"{m.group(1)}T{m.group(2)}:{m.group(3)}:{m.group(4)}.{m.group(5)}"
            times = [r["isotimestamp"][:23] if source == "duo" else r["time"][:23] for r in records]
            assert times[0] == stamp and times == sorted(times)  # named after its first event
            assert {t[:10] for t in times} == {m.group(1)}  # one UTC day per file
            assert len({int(t[11:13]) // 3 for t in times}) == 1  # one 3-hour slot per file
    recs = _records(out / source / "training")
    assert len(recs) == s.records["training"]
    if source == "duo":
        r = recs[0]
        assert isinstance(r["timestamp"], int) and r["event_type"] == "authentication"
        assert r["isotimestamp"].endswith("+00:00") and r["timestamp"] == int(
            pd.Timestamp(r["isotimestamp"]).timestamp()
        )
        assert {"name", "key", "groups"} <= set(r["user"]) and {"name", "key"} == set(r["application"])
        assert {x["result"] for x in recs} >= {"success", "denied"}
        assert any("browser" not in x["access_device"] for x in recs), "VPN events carry no browser"
        assert any(x["auth_device"]["name"] is None for x in recs), "remembered devices have no auth device"
        names = {x["user"]["name"] for x in recs}
        assert "attacktarget" in names and any("." in n for n in names) and any("@" in n for n in names)
    else:
        r = recs[0]
        assert r["operationName"] == "Sign-in activity" and r["time"].endswith("Z")
        assert {x["category"] for x in recs} == {"SignInLogs", "NonInteractiveUserSignInLogs"}
        p = r["properties"]
        assert p["createdDateTime"].endswith("+00:00") and isinstance(p["isInteractive"], bool)
        assert {"city", "state", "countryOrRegion", "geoCoordinates"} <= set(p["location"])
        ok = [x for x in recs if x["properties"]["status"]["errorCode"] == 0]
        bad = [x for x in recs if x["properties"]["status"]["errorCode"] != 0]
        assert ok and bad and all(x["resultType"] == "0" for x in ok)
        assert all(x["resultType"] == str(x["properties"]["status"]["errorCode"]) for x in bad)
        assert all(x["properties"]["status"]["failureReason"] for x in bad)
        assert any("displayName" not in x["properties"]["deviceDetail"] for x in recs), "unmanaged devices"
        assert all(x["properties"]["userPrincipalName"].endswith("@corp.example") for x in recs)


def test_control_messages_parse_and_point_at_the_written_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    generate(DatagenConfig(out="rel/data", seed=3, users=4, train_days=2, infer_days=1), progress=False)
    folder = tmp_path / "rel" / "data" / "control_messages"
    names = sorted(p.name for p in folder.iterdir())
    expected = [
        f"{s}_{k}.json"
        for s in ("azure", "duo")
        for k in (
            "payload_inference",
            "payload_load_train_inference",
            "payload_lti",
            "payload_training",
            "streaming_inference",
            "streaming_lti",
            "streaming_training",
        )
    ] + ["duo_streaming_payload.json"]
    assert names == sorted(expected)
    for name in names:
        result = parse_control_messages(folder / name)
        assert result.ok, result.rejections
        doc = json.loads((folder / name).read_text())
        assert len(result.messages) == len(doc["inputs"])
        for msg in doc["inputs"]:
            kinds = {t["type"] for t in msg["tasks"]}
            assert kinds in ({"load", "training"}, {"load", "inference"})  # never mixed
            (glob,) = msg["tasks"][0]["properties"]["files"]
            window = "training" if "training" in kinds else "inference"
            assert glob == f"rel/data/{glob.split('/')[2]}/{window}/*.json"  # relative, as given
            assert list(Path().glob(glob)), glob
            assert msg["metadata"]["file_to_df_options"] == {
                "parser_kwargs": {"lines": False, "orient": "records"}
            }
            if "lti" in name:
                b = msg["metadata"]["batching_options"]
                want = ("2022-08-01", "2022-08-02") if window == "training" else ("2022-08-03", "2022-08-03")
                assert (b["start_time"], b["end_time"]) == want
    streaming_payload = json.loads((folder / "duo_streaming_payload.json").read_text())["inputs"]
    assert [m["metadata"]["data_type"] for m in streaming_payload] == ["streaming", "payload"]


def test_config_rejects_bad_options_with_reasons():
    with pytest.raises(ValidationError, match="extra"):
        DatagenConfig(out="x", userz=3)
    with pytest.raises(ValidationError, match="does not divide 24"):
        DatagenConfig(out="x", file_interval_hours=5)
    with pytest.raises(ValidationError, match="more than users"):
        DatagenConfig(out="x", users=3, anomaly_users=4)
    with pytest.raises(ValidationError, match="out must be"):
        DatagenConfig(out="  ")
    assert DatagenConfig(out="x").n_attacked == 5 and DatagenConfig(out="x", users=1000).n_attacked == 250


def test_attacked_users_are_distinct_and_kinds_come_round_robin():
    from dfp_ray.tools.datagen.anomalies import plan_victims
    from dfp_ray.tools.datagen.users import build_population

    config = DatagenConfig(out="x", users=40, anomaly_users=20, seed=9)
    plan = plan_victims(config, build_population(config), stream=1)
    users = [u for u, _, _ in plan]
    assert users[0] == 0 and len(set(users)) == 20  # attacktarget first, nobody twice
    assert pd.Series([k for _, k, _ in plan]).value_counts().to_dict() == dict.fromkeys(ANOMALY_KINDS, 4)
    assert plan[0][1] == "new_location"
    assert all(config.train_days <= d < config.total_days for _, _, d in plan)


def test_cli_writes_then_refuses_to_mix_with_an_older_run(tmp_path, capsys):
    out = tmp_path / "cli"
    args = [
        "datagen",
        "--out",
        str(out),
        "--users",
        "3",
        "--train-days",
        "2",
        "--infer-days",
        "1",
        "--sources",
        "duo",
        "--seed",
        "5",
        "--no-progress",
    ]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "duo" in printed and "control messages" in printed
    assert (out / "duo" / "ground_truth.csv").exists() and not (out / "azure").exists()
    assert cli_main(args) == 1 and "--overwrite" in capsys.readouterr().err
    assert cli_main([*args, "--overwrite", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sources"]["duo"]["users"] == 3
    assert cli_main(["datagen", "--out", str(out), "--file-interval-hours", "7"]) == 2


# ---------------------------------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def moto_endpoint():
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"moto_server exited with code {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("moto_server did not accept connections within 30 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.s3
def test_writes_to_s3_the_same_bytes_as_locally(moto_endpoint, tmp_path, monkeypatch):
    import s3fs

    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    options = {"client_kwargs": {"endpoint_url": moto_endpoint}, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("dfp-data")
    cfg = dict(seed=4, users=4, train_days=2, infer_days=1)
    generate(DatagenConfig(out="s3://dfp-data/synthetic", storage_options=options, **cfg), progress=False)
    local = tmp_path / "local"
    generate(DatagenConfig(out=str(local), **cfg), progress=False)

    fs.invalidate_cache()
    remote = sorted(p.removeprefix("dfp-data/synthetic/") for p in fs.find("dfp-data/synthetic"))
    names = _data_files(local)
    assert [n for n in remote if not n.startswith("control_messages") and n != "manifest.json"] == names
    for name in names:
        assert fs.cat_file(f"dfp-data/synthetic/{name}") == (local / name).read_bytes(), name
    msg = json.loads(fs.cat_file("dfp-data/synthetic/control_messages/duo_payload_training.json"))
    assert msg["inputs"][0]["tasks"][0]["properties"]["files"] == [
        "s3://dfp-data/synthetic/duo/training/*.json"
    ]
    # A second run without overwrite refuses; with it, replaces.
    with pytest.raises(FileExistsError):
        generate(DatagenConfig(out="s3://dfp-data/synthetic", storage_options=options, **cfg), progress=False)
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"


def test_families_by_name_share_one_entry_point(tmp_path):
    from dfp_ray.tools.families import FAMILIES, generate_family, make_config

    assert FAMILIES == ("default", "habits", "roster")
    with pytest.raises(ValueError, match="unknown data family 'nope': use one of default, habits, roster"):
        generate_family("nope", out=str(tmp_path))
    with pytest.raises(TypeError, match="family 'roster' takes a RosterConfig, got HabitsConfig"):
        generate_family("roster", make_config("habits", out=str(tmp_path)))
    summary = generate_family("roster", out=str(tmp_path / "r"), sources=["duo"], users=12, seed=3)
    assert (tmp_path / "r" / "duo").is_dir() and summary.model_dump()


@pytest.mark.parametrize("family", ["habits", "roster"])
def test_cli_other_families_write_and_name_a_bad_option(family, tmp_path, capsys):
    out = tmp_path / family
    args = ["datagen", "--family", family, "--out", str(out), "--sources", "azure", "--users", "12", "--json"]
    assert cli_main(args) == 0
    assert json.loads(capsys.readouterr().out)  # the family's summary
    assert (out / "azure").is_dir() and not (out / "duo").exists()
    assert cli_main(args) == 1 and "--overwrite" in capsys.readouterr().err
    assert cli_main([*args[:-3], "--users", "-1", "--overwrite"]) == 2
    assert f"--family {family}: users:" in capsys.readouterr().err
