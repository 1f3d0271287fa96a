"""Hostile-but-realistic inputs, without Ray: what the parser, the loader, the output files and
the registry do with them. Each test is one row of docs/reliability.md."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from dfp_ray.config import DFPConfig, InputConfig, OutputConfig
from dfp_ray.controllers.user import UserController
from dfp_ray.messages import ControlMessage, parse_control_messages
from dfp_ray.messages.parser import MAX_DEPTH, MAX_DOCUMENT_BYTES
from dfp_ray.pipeline.file_batcher import OUTSIDE_WINDOW, plan_batches
from dfp_ray.pipeline.fsspec_loader import OutsideDataRoots, expand_globs
from dfp_ray.pipeline.write_to_file import RunOutput, TableWriter
from dfp_ray.readers.storage import storage_options_for
from dfp_ray.schemas import load_schema

T0 = datetime(2022, 8, 1, tzinfo=timezone.utc)


def message(files: list[str], *, kind: str = "training", batching: dict | None = None,
            parser_kwargs: dict | None = None) -> dict:
    meta: dict = {"data_type": "payload"}
    if batching:
        meta["batching_options"] = batching
    if parser_kwargs is not None:
        meta["file_to_df_options"] = {"parser_kwargs": parser_kwargs}
    return {"tasks": [{"type": "load", "properties": {"loader_id": "fsspec", "files": files}},
                      {"type": kind, "properties": {}}], "metadata": meta}


def parse_one(doc: dict) -> ControlMessage:
    result = parse_control_messages(json.dumps(doc))
    assert not result.rejections, result.rejections
    return result.messages[0]


def duo_record(i: int, when: datetime, user: str = "alice") -> dict:
    return {"timestamp": int(when.timestamp()), "txid": f"tx{i}", "user": {"name": user},
            "access_device": {"browser": "Chrome", "os": "Windows", "location": {"city": "Austin"}},
            "auth_device": {"name": "phone"}, "result": "success", "reason": "user_approved"}


# ------------------------------------------------------------------------------- the parser
@pytest.mark.parametrize("payload", [
    b"[" * 2_000 + b"]" * 2_000,  # RecursionError in json.loads before
    b"[" * 200 + b"]" * 200,  # parses, but far deeper than any control message
    b'{"inputs": [' + b'{"a": ' * 70 + b"1" + b"}" * 70 + b"]}",
    b"[" * 500_000,  # unbalanced
    b"\xff\xfe\x00garbage",
    b'{"inputs": [{"tasks": [{"type": "load", "properties": {"files": ["x"]}}], "metadata": ' + b'[' * 90 + b']' * 90 + b'}]}',
])
def test_the_parser_never_raises_and_says_why(payload):
    result = parse_control_messages(payload, origin="evil.json")
    assert result.messages == [] and len(result.rejections) == 1
    rejection = result.rejections[0]
    assert rejection.message_id.startswith("evil.json") and rejection.reason
    json.dumps(rejection.model_dump(mode="json"))  # a dead letter can always be written
    assert rejection.raw is None or len(json.dumps(rejection.raw)) < 20_000


def test_oversize_documents_are_refused_before_reading(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:
        fh.truncate(MAX_DOCUMENT_BYTES + 1)
    (rejection,) = parse_control_messages(big).rejections
    assert "over the" in rejection.reason and "split it" in rejection.reason
    assert MAX_DEPTH >= 8  # the real format nests 6 levels


# ----------------------------------------------------------------------- input confinement
def test_files_outside_the_data_roots_are_refused_before_listing(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "ok.json").write_text("[]")
    roots = InputConfig(data_roots=[str(root)]).roots()
    for files in (["/etc/shadow"], ["/**/*.json"], [str(root / ".." / "*.json")], ["~/*.json"],
                  ["s3://other-bucket/logs/*.json"]):
        msg = parse_one(message(files))
        with pytest.raises(OutsideDataRoots) as err:
            plan_batches(msg, roots=roots)
        assert str(root) in err.value.reason and "input.data_roots" in err.value.reason
        assert err.value.field is not None and err.value.field.endswith("files")
    assert [r.url for r in expand_globs([str(root / "*.json")], roots=roots)] == [str(root / "ok.json")]


def test_a_symlink_inside_a_root_cannot_reach_outside(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "secret"
    root.mkdir(), outside.mkdir()
    (outside / "passwd.json").write_text('[{"a": 1}]')
    (root / "innocent.json").symlink_to(outside / "passwd.json")
    with pytest.raises(OutsideDataRoots, match="symbolic link"):
        expand_globs([str(root / "*.json")], roots=[str(root)])


def test_s3_prefixes_are_roots_only_when_configured():
    roots = InputConfig(data_roots=["s3://dfp-logs/duo/"]).roots()
    assert roots == ["s3://dfp-logs/duo"]
    from dfp_ray.pipeline.fsspec_loader import check_data_roots

    check_data_roots(["s3://dfp-logs/duo/2022/*.json"], roots)
    for bad in ("s3://dfp-logs/duo-other/*.json", "s3://dfp-logs/*.json", "/tmp/x.json"):
        with pytest.raises(OutsideDataRoots):
            check_data_roots([bad], roots)


@pytest.mark.parametrize("kwargs", [{"storage_options": {"anon": True}}, {"engine": "python"},
                                    {"memory_map": True}, {"iterator": True}, {"filepath_or_buffer": "/etc/shadow"}])
def test_parser_kwargs_outside_the_allow_list_reject_the_message(kwargs):
    result = parse_control_messages(json.dumps(message(["/d/*.csv"], parser_kwargs=kwargs)))
    (rejection,) = result.rejections
    assert rejection.field.endswith("parser_kwargs") and "not allowed" in rejection.reason
    assert "sep" in rejection.reason  # it lists what is allowed


def test_default_s3_calls_have_bounded_waits():
    options = storage_options_for("s3://b/k.json", {"client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}})
    config = options["config_kwargs"]
    assert config["connect_timeout"] <= 10 and config["read_timeout"] <= 60
    assert config["retries"]["max_attempts"] <= 3
    assert options["client_kwargs"] == {"endpoint_url": "http://127.0.0.1:1"}


# ------------------------------------------------------------- records and the time window
def test_rows_outside_the_window_and_malformed_records_are_dropped_and_counted(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    good = [duo_record(i, T0.replace(day=2 + i % 3)) for i in range(6)]
    odd = [duo_record(100, datetime(1970, 1, 1, tzinfo=timezone.utc)),
           duo_record(101, datetime(2100, 1, 1, tzinfo=timezone.utc)),
           {**duo_record(102, T0.replace(day=3)), "user": None},  # no user
           {**duo_record(103, T0.replace(day=3)), "timestamp": "not a time"}]
    (root / "DUO_2022-08-02T00_00_00Z.json").write_text(json.dumps(good + odd))
    cfg = DFPConfig(state_dir=str(tmp_path / "state"), input={"data_roots": [str(root)]})
    msg = parse_one(message([str(root / "*.json")], batching={"start_time": "2022-08-01", "end_time": "2022-08-31"}))
    (batch,) = plan_batches(msg, roots=cfg.input.roots())
    controller = UserController(cfg, load_schema("duo"))
    info, parts, whole = controller.load_for_owners(batch.files, None, {}, None, 1,
                                                    batching=msg.metadata.batching_options, keep_whole=True)
    assert info.rows == len(whole) == 6
    assert info.skipped[OUTSIDE_WINDOW] == 2
    assert sum(info.skipped.values()) == 4, info.skipped
    assert any("username" in reason for reason in info.skipped)
    assert whole["timestamp"].dt.year.eq(2022).all()


def test_a_file_without_a_date_in_its_name_is_split_by_its_rows_time(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    rows = [duo_record(i, T0.replace(day=1 + i)) for i in range(10)]  # Aug 1 .. Aug 10
    (root / "auth_export.json").write_text(json.dumps(rows))
    os.utime(root / "auth_export.json", (0, 0))  # an mtime (1970) far outside both windows
    cfg = DFPConfig(state_dir=str(tmp_path / "state"), input={"data_roots": [str(root)]})
    controller = UserController(cfg, load_schema("duo"))
    seen = []
    for window in ({"start_time": "2022-08-01", "end_time": "2022-08-07"},
                   {"start_time": "2022-08-08", "end_time": "2022-08-10"}):
        msg = parse_one(message([str(root / "*.json")], batching=window))
        (batch,) = plan_batches(msg, roots=cfg.input.roots())
        _, _, whole = controller.load_for_owners(batch.files, None, {}, None, 1,
                                                 batching=msg.metadata.batching_options, keep_whole=True)
        seen.append(sorted(whole["timestamp"].dt.day))
    assert seen == [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10]]


# -------------------------------------------------------------------------- output files
def scored(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"event_id": ids, "username": "alice", "mean_abs_z": 3.5})


def test_a_run_never_destroys_what_an_earlier_run_published(tmp_path):
    cfg = OutputConfig(directory=str(tmp_path / "out"))
    first = RunOutput(cfg, "duo", "20220801T000000Z-aaaaaa")
    first.detections.write(scored(["e1", "e2"]))
    published = Path(first.publish()["detections"])
    before = published.read_bytes()
    # a later run that is killed (or scores nothing) never publishes: the file is untouched
    second = RunOutput(cfg, "duo", "20220802T000000Z-bbbbbb")
    second.detections.write(scored(["e3"]))
    assert published.read_bytes() == before
    assert (tmp_path / "out" / "runs" / "20220802T000000Z-bbbbbb.partial" / published.name).exists()
    # a run that completes switches the published file atomically; the first run's file stays
    third = RunOutput(cfg, "duo", "20220803T000000Z-cccccc")
    third.detections.write(scored(["e4"]))
    third.publish()
    assert pd.read_csv(published)["event_id"].tolist() == ["e4"]
    assert pd.read_csv(tmp_path / "out" / "runs" / "20220801T000000Z-aaaaaa" / published.name)["event_id"].tolist() == [
        "e1", "e2"]


def test_output_files_are_private_and_symlinks_are_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "dfp_detections_duo.csv").symlink_to(victim)
    run = RunOutput(OutputConfig(directory=str(out)), "duo", "20220801T000000Z-aaaaaa")
    run.detections.write(scored(["e1"]))
    run.publish()
    assert victim.read_text() == "precious"  # the link was replaced, its target never written
    published = out / "dfp_detections_duo.csv"
    assert not published.is_symlink() and stat.S_IMODE(published.stat().st_mode) == 0o600
    # a symlink planted at a run file's path is refused
    trap = out / "runs" / "20220802T000000Z-bbbbbb.partial"
    trap.mkdir(parents=True)
    (trap / "dfp_detections_duo.csv").symlink_to(victim)
    with pytest.raises(OSError, match="symlink"):
        RunOutput(OutputConfig(directory=str(out)), "duo", "20220802T000000Z-bbbbbb").detections.write(scored(["x"]))
    assert victim.read_text() == "precious"


def test_a_retried_write_adds_no_duplicate_even_after_a_restart(tmp_path):
    path = tmp_path / "run" / "d.csv"
    first = TableWriter(str(path), "csv")
    assert first.write(scored(["e1", "e2"])) == 2
    assert first.write(scored(["e2", "e3"])) == 1
    again = TableWriter(str(path), "csv")  # a restarted sink picks the file up
    assert again.rows_written == 3 and again.write(scored(["e1", "e3", "e4"])) == 1
    assert pd.read_csv(path)["event_id"].tolist() == ["e1", "e2", "e3", "e4"]


def test_old_runs_are_pruned_beyond_keep_runs(tmp_path):
    cfg = OutputConfig(directory=str(tmp_path), keep_runs=2)
    for day in range(1, 5):
        run = RunOutput(cfg, "duo", f"202208{day:02d}T000000Z-aaaaaa")
        run.detections.write(scored([f"e{day}"]))
        run.publish()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["20220803T000000Z-aaaaaa", "20220804T000000Z-aaaaaa"]
