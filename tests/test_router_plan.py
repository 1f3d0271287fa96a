"""The router's decisions and the pipeline's layout, without Ray: plain unit tests."""

from __future__ import annotations

import importlib
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from dfp_ray.config import RayConfig
from dfp_ray.controllers.router import (
    GENERIC_ACTOR,
    ProgressTracker,
    owners_with_rows,
    place_generic_fit,
    plan_chunks,
    should_widen,
    unreadable_reason,
    users_per_owner,
    widen_threads,
)
from dfp_ray.pipeline import STEPS
from dfp_ray.pipeline.fsspec_loader import FileRef
from dfp_ray.results import FileProblem, LoadInfo

T0 = datetime(2022, 8, 1, tzinfo=timezone.utc)


def refs(n: int) -> list[FileRef]:
    return [FileRef(url=f"/d/{i:03d}.json", size=1, modified=T0, batch_time=T0) for i in range(n)]


@pytest.mark.parametrize(
    ("files", "pool", "cfg", "sizes"),
    [
        (232, 2, {}, [116, 116]),
        (232, 3, {}, [77, 78, 77]),
        (15, 2, {}, [15]),  # under 2 x load_chunk_files: one piece
        (16, 2, {}, [8, 8]),
        (100, 4, {"load_parallelism": 2}, [50, 50]),
        (100, 4, {"load_parallelism": 1}, [100]),
        (100, 8, {"load_chunk_files": 30}, [33, 34, 33]),
        (0, 2, {}, [0]),
    ],
)
def test_chunks_are_contiguous_cover_every_file_once_and_respect_the_limits(files, pool, cfg, sizes):
    batch = refs(files)
    chunks = plan_chunks(batch, pool, RayConfig(**cfg))
    assert [len(c) for c in chunks] == sizes
    assert [f for c in chunks for f in c] == batch  # file order kept, nothing lost or repeated
    assert len(chunks) <= pool


def info(owner_users: list[list[str]], owner_rows: list[int] | None = None) -> LoadInfo:
    rows = owner_rows or [len(u) for u in owner_users]
    return LoadInfo(files=1, rows=sum(rows), owner_users=owner_users, owner_rows=rows)


def test_owners_and_users_are_counted_across_chunks_once_per_user():
    chunks = [info([["a", "c"], []]), info([["a"], []]), info([[], []])]
    assert owners_with_rows(chunks, 2) == [0]
    assert users_per_owner(chunks, 2) == [2, 0]  # 'a' spans two chunks: one user
    assert owners_with_rows([info([["a"], ["b"]])], 2) == [0, 1]


def test_generic_fit_placement():
    # its own actor whenever there is one, whatever the data type
    for data_type in ("payload", "streaming"):
        assert place_generic_fit(has_generic_actor=True, data_type=data_type, rows_per_owner=[1, 2],
                                 stable_owner=1) == GENERIC_ACTOR
    # payload: the least-loaded pool actor (ties: the lowest index)
    assert place_generic_fit(has_generic_actor=False, data_type="payload", rows_per_owner=[9, 3, 3],
                             stable_owner=0) == 1
    # streaming: the actor that holds its rolling window
    assert place_generic_fit(has_generic_actor=False, data_type="streaming", rows_per_owner=[9, 0],
                             stable_owner=0) == 0


def test_widening_decision():
    assert widen_threads(RayConfig(num_cpus_per_actor=2), 3) == 6
    assert widen_threads(RayConfig(generic_threads_after_pool=4), 3) == 4
    assert should_widen(threads=2, pool_done=True, generic_done=False)
    assert not should_widen(threads=2, pool_done=False, generic_done=False)
    assert not should_widen(threads=2, pool_done=True, generic_done=True)
    assert not should_widen(threads=1, pool_done=True, generic_done=False)


def test_unreadable_reason_names_every_file():
    reason = unreadable_reason([FileProblem(url="/d/a.json", reason="invalid JSON at line 1"),
                                FileProblem(url="/d/b.json", reason="file not found")])
    assert reason == "unreadable file(s): /d/a.json: invalid JSON at line 1; /d/b.json: file not found"


def test_progress_counters_add_up_and_reset_per_message():
    p = ProgressTracker()
    p.start("m1", "training")
    p.stage("loading", files_total=4)
    p.add(files_loaded=3, rows_loaded=10)
    p.add(files_loaded=1, users_total=2)
    snap = p.snapshot()
    assert (snap.message_id, snap.stage, snap.files_total, snap.files_loaded, snap.rows_loaded, snap.users_total) == (
        "m1", "loading", 4, 4, 10, 2)
    p.add(users_done=1)
    assert snap.users_done == 0  # a snapshot does not change afterwards
    p.start("m2", "inference")
    assert p.snapshot().files_loaded == 0 and p.snapshot().kind == "inference"
    with pytest.raises(AttributeError):
        p.add(no_such_counter=1)


def test_every_step_resolves_and_the_docs_table_matches():
    for _, target in STEPS:
        module, name = target.split(":")
        assert hasattr(importlib.import_module(module), name), target
    doc = (Path(__file__).parents[1] / "docs" / "pipeline.md").read_text()
    table = re.findall(r"^\| (`?[A-Za-z ]+`?) \| `([a-z_.]+:[A-Za-z_]+)` \|", doc, re.M)
    assert [(step.strip("`"), target) for step, target in table] == list(STEPS)
