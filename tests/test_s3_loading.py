"""s3:// globs, batching and loading against a real S3-protocol server (moto_server on loopback),
compared with the same files read from local disk."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from dfp_ray.messages import BatchingOptions, FileToDfOptions, parse_control_messages
from dfp_ray.pipeline.file_batcher import batch_files, plan_batches
from dfp_ray.pipeline.file_to_df import load_files, read_and_map
from dfp_ray.pipeline.fsspec_loader import FileListingError, NoFilesMatched, expand_globs
from dfp_ray.readers.frame_cache import FrameCache
from dfp_ray.readers.raw_files import SOURCE_FILE_COLUMN
from dfp_ray.schemas import load_schema

try:  # works whether or not tests/ is a package
    from tests.s3_server import free_port, moto_server_binary, running_s3_server, s3_storage_options
except ImportError:  # pragma: no cover - depends on how pytest was started
    from s3_server import free_port, moto_server_binary, running_s3_server, s3_storage_options

s3fs = pytest.importorskip("s3fs")

pytestmark = [
    pytest.mark.s3,
    pytest.mark.skipif(moto_server_binary() is None, reason="moto_server not installed (pip install 'moto[server]')"),
]

BUCKET = "dfp-test-logs"
UTC = timezone.utc


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with running_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def storage_options(s3_endpoint: str) -> dict:
    return s3_storage_options(s3_endpoint)


def duo_records(i: int, n: int) -> list[dict]:
    return [
        {
            "timestamp": 1659312000 + 3600 * i + j,
            "user": {"name": f"user{(i + j) % 4}", "groups": ["staff"] if j % 2 else []},
            "access_device": {"browser": "Chrome" if j % 3 else "Edge", "location": {"city": "Austin"}},
            "result": "success" if j % 4 else "denied",
        }
        for j in range(n)
    ]


@pytest.fixture(scope="module")
def uploaded(storage_options: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, s3fs.S3FileSystem]:
    """12 Duo files, two per day over six days, both on local disk and in the bucket."""
    local = tmp_path_factory.mktemp("duo")
    fs = s3fs.S3FileSystem(**storage_options)
    fs.mkdir(BUCKET)
    for i in range(12):
        when = datetime(2022, 8, 1, tzinfo=UTC) + timedelta(hours=12 * i, minutes=5)
        name = f"DUO_{when:%Y-%m-%dT%H_%M_%S}.806Z.json"
        body = json.dumps(duo_records(i, 5))
        (local / name).write_text(body)
        fs.pipe(f"{BUCKET}/duo/training/{name}", body.encode())
    fs.pipe(f"{BUCKET}/duo/training/README.txt", b"not a log")
    return local, fs


def test_s3_glob_lists_the_same_files_as_local(uploaded, storage_options: dict) -> None:
    local, _ = uploaded
    remote_refs = expand_globs([f"s3://{BUCKET}/duo/training/*.json"], storage_options)
    local_refs = expand_globs([str(local / "*.json")])

    assert [r.url.rsplit("/", 1)[1] for r in remote_refs] == [Path(r.url).name for r in local_refs]
    assert all(r.url.startswith(f"s3://{BUCKET}/duo/training/DUO_") for r in remote_refs)
    assert [r.batch_time for r in remote_refs] == [r.batch_time for r in local_refs]
    assert [r.size for r in remote_refs] == [r.size for r in local_refs]
    assert all(r.etag and r.modified and r.modified.tzinfo is not None for r in remote_refs)


def test_s3_batches_and_frames_match_local(uploaded, storage_options: dict) -> None:
    local, _ = uploaded
    options = BatchingOptions(period="D", start_time="2022-08-02", end_time="2022-08-05")
    remote = batch_files(expand_globs([f"s3://{BUCKET}/duo/training/*.json"], storage_options), options, "streaming")
    here = batch_files(expand_globs([str(local / "*.json")]), options, "streaming")

    assert [b.period_start for b in remote] == [datetime(2022, 8, d, tzinfo=UTC) for d in (2, 3, 4, 5)]
    assert [len(b.files) for b in remote] == [len(b.files) for b in here] == [2, 2, 2, 2]

    parse = FileToDfOptions(parser_kwargs={"lines": False, "orient": "records"})
    for remote_batch, local_batch in zip(remote, here, strict=True):
        got = load_files(remote_batch.files, options=parse, storage_options=storage_options, max_workers=4)
        want = load_files(local_batch.files, options=parse)
        assert got.errors == [] and got.files_loaded == 2
        pd.testing.assert_frame_equal(got.frame.drop(columns=SOURCE_FILE_COLUMN), want.frame.drop(columns=SOURCE_FILE_COLUMN))
        assert got.frame[SOURCE_FILE_COLUMN].str.startswith(f"s3://{BUCKET}/").all()
        assert got.frame["user.groups"].map(type).eq(list).all()


def test_s3_cache_hits_and_a_replaced_object_is_reread(uploaded, storage_options: dict, tmp_path: Path) -> None:
    _, fs = uploaded
    prefix = f"{BUCKET}/duo/cache-test"
    for i in range(3):
        fs.pipe(f"{prefix}/DUO_2022-08-0{i + 1}T00_00_00Z.json", json.dumps(duo_records(i, 4)).encode())
    glob = f"s3://{prefix}/*.json"
    cache = FrameCache(tmp_path / "cache")
    schema = load_schema("duo")

    def load():
        files = expand_globs([glob], storage_options)  # listed again, as the router does (ETags)
        key = cache.batch_key(files, None, schema.fingerprint())
        return read_and_map(files, schema, storage_options=storage_options, cache=cache, cache_key=key)

    first, second = load(), load()
    assert (first.files_from_cache, second.files_from_cache) == (0, 3)
    assert second.frame["event_id"].tolist() == first.frame["event_id"].tolist()

    changed = duo_records(1, 6)
    fs.pipe(f"{prefix}/DUO_2022-08-02T00_00_00Z.json", json.dumps(changed).encode())
    third = load()
    assert third.files_from_cache == 0 and len(third.frame) == 4 + 6 + 4


def test_new_objects_are_seen_by_the_next_listing(uploaded, storage_options: dict) -> None:
    _, fs = uploaded
    prefix = f"{BUCKET}/duo/arrivals"
    fs.pipe(f"{prefix}/DUO_2022-08-01T00_00_00Z.json", b"[]")
    assert len(expand_globs([f"s3://{prefix}/*.json"], storage_options)) == 1
    fs.pipe(f"{prefix}/DUO_2022-08-02T00_00_00Z.json", b"[]")
    assert len(expand_globs([f"s3://{prefix}/*.json"], storage_options)) == 2


def test_control_message_with_s3_globs_end_to_end(uploaded, storage_options: dict) -> None:
    doc = {
        "inputs": [
            {
                "tasks": [
                    {"type": "load", "properties": {"loader_id": "fsspec", "files": [f"s3://{BUCKET}/duo/training/*.json"]}},
                    {"type": "training", "properties": {}},
                ],
                "metadata": {
                    "data_type": "payload",
                    "batching_options": {"period": "D", "start_time": "2022-08-01", "end_time": "2022-08-31"},
                    "file_to_df_options": {"parser_kwargs": {"lines": False, "orient": "records"}},
                },
            },
            {
                "tasks": [
                    {"type": "load", "properties": {"files": [f"s3://{BUCKET}/no-such-prefix/*.json"]}},
                    {"type": "inference", "properties": {}},
                ],
                "metadata": {"data_type": "payload"},
            },
        ]
    }
    training, inference = parse_control_messages(json.dumps(doc), origin="azure_payload_lti_s3.json").messages

    (batch,) = plan_batches(training, storage_options)
    assert len(batch.files) == 12
    loaded = load_files(batch.files, options=training.metadata.file_to_df_options, storage_options=storage_options)
    assert len(loaded.frame) == 60 and loaded.errors == []

    with pytest.raises(NoFilesMatched) as info:
        plan_batches(inference, storage_options)
    assert info.value.field == "inputs[1].tasks[0].properties.files"


def test_missing_bucket_is_no_files_matched(storage_options: dict) -> None:
    with pytest.raises(NoFilesMatched):
        expand_globs(["s3://no-such-bucket-here/x/*.json"], storage_options)


def test_unreachable_endpoint_is_a_listing_error_naming_the_glob() -> None:
    dead = s3_storage_options(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    dead["config_kwargs"] = {"retries": {"max_attempts": 1}}
    with pytest.raises(FileListingError) as info:
        expand_globs([f"s3://{BUCKET}/duo/*.json"], dead)
    assert f"cannot list 's3://{BUCKET}/duo/*.json'" in info.value.reason
    assert "EndpointConnectionError" in info.value.reason


def test_server_keeps_answering_after_many_requests(s3_endpoint: str) -> None:
    """The server logs each request; ~700 requests once filled an unread stderr pipe and hung it."""
    import urllib.request

    for _ in range(1000):
        with urllib.request.urlopen(f"{s3_endpoint}/{BUCKET}?list-type=2&max-keys=1", timeout=5) as response:
            assert response.status == 200
