"""Rolling windows without Ray: both cache modes, counting each row once, checkpoints, the memory cap.

The controller-level tests run the real UserController (real sqlite MLflow, real Parquet
checkpoints): what a restarted actor does is a new controller reading the same state dir.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfp_ray.config import CacheSettings, load_config
from dfp_ray.pipeline.rolling_window import RollingWindow, is_passthrough
from dfp_ray.row_keys import fill_event_ids, hash_keys

T0 = pd.Timestamp("2022-08-01", tz="UTC")


def day(d: int, n: int, user: str = "alice", start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({
        "timestamp": [T0 + pd.Timedelta(days=d, minutes=i) for i in range(n)],
        "username": user, "event_id": [f"{user}-{d}-{start + i}" for i in range(n)],
        "reason": "user_approved", "logcount": np.arange(n, dtype=float),
    })


def window(**settings) -> RollingWindow:
    return RollingWindow(CacheSettings(**settings), "timestamp", "event_id")


def test_aggregate_mode_emits_the_whole_window_when_due_and_keeps_it():
    win = window(min_history=10, min_increment=5, max_history_days=3)
    assert win.append(day(0, 6), work="m0").emitted is None
    out = win.append(day(1, 6), work="m1")
    assert len(out.emitted) == 12 and out.added == 6 and win.new_since_emit == 0
    assert win.append(day(2, 4), work="m2").emitted is None  # 4 new < min_increment
    out = win.append(day(3, 2), work="m3")
    # the window spans 3 days back from its newest row (day 3, 00:01): day 0's first row has left
    assert len(out.emitted) == 6 + 6 + 4 + 2 - 1 and win.new_since_emit == 0
    out = win.append(day(5, 5), work="m5")
    newest = T0 + pd.Timedelta(days=5, minutes=4)
    # days 0-2 have left the span; day 3 (2 rows) and day 5 (5) are below min_history
    assert out.emitted is None and len(win.rows) == 7 and out.added == 5
    assert win.rows["timestamp"].min() >= newest - pd.Timedelta(days=3)
    late = win.append(day(0, 3, start=10), work="late")  # rows older than the span are not counted
    assert late.too_old == 3 and late.added == 0


def test_batch_mode_emits_what_accumulated_then_flushes():
    win = window(cache_mode="batch", min_history=5, min_increment=0)
    assert win.append(day(0, 3), work="a").emitted is None
    out = win.append(day(1, 3), work="b")
    assert len(out.emitted) == 6 and len(win.rows) == 0
    assert win.append(day(2, 2), work="c").emitted is None and len(win.rows) == 2
    assert is_passthrough(CacheSettings(cache_mode="batch", min_history=1, min_increment=0))
    assert not is_passthrough(CacheSettings())


def test_a_redelivered_message_and_overlapping_rows_are_counted_once():
    win = window(min_history=8, min_increment=8)
    win.append(day(0, 5), work="m0")
    again = win.append(day(0, 5), work="m0")  # the same message after a crash
    assert again.already_applied and win.new_since_emit == 5 and len(win.rows) == 5
    overlap = pd.concat([day(0, 5), day(1, 2)], ignore_index=True)  # another message re-reads a file
    out = win.append(overlap, work="m1")
    assert (out.added, out.duplicates) == (2, 5) and win.new_since_emit == 7 and out.emitted is None
    out = win.append(day(1, 2, start=2), work="m2")
    assert len(out.emitted) == 9 and out.emitted["event_id"].is_unique


def test_a_checkpoint_restores_rows_counters_and_what_was_counted(tmp_path):
    win = window(min_history=20, min_increment=20, max_rows=8)
    win.append(day(0, 6), work="m0")
    win.append(day(1, 5), work="m1")  # 11 rows > cap 8: the 3 oldest go, the floor is set
    assert len(win.rows) == 8 and win.floor is not None
    path = tmp_path / "w" / "alice.parquet"
    win.save(path)
    back = RollingWindow.load(path, win.cfg, "timestamp", "event_id")
    pd.testing.assert_frame_equal(back.rows, win.rows)
    assert (back.new_since_emit, back.floor, back.newest, back.applied) == (win.new_since_emit, win.floor, win.newest,
                                                                           win.applied)
    assert back.append(day(1, 5), work="m1").already_applied  # the restored window knows m1
    # rows the cap evicted, delivered again in a new message, are not counted as new
    out = back.append(day(0, 6), work="m9")
    assert out.added == 0 and back.new_since_emit == win.new_since_emit
    assert not list(path.parent.glob(".*.tmp"))  # written atomically


def test_the_first_checkpoint_format_still_loads(tmp_path):
    old = day(0, 4).assign(__new_since_emit=3)
    path = tmp_path / "old.parquet"
    old.to_parquet(path, index=False)
    win = RollingWindow.load(path, CacheSettings(min_history=5, min_increment=4), "timestamp", "event_id")
    assert len(win.rows) == 4 and win.new_since_emit == 3 and "__new_since_emit" not in win.rows
    assert len(win.append(day(1, 1), work="x").emitted) == 5


def test_a_huge_batch_cannot_grow_a_window_past_its_cap():
    win = window(min_history=10, min_increment=10, max_rows=1000)
    out = win.append(day(0, 50_000), work="huge")
    assert len(win.rows) == 1000 and out.added == 1000 and out.capped == 49_000
    assert win.rows["event_id"].tolist() == [f"alice-0-{i}" for i in range(49_000, 50_000)]  # the newest
    assert len(out.emitted) == 1000


def test_excluded_keys_never_enter_and_leave_when_excluded_later():
    win = window(min_history=100, min_increment=100)
    out = win.append(day(0, 5), work="a", exclude={"alice-0-1"})
    assert out.excluded == 1 and "alice-0-1" not in set(win.rows["event_id"])
    assert win.exclude({"alice-0-2"}) == 1 and len(win.rows) == 3


def test_rows_without_event_ids_get_the_same_key_whichever_file_they_came_from():
    a = day(0, 3).assign(event_id=None, _source_file="f1.json")
    b = a.assign(_source_file="f2.json")
    ids_a = fill_event_ids(a, "event_id")["event_id"]
    ids_b = fill_event_ids(b, "event_id")["event_id"]
    assert ids_a.tolist() == ids_b.tolist() and ids_a.str.startswith("row:").all() and ids_a.is_unique
    assert hash_keys(a.drop(columns="event_id")).tolist() != hash_keys(a.drop(columns="event_id").assign(reason="x")).tolist()
    win = window(min_history=10, min_increment=10)
    win.append(fill_event_ids(a, "event_id"), work="1")
    assert win.append(fill_event_ids(b, "event_id"), work="2").duplicates == 3


# ---------------------------------------------------------------------------- controller level
@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list[pd.DataFrame]:
    """Five days of mapped Duo rows for 3 users (the real schema mapping of generated data)."""
    from dfp_ray.pipeline.file_to_df import load_files
    from dfp_ray.schemas import load_schema, map_fields
    from dfp_ray.tools.datagen import DatagenConfig, generate

    out = tmp_path_factory.mktemp("data")
    generate(DatagenConfig(out=str(out), sources=["duo"], users=3, train_days=5, infer_days=1,
                           events_per_user_per_day=8, seed=5), progress=False)
    files = sorted(str(p) for p in (out / "duo" / "training").glob("*.json"))
    frame, _ = map_fields(load_files(files).frame, load_schema("duo"))
    days = frame["timestamp"].dt.floor("D")
    return [fill_event_ids(frame[days == d].reset_index(drop=True), "event_id") for d in sorted(days.unique())]


def controller(tmp: Path, index: int = 0):
    from dfp_ray.controllers.user import UserController
    from dfp_ray.schemas import load_schema

    cfg = load_config(None, {"state_dir": str(tmp / "state"), "window.min_history": 20, "window.min_increment": 15,
                             "min_train_rows": 5, "autoencoder.encoder_layers": [16], "autoencoder.decoder_layers": [16],
                             "autoencoder.epochs": 2, "autoencoder.device": "cpu"})
    return UserController(cfg, load_schema("duo"), index, threads=1)


@pytest.mark.slow
def test_a_new_controller_resumes_the_windows_and_a_retried_batch_trains_nothing_twice(frames, tmp_path):
    from dfp_ray.controllers.user import WorkKey

    user = sorted(frames[0]["username"].unique())[0]
    parts = [f[f["username"] == user] for f in frames]
    first = controller(tmp_path)
    results = [first.train(user, p, "streaming", work=WorkKey(run_id="r", message_id="m", batch=i))
               for i, p in enumerate(parts[:3])]
    assert [r.window_added for r in results] == [len(p) for p in parts[:3]]
    trained_at = [i for i, r in enumerate(results) if r.trained]
    # a restarted actor: a new controller on the same state dir, the last batch sent again
    second = controller(tmp_path)
    again = second.train(user, parts[2], "streaming", work=WorkKey(run_id="r", message_id="m", batch=2, retry=True))
    assert not again.trained and "already counted" in again.reason
    win_a = first._window(user)
    win_b = second._window(user)
    pd.testing.assert_frame_equal(win_a.rows, win_b.rows)
    assert win_a.new_since_emit == win_b.new_since_emit
    versions = second.registry.versions("duo", user)
    assert len(versions) == len(trained_at)
    rest = [second.train(user, p, "streaming", work=WorkKey(run_id="r", message_id="m", batch=i))
            for i, p in enumerate(parts[3:], start=3)]
    assert sum(r.window_added for r in results + rest) == sum(len(p) for p in parts)


def test_streaming_inference_holds_rows_until_its_window_is_due(tmp_path):
    """window.inference in batch mode with 10 / 0: rows wait (checkpointed) until a user has 10,
    then all of them are scored and the window is flushed; a failed scoring call leaves the
    checkpoint as it was."""
    from dfp_ray.controllers.user import WorkKey

    c = controller(tmp_path)
    c.cfg.window.inference = CacheSettings(cache_mode="batch", min_history=10, min_increment=0)
    first = pd.concat([day(0, 6, "alice"), day(0, 12, "bob")], ignore_index=True)
    due, held = c.infer_window(first, WorkKey(run_id="r", message_id="m1"))
    assert sorted(due["username"].unique()) == ["bob"] and len(due) == 12 and held == {"alice": 6}
    c.save_inference_windows()
    again = controller(tmp_path)  # a restarted actor
    again.cfg.window.inference = c.cfg.window.inference
    due, held = again.infer_window(day(1, 3, "alice"), WorkKey(run_id="r", message_id="m2"))
    assert due is None and held == {"alice": 9}
    again.forget_inference_windows()  # the scoring call failed: back to the checkpoint
    due, held = again.infer_window(day(1, 4, "alice"), WorkKey(run_id="r", message_id="m2"))
    assert len(due) == 10 and held == {}  # 6 restored + 4 new: due, then flushed
    again.save_inference_windows()
    assert len(again._window("alice", "inference").rows) == 0


@pytest.mark.s3
def test_windows_checkpoint_to_an_object_store(tmp_path):
    try:
        from tests.s3_server import running_s3_server, s3_storage_options
    except ImportError:
        from s3_server import running_s3_server, s3_storage_options
    import s3fs

    with running_s3_server() as endpoint:
        opts = s3_storage_options(endpoint)
        s3fs.S3FileSystem(**opts).mkdir("dfp-state")
        win = window(min_history=10, min_increment=10)
        win.append(day(0, 4), work="m0")
        url = "s3://dfp-state/windows/duo/alice.parquet"
        assert RollingWindow.load(url, win.cfg, "timestamp", "event_id", storage_options=opts) is None
        win.save(url, opts)
        back = RollingWindow.load(url, win.cfg, "timestamp", "event_id", storage_options=opts)
    pd.testing.assert_frame_equal(back.rows, win.rows)
    assert back.applied == ["m0"] and back.new_since_emit == 4
