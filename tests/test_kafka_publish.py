"""`dfp-ray publish` against a real broker: one Kafka message per input, validation before anything is sent."""

from __future__ import annotations

import json
import re

import pytest

from dfp_ray.cli import build_parser, main
from dfp_ray.messages import parse_control_messages

try:
    from tests.kafka_broker import free_port, kafka_broker, read_topic  # noqa: F401 - fixture
except ImportError:
    from kafka_broker import free_port, kafka_broker, read_topic  # noqa: F401 - fixture

pytestmark = pytest.mark.kafka


def message(kind: str, glob: str) -> dict:
    return {"tasks": [{"type": "load", "properties": {"files": [glob]}}, {"type": kind, "properties": {}}],
            "metadata": {"data_type": "payload"}}


def test_each_input_becomes_one_message_in_file_order(kafka_broker, tmp_path, capsys):
    lti = tmp_path / "lti.json"
    lti.write_text(json.dumps({"inputs": [message("training", "a/*.json"), message("inference", "b/*.json")]}))
    single = tmp_path / "single.json"
    single.write_text(json.dumps(message("inference", "c/*.json")))
    code = main(["publish", "--bootstrap-servers", kafka_broker.bootstrap, "--topic", "pub", "--key", "duo",
                 str(lti), str(single)])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{lti}#0 -> pub/0@0", f"{lti}#1 -> pub/0@1", f"{single}#0 -> pub/0@2"]

    records = read_topic(kafka_broker.bootstrap, "pub")
    assert [r.key for r in records] == [b"duo"] * 3
    documents = [json.loads(r.value) for r in records]
    assert documents == [{"inputs": [message("training", "a/*.json")]},
                         {"inputs": [message("inference", "b/*.json")]},
                         {"inputs": [message("inference", "c/*.json")]}]
    # Each value is a control-message document the source parses into exactly one message.
    assert [len(parse_control_messages(r.value).messages) for r in records] == [1, 1, 1]


def test_an_invalid_file_sends_nothing_unless_validation_is_off(kafka_broker, tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"inputs": [message("training", "a/*.json")]}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"inputs": [message("inference", "b/*.json"), {"tasks": [{"type": "trainig"}]}]}))
    code = main(["publish", "--bootstrap-servers", kafka_broker.bootstrap, "--topic", "pub-bad", str(good), str(bad)])
    assert code == 1
    err = capsys.readouterr().err
    assert "bad.json#inputs[1]" in err and "unknown task type 'trainig'" in err and "nothing sent" in err
    assert read_topic(kafka_broker.bootstrap, "pub-bad") == []

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    code = main(["publish", "--bootstrap-servers", kafka_broker.bootstrap, "--topic", "pub-bad", "--no-validate",
                 str(bad), str(broken)])
    assert code == 0
    values = [r.value for r in read_topic(kafka_broker.bootstrap, "pub-bad")]
    assert len(values) == 3 and values[2] == b"{not json"
    assert json.loads(values[1]) == {"inputs": [{"tasks": [{"type": "trainig"}]}]}


def test_unreachable_brokers_and_unreadable_files_are_reported(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"inputs": [message("training", "a/*.json")]}))
    port = free_port()
    code = main(["publish", "--bootstrap-servers", f"127.0.0.1:{port}", "--topic", "t", "--timeout", "1s", str(good)])
    assert code == 2
    assert f"Kafka at 127.0.0.1:{port}" in capsys.readouterr().err
    code = main(["publish", "--bootstrap-servers", f"127.0.0.1:{port}", "--topic", "t", str(tmp_path / "missing.json")])
    assert code == 1
    assert "missing.json" in capsys.readouterr().err


def test_help_explains_every_option():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    publish = sub.choices["publish"]
    text = publish.format_help()
    for action in publish._actions:
        for flag in action.option_strings:
            assert flag in text
        assert action.help and len(action.help) > 10, action.dest
    assert re.search(r"one Kafka\s+message per input", text)
