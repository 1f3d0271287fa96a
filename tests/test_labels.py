"""Analyst verdicts: the label task, the store, the CLI, and what retraining does with them.

The pipeline test runs real Ray, real sqlite MLflow and real files: detections are written,
an analyst marks one user's detections benign and one training event malicious, the user is
retrained on the same files, and the same events are scored again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dfp_ray.cli import main as cli_main
from dfp_ray.config import load_config
from dfp_ray.labels import LabelStore
from dfp_ray.messages import Verdict, parse_control_messages
from dfp_ray.runner import Pipeline, run
from dfp_ray.tools.datagen import DatagenConfig, generate

try:
    from tests.kafka_broker import kafka_broker, read_topic  # noqa: F401 - fixture
except ImportError:
    from kafka_broker import kafka_broker, read_topic  # noqa: F401 - fixture

SMALL_AE = {
    "autoencoder.encoder_layers": [64, 32], "autoencoder.decoder_layers": [64],
    "autoencoder.epochs": 12, "autoencoder.device": "cpu",
}


def label_doc(verdicts: list[dict]) -> dict:
    return {"inputs": [{"tasks": [{"type": "label", "properties": {"verdicts": verdicts}}]}]}


def test_label_messages_parse_and_bad_ones_say_why():
    ok = parse_control_messages(json.dumps(label_doc([
        {"event_id": "e1", "verdict": "Benign", "user": "alice", "note": "travelling"},
        {"event_id": "e2", "verdict": "malicious"}])), origin="labels.json")
    assert ok.ok and ok.messages[0].kind == "label" and ok.messages[0].files == []
    assert [(v.event_id, v.verdict) for v in ok.messages[0].verdicts] == [("e1", "benign"), ("e2", "malicious")]
    cases = {
        "mixed": {"tasks": [{"type": "label", "properties": {"verdicts": [{"event_id": "e", "verdict": "benign"}]}},
                            {"type": "training", "properties": {}}]},
        "verdict": label_doc([{"event_id": "e", "verdict": "fine"}])["inputs"][0],
        "twice": label_doc([{"event_id": "e", "verdict": "benign"}, {"event_id": "e", "verdict": "malicious"}])["inputs"][0],
        "empty": label_doc([])["inputs"][0],
        "users": {"tasks": [{"type": "load", "properties": {"files": ["x/*.json"]}},
                            {"type": "training", "properties": {"users": "alice"}}]},
    }
    reasons = {name: parse_control_messages(json.dumps(doc), origin=name).rejections[0].reason
               for name, doc in cases.items()}
    assert "only label tasks" in reasons["mixed"]
    assert "'benign' or 'malicious'" in reasons["verdict"]
    assert "two verdicts" in reasons["twice"]
    assert "at least 1" in reasons["empty"]
    assert "users must be a non-empty list" in reasons["users"]


def test_the_store_keeps_the_newest_verdict_and_a_redelivery_adds_nothing(tmp_path):
    store = LabelStore(tmp_path, "duo")
    rows = pd.DataFrame({"event_id": ["e1"], "username": ["alice"], "x": [1.0]})
    first = store.add("m1", [Verdict(event_id="e1", verdict="benign"), Verdict(event_id="e2", verdict="benign")], rows)
    assert (first.benign, first.rows_found, first.rows_missing) == (2, 1, ["e2"])
    assert store.add("m1", [Verdict(event_id="e1", verdict="benign"), Verdict(event_id="e2", verdict="benign")],
                     rows).unchanged == 2
    assert len(store.lines()) == 2
    assert store.benign_rows("username", "alice")["event_id"].tolist() == ["e1"]
    store.add("m2", [Verdict(event_id="e1", verdict="malicious", note="it was not travel")])
    assert store.malicious_keys() == {"e1"}
    assert store.benign_rows("username", "alice").empty  # the newest verdict is in force
    latest = store.latest().set_index("event_id")
    assert latest.loc["e1", "verdict"] == "malicious" and latest.loc["e1", "note"] == "it was not travel"


def test_cli_needs_an_action_and_a_topic(tmp_path, capsys):
    assert cli_main(["labels"]) == 2
    assert cli_main(["stream", "--state-dir", str(tmp_path)]) == 2
    assert "no input topic" in capsys.readouterr().err
    assert cli_main(["stream", "--input-topic", "bad topic!", "--state-dir", str(tmp_path)]) == 2
    assert "not a Kafka topic name" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("event_id,verdict\ne1,fine\n")
    assert cli_main(["labels", "add", "--state-dir", str(tmp_path), str(bad)]) == 1
    assert "'benign' or 'malicious'" in capsys.readouterr().err


@pytest.mark.kafka
def test_labels_add_sends_one_label_message_to_the_streams_topic(kafka_broker, tmp_path, capsys):
    verdicts = tmp_path / "v.csv"
    verdicts.write_text("event_id,note\ne1,travel\ne2,\n")
    assert cli_main(["labels", "add", "--bootstrap-servers", kafka_broker.bootstrap, "--topic", "ctl-labels",
                     "--verdict", "benign", "--user", "alice", str(verdicts)]) == 0
    assert "2 verdict(s) -> ctl-labels/0@0" in capsys.readouterr().out
    (record,) = read_topic(kafka_broker.bootstrap, "ctl-labels")
    (msg,) = parse_control_messages(record.value).messages
    assert msg.kind == "label"
    assert [(v.event_id, v.verdict, v.user, v.note) for v in msg.verdicts] == [
        ("e1", "benign", "alice", "travel"), ("e2", "benign", "alice", None)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    generate(DatagenConfig(out=str(out), sources=["duo"], users=6, train_days=5, infer_days=1,
                           events_per_user_per_day=8, seed=3), progress=False)
    return out


def make_cfg(tmp: Path, **extra):
    overrides = {"source": "duo", "state_dir": str(tmp / "state"), "output.directory": str(tmp / "out"),
                 "min_train_rows": 5, "ray.num_user_actors": 2, "ray.message_timeout_s": 300,
                 "ray.generic_threads_after_pool": 1, "input.data_roots": [str(tmp.parent)], **SMALL_AE}
    overrides.update(extra)
    return load_config(None, overrides)


def message(files: str, task: str, **properties) -> dict:
    return {"inputs": [{"tasks": [{"type": "load", "properties": {"files": [files]}},
                                  {"type": task, "properties": properties}],
                        "metadata": {"data_type": "payload",
                                     "file_to_df_options": {"parser_kwargs": {"lines": False, "orient": "records"}}}}]}


@pytest.mark.slow
def test_benign_verdicts_stop_the_same_events_being_flagged_after_retraining(ray_session, data, tmp_path, capsys):
    cfg = make_cfg(tmp_path)
    train_files, infer_files = str(data / "duo" / "training" / "*.json"), str(data / "duo" / "inference" / "*.json")
    docs = {name: tmp_path / f"{name}.json" for name in ("train", "infer")}
    docs["train"].write_text(json.dumps(message(train_files, "training")))
    docs["infer"].write_text(json.dumps(message(infer_files, "inference")))
    pipe = Pipeline(cfg)
    try:
        trained = run(cfg, [str(docs["train"])], pipeline=pipe, progress=False)
        before = {r.user: r.rows for d in trained.messages_detail for r in d.trained if not r.generic}
        first = run(cfg, [str(docs["infer"])], pipeline=pipe, progress=False)
        flagged = pd.read_csv(first.detections_path, dtype={"event_id": str})
        user = flagged["username"].value_counts().index[0]  # the user with the most detections
        events = flagged.loc[flagged["username"] == user, "event_id"].tolist()
        assert len(events) >= 3, flagged["username"].value_counts()
        # an analyst: all of them are benign; and one of another user's training events is malicious
        other = sorted(set(before) - {user})[0]
        bad_event = next(r["txid"] for p in sorted((data / "duo" / "training").glob("*.json"))
                         for r in json.loads(p.read_text()) if r["user"]["name"] == other)
        verdicts = tmp_path / "verdicts.csv"
        pd.DataFrame({"event_id": events, "verdict": "benign", "user": user}).to_csv(verdicts, index=False)
        assert cli_main(["labels", "add", "--state-dir", cfg.state_dir, "--set",
                         f"output.directory={cfg.output.directory}", str(verdicts)]) == 0
        assert f"{len(events)} benign ({len(events)} with their detection row)" in capsys.readouterr().out
        labels = tmp_path / "malicious.json"
        labels.write_text(json.dumps(label_doc([{"event_id": bad_event, "verdict": "malicious", "user": other}])))
        assert run(cfg, [str(labels)], pipeline=pipe, progress=False).ok  # a label message through the pipeline

        docs["retrain"] = tmp_path / "retrain.json"
        docs["retrain"].write_text(json.dumps(message(train_files, "training", users=[user, other])))
        retrained = run(cfg, [str(docs["retrain"])], pipeline=pipe, progress=False).messages_detail[0]
        after = {r.user: r.rows for r in retrained.trained}
        assert set(after) == {user, other}  # only the named users, no generic model
        assert after[user] == before[user] + len(events)  # the benign rows joined the user's data
        assert after[other] == before[other] - 1  # the malicious event left it
        second = run(cfg, [str(docs["infer"])], pipeline=pipe, progress=False)
    finally:
        pipe.shutdown()
    still = pd.read_csv(second.detections_path, dtype={"event_id": str})
    again = set(still["event_id"]) & set(events)
    assert len(again) <= len(events) // 4, (len(again), len(events))
    # listed by `dfp-ray labels list`
    assert cli_main(["labels", "list", "--state-dir", cfg.state_dir, "--format", "csv"]) == 0
    listed = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert len(listed) == len(events) + 1 and set(listed["verdict"]) == {"benign", "malicious"}
