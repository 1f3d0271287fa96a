"""The job store and runner on their own (no Ray, no HTTP): takeover, lost jobs, stand-down, cleanup.

Two runners on one jobs folder play two replicas; "killing" one means stopping its watcher
thread (no more heartbeats) while its handler is still blocked, as a frozen or dead replica's
would be.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from serve_helpers import wait_for

from dfp_ray.serve.config import JobsConfig
from dfp_ray.serve.errors import ApiError
from dfp_ray.serve.jobs import JobOutput, JobRunner


def _cfg(tmp_path: Path, **kw) -> JobsConfig:
    return JobsConfig(dir=str(tmp_path / "jobs"), heartbeat_s=0.1, stale_after_s=0.6, **kw)


def _inputs(tmp_path: Path, name: str = "in") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "dataset.upload").write_bytes(b"data")
    return folder


def test_a_job_runs_reports_progress_and_deletes_its_inputs(tmp_path):
    runner = JobRunner(_cfg(tmp_path), "a")

    def handler(params, inputs, progress):
        progress("halfway", 0.5)
        return JobOutput(data=(inputs / "dataset.upload").read_bytes() * params["n"], media_type="text/plain",
                         filename="out.txt")

    runner.register("echo", handler)
    runner.start()
    try:
        record = runner.submit("echo", {"n": 3}, _inputs(tmp_path))
        done = wait_for(lambda: (r := runner.status(record.job_id)).state == "done" and r, 10, what="job")
        assert done.attempts == 1 and done.progress == 1.0 and done.result_media_type == "text/plain"
        assert runner.store.result_path(record.job_id).read_bytes() == b"datadatadata"
        assert not runner.store.inputs(record.job_id).exists()
    finally:
        runner.stop()


def test_user_errors_and_bugs_fail_the_job_with_their_status(tmp_path):
    runner = JobRunner(_cfg(tmp_path), "a")

    def bad_input(params, inputs, progress):
        raise ApiError(400, "invalid_input", "dataset is not numbers", "dataset")

    def bug(params, inputs, progress):
        raise ZeroDivisionError("oops")

    runner.register("bad", bad_input)
    runner.register("bug", bug)
    try:
        a = runner.submit("bad", {}, _inputs(tmp_path, "a"))
        b = runner.submit("bug", {}, _inputs(tmp_path, "b"))
        ra = wait_for(lambda: (r := runner.status(a.job_id)).state == "failed" and r, 10, what="job a")
        rb = wait_for(lambda: (r := runner.status(b.job_id)).state == "failed" and r, 10, what="job b")
        assert ra.error_status == 400 and ra.error == {"detail": "dataset is not numbers", "field": "dataset",
                                                       "code": "invalid_input"}
        assert rb.error_status == 500 and rb.error["code"] == "internal_error" and "oops" not in rb.error["detail"]
    finally:
        runner.stop()


def test_a_silent_owners_job_is_taken_over_and_the_old_owner_stands_down(tmp_path):
    release = threading.Event()
    calls: list[str] = []

    def slow(params, inputs, progress):
        calls.append("a")
        release.wait(10)
        return JobOutput(data=b"from a", media_type="text/plain", filename="a")

    def fast(params, inputs, progress):
        calls.append("b")
        return JobOutput(data=b"from b", media_type="text/plain", filename="b")

    a = JobRunner(_cfg(tmp_path), "replica-a")
    a.register("work", slow)
    a.start()
    b = JobRunner(_cfg(tmp_path), "replica-b")
    b.register("work", fast)
    try:
        job = a.submit("work", {}, _inputs(tmp_path)).job_id
        wait_for(lambda: a.status(job).state == "running", 10, what="a to start")
        assert b.status(job).state == "running"  # fresh heartbeat: b leaves it alone
        a.stop()  # a freezes: no more heartbeats, its handler still blocked
        final = wait_for(lambda: (r := b.status(job)).state == "done" and r, 10, what="b to take over")
        assert final.owner == "replica-b" and final.generation == 2 and final.attempts == 2
        assert "taken over by replica replica-b" in final.history[0]
        release.set()  # a wakes up, finds a newer owner, and writes nothing
        time.sleep(0.3)
        assert b.store.result_path(job).read_bytes() == b"from b"
        assert b.status(job).owner == "replica-b" and calls == ["a", "b"]
    finally:
        release.set()
        a.stop()
        b.stop()


def test_a_job_whose_replica_keeps_dying_is_reported_lost(tmp_path):
    cfg = _cfg(tmp_path, max_attempts=1)
    a = JobRunner(cfg, "a")
    release = threading.Event()
    a.register("work", lambda params, inputs, progress: release.wait(10) and None)
    b = JobRunner(cfg, "b")
    b.register("work", lambda params, inputs, progress: JobOutput(b"", "text/plain", "x"))
    try:
        job = a.submit("work", {}, _inputs(tmp_path)).job_id
        wait_for(lambda: a.status(job).state == "running", 10, what="a to start")
        a.stop()
        lost = wait_for(lambda: (r := b.status(job)).state == "lost" and r, 10, what="the job to be declared lost")
        assert lost.error_status == 410 and "submit it again" in lost.error["detail"]
        assert "started 1 times" in lost.error["detail"]
    finally:
        release.set()
        a.stop()


def test_a_queued_job_whose_inputs_vanished_is_lost_not_hung(tmp_path):
    cfg = _cfg(tmp_path)
    a = JobRunner(cfg, "a")  # never started: its pool would run the job, so use the store directly
    record = a.store.create("work", {}, "a", _inputs(tmp_path))
    import shutil

    shutil.rmtree(a.store.inputs(record.job_id))
    b = JobRunner(cfg, "b")
    b.register("work", lambda params, inputs, progress: JobOutput(b"", "text/plain", "x"))
    time.sleep(0.7)
    lost = b.status(record.job_id)
    assert lost.state == "lost" and "inputs are gone" in lost.error["detail"]


def test_job_ids_are_checked_and_old_jobs_are_deleted(tmp_path):
    runner = JobRunner(_cfg(tmp_path, keep_s=0.2), "a")
    runner.register("work", lambda params, inputs, progress: JobOutput(b"x", "text/plain", "x"))
    for bad in ("../etc", "A" * 32, "0" * 31):
        with pytest.raises(ApiError) as exc:
            runner.status(bad)
        assert exc.value.status == 404
    runner.start()
    try:
        job = runner.submit("work", {}, _inputs(tmp_path)).job_id
        wait_for(lambda: runner.status(job).state == "done", 10, what="job")
        wait_for(lambda: runner.store.read(job) is None, 10, what="cleanup")
        with pytest.raises(ApiError) as exc:
            runner.status(job)
        assert exc.value.status == 404
    finally:
        runner.stop()
