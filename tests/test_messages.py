"""Control messages: every Morpheus example shape parses; every kind of bad message is rejected
with the message id, the field and a reason; rejections land in the dead-letter file."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from dfp_ray.messages import (
    BatchingOptions,
    ControlMessage,
    DeadLetterWriter,
    FileToDfOptions,
    InferenceTask,
    LoadTask,
    Rejection,
    TaskType,
    TrainingTask,
    parse_control_messages,
    parse_period,
)
from dfp_ray.pipeline.control_message_filter import filter_messages

# ---------------------------------------------------------------------------------------------
# Morpheus's example message shapes (written as Morpheus's files are: tabs, "properties": {})
# ---------------------------------------------------------------------------------------------

RECORDS = {"parser_kwargs": {"lines": False, "orient": "records"}}


def load(glob: str) -> dict:
    return {"type": "load", "properties": {"loader_id": "fsspec", "files": [glob]}}


def msg(task: str | None, glob: str, metadata: dict) -> dict:
    tasks = [load(glob)] + ([{"type": task, "properties": {}}] if task else [])
    return {"tasks": tasks, "metadata": metadata}


TRAIN = "../../../data/dfp/duo-training-data/*.json"
INFER = "../../../data/dfp/duo-inference-data/*.json"

MORPHEUS_SHAPES = {
    "duo_payload_training.json": {"inputs": [msg("training", TRAIN, {"data_type": "payload"})]},
    "duo_payload_inference.json": {"inputs": [msg("inference", INFER, {"data_type": "payload"})]},
    "duo_payload_only_load.json": {"inputs": [msg(None, INFER, {"data_type": "payload"})]},
    "duo_payload_load_train_inference.json": {
        "inputs": [msg("training", TRAIN, {"data_type": "payload"}), msg("inference", INFER, {"data_type": "payload"})]
    },
    "duo_payload_lti.json": {
        "inputs": [
            msg("training", TRAIN, {
                "data_type": "payload",
                "batching_options": {"period": "M", "start_time": "2022-08-01", "end_time": "2022-08-31"},
                "file_to_df_options": RECORDS,
            }),
            msg("inference", INFER, {
                "data_type": "payload",
                "batching_options": {"period": "T", "start_time": "2022-08-01", "end_time": "2022-08-31"},
                "file_to_df_options": RECORDS,
            }),
        ]
    },
    "duo_streaming_training.json": {"inputs": [msg("training", TRAIN, {"data_type": "streaming"})]},
    "duo_streaming_inference.json": {"inputs": [msg("inference", INFER, {"data_type": "streaming"})]},
    "duo_streaming_only_load.json": {"inputs": [msg(None, TRAIN, {"data_type": "streaming"})]},
    "azure_streaming_lti.json": {
        "inputs": [
            msg("training", TRAIN.replace("duo", "azure"), {
                "data_type": "streaming",
                "batching_options": {"period": "W", "start_time": "2022-08-01", "end_time": "2022-08-31"},
                "file_to_df_options": RECORDS,
            }),
            msg("inference", INFER.replace("duo", "azure"), {
                "data_type": "streaming",
                "batching_options": {"period": "H", "start_time": "2022-08-01", "end_time": "2022-08-31"},
                "file_to_df_options": RECORDS,
            }),
        ]
    },
    "duo_streaming_payload.json": {
        "inputs": [msg("training", TRAIN, {"data_type": "streaming"}), msg("inference", INFER, {"data_type": "payload"})]
    },
    "azure_payload_lti_s3.json": {
        "inputs": [
            msg("training", "s3://dfp-examples/azure-training-data/AZUREAD_2022*.json", {
                "data_type": "payload",
                "batching_options": {"period": "D", "start_time": "2022-08-01", "end_time": "2022-08-31"},
                "file_to_df_options": RECORDS,
            }),
            msg("inference", "s3://dfp-examples/azure-inference-data/*.json", {
                "data_type": "payload",
                "batching_options": {"period": "D", "start_time": "2022-08-01", "end_time": "2022-08-31"},
                "file_to_df_options": RECORDS,
            }),
        ]
    },
}

EXPECTED_KINDS = {
    "duo_payload_training.json": [("training", "payload")],
    "duo_payload_inference.json": [("inference", "payload")],
    "duo_payload_only_load.json": [("load_only", "payload")],
    "duo_payload_load_train_inference.json": [("training", "payload"), ("inference", "payload")],
    "duo_payload_lti.json": [("training", "payload"), ("inference", "payload")],
    "duo_streaming_training.json": [("training", "streaming")],
    "duo_streaming_inference.json": [("inference", "streaming")],
    "duo_streaming_only_load.json": [("load_only", "streaming")],
    "azure_streaming_lti.json": [("training", "streaming"), ("inference", "streaming")],
    "duo_streaming_payload.json": [("training", "streaming"), ("inference", "payload")],
    "azure_payload_lti_s3.json": [("training", "payload"), ("inference", "payload")],
}


def write_morpheus_style(path: Path, document: dict) -> None:
    """Tab-indented like Morpheus's files, so whitespace handling is exercised too."""
    path.write_text(json.dumps(document, indent="\t") + "\n", encoding="utf-8")


@pytest.mark.parametrize("name", sorted(MORPHEUS_SHAPES))
def test_every_morpheus_example_shape_parses(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write_morpheus_style(path, MORPHEUS_SHAPES[name])

    result = parse_control_messages(path)

    assert result.rejections == []
    assert [(m.kind, m.data_type) for m in result.messages] == EXPECTED_KINDS[name]
    assert [m.message_id for m in result.messages] == [f"{name}#inputs[{i}]" for i in range(len(EXPECTED_KINDS[name]))]
    for message, raw in zip(result.messages, MORPHEUS_SHAPES[name]["inputs"], strict=True):
        assert message.files == raw["tasks"][0]["properties"]["files"]
        assert isinstance(message.tasks[0], LoadTask)
        assert message.tasks[0].properties.loader_id == "fsspec"


def test_batching_and_parser_options_are_read_with_their_values(tmp_path: Path) -> None:
    path = tmp_path / "duo_payload_lti.json"
    write_morpheus_style(path, MORPHEUS_SHAPES["duo_payload_lti.json"])
    training, inference = parse_control_messages(path).messages

    opts = training.metadata.batching_options
    assert opts.period == "M" and parse_period(opts.period).unit == "M"
    assert opts.start_time == date(2022, 8, 1) and opts.end_time == date(2022, 8, 31)
    assert opts.window_start() == datetime(2022, 8, 1, tzinfo=timezone.utc)
    assert opts.window_end_inclusive() == datetime(2022, 8, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)
    assert inference.metadata.batching_options.period == "T"
    assert parse_period("T").unit == "min"
    assert training.metadata.file_to_df_options.parser_kwargs == {"lines": False, "orient": "records"}
    assert training.metadata.file_to_df_options.file_type == "auto"
    assert isinstance(training.tasks[1], TrainingTask) and isinstance(inference.tasks[1], InferenceTask)
    assert training.tasks[1].type is TaskType.TRAINING


def test_s3_globs_are_kept_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "azure_payload_lti_s3.json"
    write_morpheus_style(path, MORPHEUS_SHAPES["azure_payload_lti_s3.json"])
    training, inference = parse_control_messages(path).messages
    assert training.files == ["s3://dfp-examples/azure-training-data/AZUREAD_2022*.json"]
    assert inference.files == ["s3://dfp-examples/azure-inference-data/*.json"]


def test_json_lines_csv_and_parquet_parser_options() -> None:
    doc = {
        "inputs": [
            msg("training", "a/*.jsonl", {"file_to_df_options": {"parser_kwargs": {"lines": True}}}),
            msg("training", "a/*.csv", {"file_to_df_options": {"file_type": "CSV", "parser_kwargs": {"sep": ";", "dtype": {"a": "str"}}}}),
            msg("training", "a/*.parquet", {"file_to_df_options": {"file_type": "parquet", "parser_kwargs": {"columns": ["a", "b"]}}}),
        ]
    }
    result = parse_control_messages(json.dumps(doc))
    assert result.rejections == []
    jsonl, csv, parquet = (m.metadata.file_to_df_options for m in result.messages)
    assert jsonl.parser_kwargs == {"lines": True}
    assert (csv.file_type, csv.parser_kwargs["sep"]) == ("csv", ";")
    assert (parquet.file_type, parquet.parser_kwargs["columns"]) == ("parquet", ["a", "b"])


def test_single_message_object_list_and_kafka_bytes() -> None:
    single = msg("inference", "x/*.json", {"data_type": "streaming"})
    from_text = parse_control_messages(json.dumps(single), origin="kafka:dfp-control/0@17")
    assert [m.message_id for m in from_text.messages] == ["kafka:dfp-control/0@17"]

    from_bytes = parse_control_messages(json.dumps(single).encode(), origin="kafka:dfp-control/0@18")
    assert from_bytes.messages[0].kind == "inference" and from_bytes.messages[0].data_type == "streaming"

    as_list = parse_control_messages(json.dumps([single, single]))
    assert [m.message_id for m in as_list.messages] == ["message#[0]", "message#[1]"]

    with_bom = parse_control_messages(b"\xef\xbb\xbf" + json.dumps({"inputs": [single]}).encode())
    assert len(with_bom.messages) == 1


def test_defaults_and_unknown_metadata_kept_in_extra() -> None:
    raw = {"tasks": [load("x/*.json"), {"type": "training"}], "metadata": {"owner": "secops", "priority": 3}}
    (message,) = parse_control_messages(json.dumps(raw)).messages
    assert message.metadata.data_type == "payload"
    assert message.metadata.batching_options is None
    assert message.metadata.extra == {"owner": "secops", "priority": 3}
    assert message.task_properties() == {}
    no_metadata = parse_control_messages(json.dumps({"tasks": [load("x/*.json")]})).messages[0]
    assert no_metadata.kind == "load_only" and no_metadata.metadata.data_type == "payload"


def test_files_of_several_load_tasks_are_merged_in_order_without_duplicates() -> None:
    raw = {
        "tasks": [
            {"type": "load", "properties": {"files": ["a/*.json", "b/*.json"]}},
            {"type": "load", "properties": {"files": ["b/*.json", "c/*.json"]}},
            {"type": "inference", "properties": {"only_users": ["alice"]}},
        ]
    }
    (message,) = parse_control_messages(json.dumps(raw)).messages
    assert message.files == ["a/*.json", "b/*.json", "c/*.json"]
    assert message.task_properties() == {"only_users": ["alice"]}


def test_sampling_variants_and_deprecated_sampling_rate_s() -> None:
    assert BatchingOptions(sampling="12H").sampling == "12H"
    assert BatchingOptions(sampling=0.25).sampling == 0.25
    assert BatchingOptions(sampling=10).sampling == 10
    assert BatchingOptions(sampling=10.0).sampling == 10 and isinstance(BatchingOptions(sampling=10.0).sampling, int)
    assert BatchingOptions(sampling_rate_s=600).sampling == "600s"
    for bad in (0, -1, 1.5, True, "12X"):
        with pytest.raises(ValueError):
            BatchingOptions(sampling=bad)
    with pytest.raises(ValueError, match="either sampling or sampling_rate_s"):
        BatchingOptions(sampling="1h", sampling_rate_s=60)


@pytest.mark.parametrize(
    ("alias", "n", "unit"),
    [("D", 1, "D"), ("12H", 12, "h"), ("12h", 12, "h"), ("15T", 15, "min"), ("15min", 15, "min"),
     ("W", 1, "W"), ("M", 1, "M"), ("ME", 1, "M"), ("Y", 1, "Y"), ("30s", 30, "s"), ("2D", 2, "D")],
)
def test_period_aliases(alias: str, n: int, unit: str) -> None:
    spec = parse_period(alias)
    assert (spec.n, spec.unit) == (n, unit)


def test_week_anchor() -> None:
    assert parse_period("W-MON").week_end == 0
    assert parse_period("W").week_end == 6
    with pytest.raises(ValueError):
        parse_period("D-MON")


def test_naive_datetimes_are_utc_and_aware_ones_converted() -> None:
    opts = BatchingOptions(start_time="2022-08-01T10:00:00", end_time="2022-08-02T12:00:00+02:00")
    assert opts.window_start() == datetime(2022, 8, 1, 10, tzinfo=timezone.utc)
    assert opts.window_end_inclusive() == datetime(2022, 8, 2, 10, tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------------
# Rejections
# ---------------------------------------------------------------------------------------------


def rejected(document: object, origin: str = "doc.json") -> list[Rejection]:
    text = document if isinstance(document, str) else json.dumps(document)
    return parse_control_messages(text, origin=origin).rejections


def test_unknown_task_type_names_message_field_and_expected_values() -> None:
    good = msg("training", "a/*.json", {})
    bad = {"tasks": [load("a/*.json"), {"type": "trainig", "properties": {}}], "metadata": {}}
    result = parse_control_messages(json.dumps({"inputs": [good, good, bad]}), origin="duo_payload_lti.json")

    assert len(result.messages) == 2  # the other messages still run
    (rejection,) = result.rejections
    assert rejection.message_id == "duo_payload_lti.json#inputs[2]"
    assert rejection.field == "inputs[2].tasks[1].type"
    assert rejection.reason == "unknown task type 'trainig' (expected load, training, inference, label)"
    assert str(rejection) == (
        "duo_payload_lti.json#inputs[2]: inputs[2].tasks[1].type: "
        "unknown task type 'trainig' (expected load, training, inference, label)"
    )
    assert rejection.raw == bad
    assert rejection.at.tzinfo is not None


def test_task_without_type() -> None:
    (r,) = rejected({"inputs": [{"tasks": [load("a"), {"properties": {}}]}]})
    assert r.field == "inputs[0].tasks[1].type" and "has no 'type'" in r.reason


def test_bad_json_is_one_rejection_with_line_and_column() -> None:
    text = '{"inputs": [\n  {"tasks": [\n    {"type": "load",, "properties": {}}\n  ]}\n]}'
    (r,) = rejected(text, origin="broken.json")
    assert r.message_id == "broken.json" and r.field is None
    assert r.reason.startswith("invalid JSON at line 3 column 21:")
    assert r.raw == text


def test_training_and_inference_in_one_message() -> None:
    (r,) = rejected({"inputs": [{"tasks": [load("a"), {"type": "training"}, {"type": "inference"}]}]})
    assert r.field == "inputs[0].tasks"
    assert "must not mix training and inference" in r.reason
    assert "training at tasks[1], inference at tasks[2]" in r.reason


def test_no_load_task() -> None:
    (r,) = rejected({"inputs": [{"tasks": [{"type": "training", "properties": {}}], "metadata": {"data_type": "payload"}}]})
    assert r.field == "inputs[0].tasks" and r.reason.startswith("no load task")


def test_load_task_without_files_or_with_empty_ones() -> None:
    (r,) = rejected({"inputs": [{"tasks": [{"type": "load", "properties": {"loader_id": "fsspec"}}]}]})
    assert (r.field, r.reason) == ("inputs[0].tasks[0].properties.files", "Field required")
    (r,) = rejected({"inputs": [{"tasks": [{"type": "load", "properties": {"files": []}}]}]})
    assert r.field == "inputs[0].tasks[0].properties.files" and r.reason.startswith("no files")
    (r,) = rejected({"inputs": [{"tasks": [{"type": "load", "properties": {"files": ["a", " "]}}]}]})
    assert "files[1] is empty" in r.reason


def test_no_tasks() -> None:
    (r,) = rejected({"inputs": [{"tasks": [], "metadata": {}}]})
    assert r.field == "inputs[0].tasks" and "at least 1" in r.reason


@pytest.mark.parametrize(
    ("metadata", "field", "needle"),
    [
        ({"data_type": "stream"}, "inputs[0].metadata.data_type", "'payload' or 'streaming'"),
        ({"batching_options": {"peroid": "D"}}, "inputs[0].metadata.batching_options.peroid", "unknown field"),
        ({"batching_options": {"period": "Q"}}, "inputs[0].metadata.batching_options.period", "unknown period 'Q'"),
        ({"batching_options": {"start_time": "01/08/2022"}}, "inputs[0].metadata.batching_options.start_time", "not a date"),
        ({"batching_options": {"start_time": "2022-09-01", "end_time": "2022-08-01"}}, "inputs[0].metadata.batching_options", "after end_time"),
        ({"batching_options": {"sampling": 2.5}}, "inputs[0].metadata.batching_options.sampling", "whole number"),
        ({"batching_options": {"iso_date_regex_pattern": "(\\d{4})"}}, "inputs[0].metadata.batching_options.iso_date_regex_pattern", "named groups"),
        ({"file_to_df_options": {"parser_kwargs": {"line": True}}}, "inputs[0].metadata.file_to_df_options.parser_kwargs", "['line']"),
        ({"file_to_df_options": {"file_type": "json", "parser_kwargs": {"sep": ","}}}, "inputs[0].metadata.file_to_df_options.parser_kwargs", "json reader"),
        ({"file_to_df_options": {"parser_kwargs": {"lines": "yes"}}}, "inputs[0].metadata.file_to_df_options.parser_kwargs", "true or false"),
        ({"file_to_df_options": {"file_type": "xml"}}, "inputs[0].metadata.file_to_df_options.file_type", "'auto'"),
    ],
)
def test_bad_metadata_names_the_field(metadata: dict, field: str, needle: str) -> None:
    (r,) = rejected({"inputs": [{"tasks": [load("a/*.json")], "metadata": metadata}]})
    assert r.field == field
    assert needle in r.reason
    assert r.message_id == "doc.json#inputs[0]"


def test_several_problems_in_one_message_are_all_reported() -> None:
    bad = {"tasks": [{"type": "load", "properties": {"files": []}}], "metadata": {"data_type": "x", "batching_options": {"period": "Q"}}}
    (r,) = rejected({"inputs": [bad]})
    assert r.reason.startswith("3 problems: ")
    for field in ("inputs[0].tasks[0].properties.files", "inputs[0].metadata.data_type", "inputs[0].metadata.batching_options.period"):
        assert f"{field}: " in r.reason
    assert str(r).count("inputs[0].metadata.data_type") == 1


@pytest.mark.parametrize(
    ("document", "field", "needle"),
    [
        ({"inputs": {}}, "inputs", "must be a list"),
        ({"inputs": []}, "inputs", "is empty"),
        ({"inputs": [msg("training", "a", {})], "version": 2}, "version", "unknown top-level"),
        ({"hello": 1}, None, "not a control-message document"),
        ([], None, "empty list"),
        (b"42", None, "not a control-message document"),
    ],
)
def test_bad_documents(document: object, field: str | None, needle: str) -> None:
    if isinstance(document, bytes):
        (r,) = parse_control_messages(document, origin="doc.json").rejections
    else:
        (r,) = rejected(document)
    assert r.message_id == "doc.json" and r.field == field and needle in r.reason


def test_non_object_message_and_user_message_id() -> None:
    r1, r2 = rejected({"inputs": ["load everything", {**msg("training", "a", {}), "message_id": "mine"}]})
    assert r1.message_id == "doc.json#inputs[0]" and "must be a JSON object" in r1.reason
    assert r2.field == "inputs[1].message_id"
    (r3,) = rejected({"inputs": [{**msg("training", "a", {}), "priority": 1}]})
    assert r3.field == "inputs[0].priority" and "unknown field" in r3.reason


def test_unreadable_sources(tmp_path: Path) -> None:
    missing = parse_control_messages(tmp_path / "nope.json")
    assert missing.rejections[0].message_id == "nope.json" and "does not exist" in missing.rejections[0].reason
    not_utf8 = parse_control_messages(b"\xff\xfe{", origin="kafka:t/0@1")
    assert not_utf8.rejections[0].message_id == "kafka:t/0@1" and "not UTF-8" in not_utf8.rejections[0].reason
    (tmp_path / "bin.json").write_bytes(b"\x80\x81")
    assert "cannot read" in parse_control_messages(tmp_path / "bin.json").rejections[0].reason


def test_rejection_for_a_message_that_failed_later() -> None:
    (message,) = parse_control_messages(json.dumps({"inputs": [msg("training", "a/*.json", {})]}), origin="f.json").messages
    assert message.files_field() == "inputs[0].tasks[0].properties.files"
    r = Rejection.for_message(message, "no files matched ['a/*.json']", message.files_field())
    assert r.message_id == "f.json#inputs[0]" and r.raw["tasks"][0]["properties"]["files"] == ["a/*.json"]


def test_filter_by_kind_and_data_type(tmp_path: Path) -> None:
    path = tmp_path / "duo_streaming_payload.json"
    write_morpheus_style(path, MORPHEUS_SHAPES["duo_streaming_payload.json"])
    messages = parse_control_messages(path).messages
    assert [m.kind for m in filter_messages(messages, kinds={"training"})] == ["training"]
    assert [m.kind for m in filter_messages(messages, data_types={"payload"})] == ["inference"]
    assert filter_messages(messages, kinds={"inference"}, data_types={"streaming"}) == []
    assert len(filter_messages(messages)) == 2


def test_models_forbid_unknown_keys_when_built_in_python() -> None:
    with pytest.raises(ValueError):
        FileToDfOptions(parser_kwarg={})
    with pytest.raises(ValueError):
        ControlMessage(message_id="x", tasks=[{"type": "load", "properties": {"files": ["a"]}}], metadta={})


# ---------------------------------------------------------------------------------------------
# Dead letters
# ---------------------------------------------------------------------------------------------


def test_dead_letter_file_is_json_lines_with_every_field(tmp_path: Path) -> None:
    bad_json = '{"inputs": ['
    mixed = {"inputs": [msg("training", "a", {}), {"tasks": [load("a"), {"type": "training"}, {"type": "inference"}]}]}
    dead = DeadLetterWriter(tmp_path / "out" / "dead_letters.jsonl")
    dead.write_all(parse_control_messages(bad_json, origin="one.json").rejections)
    dead.write_all(parse_control_messages(json.dumps(mixed), origin="two.json").rejections)

    lines = (tmp_path / "out" / "dead_letters.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert dead.count == 2
    assert [set(r) for r in records] == [{"message_id", "field", "reason", "raw", "at"}] * 2
    assert records[0]["message_id"] == "one.json" and records[0]["field"] is None
    assert records[0]["reason"].startswith("invalid JSON at line 1") and records[0]["raw"] == bad_json
    assert records[1]["message_id"] == "two.json#inputs[1]" and records[1]["field"] == "inputs[1].tasks"
    assert records[1]["raw"]["tasks"][2] == {"type": "inference"}
    at = datetime.fromisoformat(records[1]["at"].replace("Z", "+00:00"))
    assert at.utcoffset().total_seconds() == 0
    assert Rejection.model_validate(records[1]).field == "inputs[1].tasks"  # lines read back as Rejections


def test_dead_letter_appends_and_keeps_lines_whole_across_threads(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    path.write_text('{"message_id": "earlier", "field": null, "reason": "r", "raw": null, "at": "2022-08-01T00:00:00Z"}\n')
    dead = DeadLetterWriter(path)
    payload = {"blob": "x" * 5000}

    def worker(k: int) -> None:
        for i in range(25):
            dead.write(Rejection(message_id=f"t{k}#{i}", reason="bad", raw=payload))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 101 and records[0]["message_id"] == "earlier"
    assert sorted(r["message_id"] for r in records[1:]) == sorted(f"t{k}#{i}" for k in range(4) for i in range(25))


def test_check_command_exit_code_and_summary(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    write_morpheus_style(good, MORPHEUS_SHAPES["duo_payload_lti.json"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"inputs": [msg("training", "a", {}), msg("trainig", "a", {})]}))

    ok = subprocess.run([sys.executable, "-m", "dfp_ray.messages", str(good)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "ok       good.json#inputs[1]: inference, payload" in ok.stdout

    ko = subprocess.run([sys.executable, "-m", "dfp_ray.messages", str(good), str(bad)], capture_output=True, text=True, timeout=60)
    assert ko.returncode == 1
    assert "REJECTED bad.json#inputs[1]: inputs[1].tasks[1].type: unknown task type 'trainig'" in ko.stdout
    assert "ok       bad.json#inputs[0]: training" in ko.stdout
