"""`--start-time` / `--duration` override every message's batching window."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from dfp_ray.messages import parse_control_messages
from dfp_ray.runner import apply_time_window


def _messages(tmp_path, batching=None):
    meta = {"data_type": "payload"}
    if batching:
        meta["batching_options"] = batching
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"inputs": [{
        "tasks": [{"type": "load", "properties": {"loader_id": "fsspec", "files": ["x/*.json"]}},
                  {"type": "training", "properties": {}}],
        "metadata": meta,
    }]}))
    return parse_control_messages(path).messages


def test_start_and_duration_set_an_inclusive_window(tmp_path):
    msgs = _messages(tmp_path, {"period": "H", "start_time": "2022-01-01", "end_time": "2022-12-31"})
    apply_time_window(msgs, "2022-08-05", "3d")
    opts = msgs[0].metadata.batching_options
    assert opts.period == "H"  # other options survive
    assert opts.window_start() == datetime(2022, 8, 5, tzinfo=timezone.utc)
    assert opts.window_end_inclusive() == datetime(2022, 8, 7, 23, 59, 59, 999999, tzinfo=timezone.utc)


def test_duration_without_start_is_an_error(tmp_path):
    msgs = _messages(tmp_path)
    with pytest.raises(ValueError, match="--duration needs --start-time"):
        apply_time_window(msgs, None, "3d")
