"""The Ray pipeline end to end: real local Ray, real sqlite MLflow, real files.

One Ray session for the module. Data comes from `dfp-ray datagen` at a small size; the
autoencoder is shrunk so the module runs in well under a minute of training on 2 cores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from pipeline_helpers import SMALL_AE, small_config

from dfp_ray.cli import main as cli_main
from dfp_ray.pipeline.split_users import owner_index
from dfp_ray.registry import ModelRegistry, registered_model_name
from dfp_ray.registry.names import GENERIC_LABEL
from dfp_ray.runner import Pipeline, run
from dfp_ray.tools.datagen import DatagenConfig, generate


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    generate(DatagenConfig(out=str(out), sources=["duo"], users=6, train_days=5, infer_days=1,
                           events_per_user_per_day=6, seed=3))
    return out


make_cfg = small_config


@pytest.fixture(scope="module")
def trained(ray_session, data, tmp_path_factory):
    """Train once (generic + individual) and score once; tests read the results."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = make_cfg(tmp)
    pipe = Pipeline(cfg)
    msgs = data / "control_messages"
    train = run(cfg, [str(msgs / "duo_payload_training.json")], pipeline=pipe, progress=False)
    infer = run(cfg, [str(msgs / "duo_payload_inference.json")], pipeline=pipe, progress=False)
    pipe.shutdown()
    return cfg, train, infer


def test_training_registers_one_model_per_user_plus_generic(trained, data):
    cfg, train, _ = trained
    assert train.ok, train.rejections
    users = set(pd.read_csv(data / "duo" / "ground_truth.csv")["username"]) | {GENERIC_LABEL}
    registry = ModelRegistry.from_config(cfg)
    trained = [r for d in train.messages_detail for r in d.trained]
    assert users <= {r.user for r in trained}
    assert train.users_trained == len(trained) == 7  # 6 users + generic
    assert [r.user for r in trained if r.generic] == [GENERIC_LABEL]
    for r in trained:
        user = None if r.generic else r.user
        ref = registry.latest("duo", user)
        assert ref is not None and ref.name == registered_model_name("duo", user)
        assert ref.version == "1"


def test_inference_writes_detections_with_reference_columns(trained):
    cfg, _, infer = trained
    assert infer.ok and infer.rows_scored > 0
    scores = pd.read_csv(infer.scores_path, dtype={"event_id": str})
    detections = pd.read_csv(infer.detections_path, dtype={"event_id": str})
    assert len(scores) == infer.rows_scored
    assert len(detections) == infer.detections == int((scores["anomaly_score"] > 1.0).sum())  # the calibrated rule
    for f in ["accessdevicebrowser", "accessdeviceos", "authdevicename", "reason", "result",
              "locincrement", "logcount"]:
        for suffix in ("_loss", "_z_loss", "_pred"):
            assert f + suffix in scores.columns
    for col in ["max_abs_z", "mean_abs_z", "event_time", "model_version", "event_id", "username", "timestamp"]:
        assert col in scores.columns
    assert scores["event_id"].notna().all() and scores["event_id"].is_unique
    assert scores["event_time"].str.endswith("Z").all()
    # Every user had a model of its own: the output says which model scored each row.
    expected = scores["username"].map(lambda u: registered_model_name("duo", u) + ":1")
    assert (scores["model_version"] == expected).all()
    # Each detection names its incident; an incident starts at a detection of its own user
    assert detections["incident_rank"].ge(1).all() and detections["incident_id"].notna().all()
    first = detections[detections["incident_rank"] == 1]
    assert (first["incident_id"] == first["event_id"]).all()
    starts = detections.set_index("event_id")["username"]
    assert (detections["incident_id"].map(starts) == detections["username"]).all()
    assert scores.loc[scores["anomaly_score"] <= 1.0, "incident_id"].isna().all()


def test_each_users_rows_went_to_one_actor(trained):
    _, train, infer = trained
    for detail in train.messages_detail + infer.messages_detail:
        for r in detail.trained + detail.inferred:
            if getattr(r, "generic", False):  # trained on an actor of its own, beside the pool of 2
                assert r.worker == 2
                continue
            assert r.worker == owner_index(r.user, 2)


def test_parallel_loading_and_detections_only_output_match_the_reference_run(trained, data, tmp_path):
    """Files parsed on the actors in chunks, or by the router alone, score the same rows; without
    --write-all-scores only detections travel to the sink and they are the same detections."""
    cfg, _, reference = trained
    msgs = data / "control_messages"
    # what a driver observed/expected is text (a category) or a number: read it as text in every file
    text = {"event_id": str, **{f"driver_{i}_{k}": str for i in (1, 2, 3) for k in ("value", "expected")},
            "incident_id": str, "incident_rank": "Int64"}  # empty on the scores file's other rows
    ref_scores = pd.read_csv(reference.scores_path, dtype=text).drop(columns="event_time")
    variants = ({"ray.load_parallelism": 1}, {"ray.load_chunk_files": 1, "output.write_all_scores": False})
    for i, extra in enumerate(variants):
        again = make_cfg(tmp_path, state_dir=cfg.state_dir, **{"output.directory": str(tmp_path / f"out{i}"), **extra})
        summary = run(again, [str(msgs / "duo_payload_inference.json")], progress=False)
        assert summary.ok and summary.rows_scored == reference.rows_scored
        assert summary.messages_detail[0].stage_seconds.load > 0
        detections = pd.read_csv(summary.detections_path, dtype=text).drop(columns="event_time")
        expected = ref_scores[ref_scores["anomaly_score"] > 1.0]
        assert summary.detections == len(expected) == len(detections)
        pd.testing.assert_frame_equal(
            detections.sort_values("event_id").reset_index(drop=True),
            expected.sort_values("event_id").reset_index(drop=True),
        )
        if again.output.write_all_scores:
            scores = pd.read_csv(summary.scores_path, dtype=text).drop(columns="event_time")
            pd.testing.assert_frame_equal(scores.sort_values("event_id").reset_index(drop=True),
                                          ref_scores.sort_values("event_id").reset_index(drop=True))
        else:
            assert summary.scores_path is None


def test_inference_falls_back_to_generic_model(ray_session, data, tmp_path):
    cfg = make_cfg(tmp_path, train_users="generic")
    pipe = Pipeline(cfg)
    msgs = data / "control_messages"
    run(cfg, [str(msgs / "duo_payload_training.json")], pipeline=pipe, progress=False)
    infer = run(cfg, [str(msgs / "duo_payload_inference.json")], pipeline=pipe, progress=False)
    pipe.shutdown()
    scores = pd.read_csv(infer.scores_path)
    assert len(scores) > 0
    assert set(scores["model_version"]) == {registered_model_name("duo", None) + ":1"}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_generic_fit_widens_to_the_pools_cpus_once_the_pool_is_done(ray_session, data, tmp_path):
    """train_users=generic: the pool has no users, so the generic model's fit gets the pool's
    two CPUs from its next epoch (two threads), and the message says when."""
    cfg = make_cfg(tmp_path, train_users="generic",  # a fit long enough to widen: no early stop
                   **{"autoencoder.epochs": 300, "autoencoder.early_stopping_patience": 0})
    pipe = Pipeline(cfg)
    try:
        train = run(cfg, [str(data / "control_messages" / "duo_payload_training.json")], pipeline=pipe,
                    progress=False)
    finally:
        pipe.shutdown()
    detail = train.messages_detail[0]
    (generic,) = detail.trained
    assert generic.generic and generic.user == GENERIC_LABEL and generic.epochs_run == 300
    assert detail.generic_widened_at_s is not None
    assert detail.generic_widened_threads == 2, detail
    assert generic.fit_threads == 2, (detail.generic_widened_at_s, generic)


def test_widen_requests_apply_to_their_own_fit_only(data, tmp_path):
    from dfp_ray.controllers.user import UserController
    from dfp_ray.pipeline.file_to_df import load_files
    from dfp_ray.schemas import load_schema, map_fields

    schema = load_schema("duo")
    worker = UserController(make_cfg(tmp_path), schema, threads=1)
    cpus = len(os.sched_getaffinity(0))
    assert worker.widen_fit(10_000, "a") == cpus  # capped by this process's CPUs
    assert worker.widen_fit(0, "b") == 1
    files = sorted(str(p) for p in (data / "duo" / "training").glob("*.json"))
    frame, _ = map_fields(load_files(files).frame, schema)
    # asked before its call began (Ray may run the request first): applies from the start
    worker.widen_fit(2, "x")
    assert worker.train("someone", frame, fit_id="x").fit_threads == min(2, cpus)
    # a late request for a fit that ended is ignored and never widens the next one
    assert worker.widen_fit(2, "x") == 0
    assert worker.train("someone", frame, fit_id="y").fit_threads == 1


def test_bad_messages_go_to_dead_letters_and_the_rest_runs(ray_session, data, tmp_path):
    msgs = data / "control_messages"
    good = json.loads((msgs / "duo_payload_training.json").read_text())["inputs"]
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "DUO_2022-08-01T00_00_00.000Z.json").write_text('[{"timestamp": 1, "user": ')  # truncated upload
    bad_file = tmp_path / "mixed.json"
    bad_file.write_text(json.dumps({"inputs": [
        {"tasks": [{"type": "load", "properties": {"loader_id": "fsspec", "files": [str(corrupt / "*.json")]}},
                   {"type": "training", "properties": {}}], "metadata": {"data_type": "payload"}},
        {"tasks": [{"type": "load", "properties": {"loader_id": "fsspec", "files": [str(tmp_path / "nope/*.json")]}},
                   {"type": "training", "properties": {}}], "metadata": {"data_type": "payload"}},
        {"tasks": [{"type": "trainig", "properties": {}}], "metadata": {"data_type": "payload"}},
        *good,
    ]}))
    state = tmp_path / "state"
    args = ["run", "--input-file", str(bad_file), "--state-dir", str(state), "--output", str(tmp_path / "out"),
            "--num-actors", "2", "--no-progress", "--set", "min_train_rows=5", "--data-root", str(tmp_path.parent)]
    for key, value in SMALL_AE.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    rc = cli_main(args)
    assert rc == 1  # rejected messages make the exit code non-zero ...
    dead = [json.loads(line) for line in (state / "dead_letters_duo.jsonl").read_text().splitlines()]
    assert len(dead) == 3
    reasons = " | ".join(d["reason"] for d in dead)
    assert "no files matched" in reasons and "trainig" in reasons
    assert "unreadable file(s)" in reasons and "DUO_2022-08-01T00_00_00.000Z.json" in reasons
    assert all(d["message_id"].startswith("mixed.json") for d in dead)
    # ... but the good message still trained its models.
    cfg = make_cfg(tmp_path)
    assert ModelRegistry.from_config(cfg).latest("duo", None) is not None


def test_invalid_config_names_file_and_field(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("source: duo\nautoencoder:\n  epochz: 3\n")
    rc = cli_main(["run", "--config", str(cfg), "--input-file", "x.json"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "autoencoder.epochz" in err and "unknown key" in err


def test_streaming_training_goes_through_the_rolling_window(ray_session, data, tmp_path):
    # Daily batches of ~6 rows per user: a model is due once 20 rows (and 20 new ones) arrived.
    cfg = make_cfg(tmp_path, **{"window.min_history": 20, "window.min_increment": 20})
    summary = run(cfg, [str(data / "control_messages" / "duo_streaming_training.json")], progress=False)
    assert summary.ok, summary.rejections
    detail = summary.messages_detail[0]
    trained = detail.trained
    assert trained, "some users reach the window thresholds"
    assert all(r.rows >= 20 for r in trained)
    # Users are not retrained on every daily batch: most batches only fill the window.
    assert any("rolling window holds" in r.reason for r in detail.skipped_users)
    windows = list((tmp_path / "state" / "windows" / "duo").glob("*.parquet"))
    assert len(windows) == 7  # 6 users + generic, checkpointed for a restart
    registry = ModelRegistry.from_config(cfg)
    for r in trained:
        assert registry.latest("duo", None if r.generic else r.user) is not None


@pytest.mark.s3
def test_s3_globs_load_like_local_files(ray_session, data, tmp_path):
    import s3fs

    from tests.s3_server import running_s3_server, s3_storage_options

    with running_s3_server() as endpoint:
        opts = s3_storage_options(endpoint)
        fs = s3fs.S3FileSystem(**opts)
        fs.mkdir("dfp-logs")
        fs.put(str(data / "duo" / "training") + "/", "dfp-logs/duo/training/", recursive=True)
        message = tmp_path / "s3_training.json"
        message.write_text(json.dumps({"inputs": [{
            "tasks": [{"type": "load", "properties": {"loader_id": "fsspec",
                                                      "files": ["s3://dfp-logs/duo/training/*.json"]}},
                      {"type": "training", "properties": {}}],
            "metadata": {"data_type": "payload"},
        }]}))
        cfg = make_cfg(tmp_path, storage_options=opts, train_users="generic",
                       **{"input.data_roots": [str(tmp_path), "s3://dfp-logs"]})
        summary = run(cfg, [str(message)], progress=False)
    assert summary.ok, summary.rejections
    local_files = list((data / "duo" / "training").glob("*.json"))
    assert summary.files == len(local_files)
    local_rows = sum(len(json.loads(p.read_text())) for p in local_files)
    assert summary.rows == local_rows
    assert ModelRegistry.from_config(cfg).latest("duo", None) is not None


def test_inference_without_any_model_reports_users_and_keeps_going(ray_session, data, tmp_path):
    cfg = make_cfg(tmp_path, train_users="generic")
    msgs = data / "control_messages"
    pipe = Pipeline(cfg)
    summary = run(cfg, [str(msgs / "duo_payload_inference.json")], pipeline=pipe, progress=False)
    assert summary.ok  # the message itself was fine
    assert summary.users_scored == 0 and summary.users_without_model == 6
    assert "no model registered for user" in summary.messages_detail[0].errors[0]
    assert summary.messages_detail[0].errors[0].startswith("NoModelError")
    assert "users without a model" in summary.table()
    # Every actor now caches "no model"; a generic training must make the fallback visible at once,
    # not after mlflow.refresh_seconds.
    run(cfg, [str(msgs / "duo_payload_training.json")], pipeline=pipe, progress=False)
    again = run(cfg, [str(msgs / "duo_payload_inference.json")], pipeline=pipe, progress=False)
    pipe.shutdown()
    assert again.users_without_model == 0 and again.users_scored == 6



def test_loaded_batches_are_cached_and_a_changed_file_is_reread(ray_session, data, tmp_path):
    import shutil

    local = tmp_path / "data"
    shutil.copytree(data / "duo" / "inference", local)
    message = tmp_path / "m.json"
    message.write_text(json.dumps({"inputs": [{
        "tasks": [{"type": "load", "properties": {"loader_id": "fsspec", "files": [str(local / "*.json")]}},
                  {"type": "training", "properties": {}}],
        "metadata": {"data_type": "payload"},
    }]}))
    cfg = make_cfg(tmp_path, train_users="generic")
    pipe = Pipeline(cfg)
    first = run(cfg, [str(message)], pipeline=pipe, progress=False).messages_detail[0]
    second = run(cfg, [str(message)], pipeline=pipe, progress=False).messages_detail[0]
    victim = sorted(local.glob("*.json"))[0]
    records = json.loads(victim.read_text())
    victim.write_text(json.dumps(records[:1]))  # a changed file (size and mtime) must be re-read
    third = run(cfg, [str(message)], pipeline=pipe, progress=False).messages_detail[0]
    pipe.shutdown()
    assert first.files_from_cache == 0
    assert second.files_from_cache == second.files == first.files
    assert second.rows == first.rows
    assert third.files_from_cache == 0
    assert third.rows == first.rows - (len(records) - 1)
