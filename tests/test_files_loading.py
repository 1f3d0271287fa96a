"""File listing, batch times, batching by period/window/sampling, reading every file format,
and the on-disk frame cache, all on real files."""

from __future__ import annotations

import gzip
import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfp_ray.messages import BatchingOptions, FileToDfOptions, Rejection, parse_control_messages
from dfp_ray.pipeline.file_batcher import batch_files, plan_batches
from dfp_ray.pipeline.file_to_df import load_files, read_and_map
from dfp_ray.pipeline.fsspec_loader import (
    FileRef,
    NoFilesInWindow,
    NoFilesMatched,
    batch_time_from_path,
    expand_globs,
)
from dfp_ray.readers.flatten import flatten_records
from dfp_ray.readers.frame_cache import FrameCache
from dfp_ray.readers.raw_files import SOURCE_FILE_COLUMN, FileReadError, read_raw_file
from dfp_ray.schemas import load_schema

UTC = timezone.utc


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# Batch time from file names
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("DUO_2022-08-01T00_05_06.806Z.json", utc(2022, 8, 1, 0, 5, 6, 806000)),
        ("AZUREAD_2022-08-01T03_12_00.123Z.json", utc(2022, 8, 1, 3, 12, 0, 123000)),
        ("AZUREAD_2022-08-01T03:12:00.123Z.json", utc(2022, 8, 1, 3, 12, 0, 123000)),
        ("logs_2022-08-01T03.12.00Z.json", utc(2022, 8, 1, 3, 12)),
        ("logs_2022-08-01T03.12.00.5.json", utc(2022, 8, 1, 3, 12, 0, 500000)),
        ("logs_2022-08-01T23_59_59.123456Z.json", utc(2022, 8, 1, 23, 59, 59, 123456)),
        ("logs_2022-08-01T01_02_03.1234567891.json", utc(2022, 8, 1, 1, 2, 3, 123456)),
        ("logs_2022-08-01T01_02_03.json", utc(2022, 8, 1, 1, 2, 3)),
        ("logs_2022-08-01 01:02:03Z.json", utc(2022, 8, 1, 1, 2, 3)),
        ("logs_2022-08-01.json", utc(2022, 8, 1)),
        ("2022-8-1.json", utc(2022, 8, 1)),
        ("s3://bucket/duo/DUO_2022-08-30T12_00_00Z.json.gz", utc(2022, 8, 30, 12)),
        ("/data/2022-08-01/DUO_2022-08-02T10_00_00Z.json", utc(2022, 8, 2, 10)),
        ("/data/2022-08-03/part-0001.json", utc(2022, 8, 3)),
        ("x_2022-13-45_2022-08-04.json", utc(2022, 8, 4)),
        ("no_date_here.json", None),
        ("build_12022-08-01.json", None),
    ],
)
def test_batch_time_from_file_names(path: str, expected: datetime | None) -> None:
    assert batch_time_from_path(path) == expected


def test_batch_time_with_morpheus_style_custom_pattern() -> None:
    pattern = r"(?P<year>\d{4})(?P<month>\d{2})(?P<day>\d{2})_(?P<hour>\d{2})(?P<minute>\d{2})(?P<microsecond>\.\d+)?"
    assert batch_time_from_path("dump_20220801_1530.25.json", pattern) == utc(2022, 8, 1, 15, 30, 0, 250000)


def write_json(path: Path, records: list[dict], mtime: datetime | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records), encoding="utf-8")
    if mtime is not None:
        os.utime(path, (mtime.timestamp(), mtime.timestamp()))
    return path


def test_no_date_in_name_falls_back_to_modification_time(tmp_path: Path) -> None:
    when = utc(2022, 8, 5, 7, 30, 15)
    write_json(tmp_path / "export.json", [{"a": 1}], mtime=when)
    (ref,) = expand_globs([str(tmp_path / "*.json")])
    assert ref.batch_time == when and ref.modified == when
    assert ref.size == (tmp_path / "export.json").stat().st_size


# ---------------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------------


def test_expand_globs_sorts_by_batch_time_dedupes_and_skips_directories(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    names = ["DUO_2022-08-03T00_00_00Z.json", "DUO_2022-08-01T12_00_00Z.json", "DUO_2022-08-01T06_00_00Z.json"]
    for name in names:
        write_json(data / name, [{"a": 1}])
    (data / "dir_2022-07-01T00_00_00Z.json").mkdir()  # a directory whose name matches the glob
    write_json(data / "nested" / "DUO_2022-07-31T00_00_00Z.json", [{"a": 1}])
    monkeypatch.chdir(tmp_path)

    refs = expand_globs(["data/*.json", "data/DUO_2022-08-01*.json"])  # relative, overlapping
    assert [Path(r.url).name for r in refs] == sorted(names)
    assert all(os.path.isabs(r.url) for r in refs)
    assert [r.batch_time for r in refs] == [utc(2022, 8, 1, 6), utc(2022, 8, 1, 12), utc(2022, 8, 3)]

    recursive = expand_globs(["data/**/*.json"])
    assert Path(recursive[0].url).name == "DUO_2022-07-31T00_00_00Z.json" and len(recursive) == 4

    exact = expand_globs([str(data / names[0])])
    assert [r.url for r in exact] == [str(data / names[0])]


def test_expand_globs_raises_no_files_matched(tmp_path: Path) -> None:
    with pytest.raises(NoFilesMatched) as info:
        expand_globs([str(tmp_path / "*.json"), str(tmp_path / "missing.json")])
    assert info.value.patterns == [str(tmp_path / "*.json"), str(tmp_path / "missing.json")]
    assert "no files matched" in str(info.value)


def test_plan_batches_errors_carry_the_message_field(tmp_path: Path) -> None:
    write_json(tmp_path / "DUO_2022-08-01T00_00_00Z.json", [{"a": 1}])
    doc = {
        "inputs": [
            {"tasks": [{"type": "load", "properties": {"files": [str(tmp_path / "nothing*.json")]}}, {"type": "training"}]},
            {
                "tasks": [{"type": "load", "properties": {"files": [str(tmp_path / "*.json")]}}, {"type": "training"}],
                "metadata": {"batching_options": {"start_time": "2022-09-01"}},
            },
            {"tasks": [{"type": "load", "properties": {"files": [str(tmp_path / "*.json")]}}, {"type": "training"}]},
        ]
    }
    no_match, out_of_window, fine = parse_control_messages(json.dumps(doc), origin="m.json").messages

    with pytest.raises(NoFilesMatched) as info:
        plan_batches(no_match)
    rejection = Rejection.for_message(no_match, info.value.reason, info.value.field)
    assert rejection.message_id == "m.json#inputs[0]"
    assert rejection.field == "inputs[0].tasks[0].properties.files"

    with pytest.raises(NoFilesInWindow) as info:
        plan_batches(out_of_window)
    assert info.value.field == "inputs[1].metadata.batching_options"
    assert "1 file(s) matched" in info.value.reason and "start_time=2022-09-01" in info.value.reason

    (batch,) = plan_batches(fine)
    assert [Path(f.url).name for f in batch.files] == ["DUO_2022-08-01T00_00_00Z.json"]


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------


def refs_at(times: list[datetime]) -> list[FileRef]:
    return [FileRef(url=f"/d/f{i:04d}.json", size=10, modified=None, batch_time=t) for i, t in enumerate(times)]


def every(hours: float, n: int, start: datetime = utc(2022, 8, 1)) -> list[datetime]:
    return [start + timedelta(hours=hours * i) for i in range(n)]


def names(batch) -> list[str]:
    return [f.url for f in batch.files]


@pytest.mark.parametrize("period", ["D", "H", "W", "12H", "2D", "M", "W-MON", "15T"])
def test_streaming_periods_group_like_pandas_resample(period: str) -> None:
    rng = np.random.default_rng(7)
    times = sorted(utc(2022, 8, 1) + timedelta(minutes=int(m)) for m in rng.integers(0, 60 * 24 * 45, 300))
    refs = refs_at(times)
    batches = batch_files(refs, BatchingOptions(period=period), "streaming")

    alias = {"H": "h", "12H": "12h", "M": "MS", "15T": "15min"}.get(period, period)
    series = pd.Series([r.url for r in refs], index=pd.DatetimeIndex(times))
    expected = [list(group) for _, group in series.resample(alias) if len(group)]
    assert [names(b) for b in batches] == expected
    assert [b.batch_index for b in batches] == list(range(len(batches)))
    assert all(b.batch_count == len(batches) for b in batches)
    for b in batches:  # every file lies inside its batch's period; periods are in order
        assert all(b.period_start <= f.batch_time < b.period_end for f in b.files)
    assert all(a.period_end <= b.period_start for a, b in zip(batches, batches[1:], strict=False))


def test_week_periods_run_monday_to_sunday() -> None:
    # 2022-08-01 is a Monday; 2022-08-07 23:59 is still that week, 2022-08-08 00:00 is the next
    refs = refs_at([utc(2022, 8, 1), utc(2022, 8, 7, 23, 59), utc(2022, 8, 8)])
    first, second = batch_files(refs, BatchingOptions(period="W"), "streaming")
    assert (first.period_start, first.period_end) == (utc(2022, 8, 1), utc(2022, 8, 8))
    assert len(first.files) == 2 and len(second.files) == 1


def test_payload_is_one_batch_spanning_all_periods() -> None:
    refs = refs_at(every(7, 50))
    (batch,) = batch_files(refs, BatchingOptions(period="D"), "payload")
    assert names(batch) == [r.url for r in refs]
    assert batch.period_start == utc(2022, 8, 1)
    assert batch.period_end == utc(2022, 8, 16)  # last file at 2022-08-15T07:00 -> its day ends 08-16
    assert (batch.batch_index, batch.batch_count) == (0, 1)
    assert len(batch_files(refs, None, "streaming")) == 15  # default period D


def test_empty_periods_are_skipped() -> None:
    refs = refs_at([utc(2022, 8, 1, 1), utc(2022, 8, 4, 1)])
    batches = batch_files(refs, BatchingOptions(period="D"), "streaming")
    assert [b.period_start for b in batches] == [utc(2022, 8, 1), utc(2022, 8, 4)]


def test_window_start_inclusive_date_end_includes_the_whole_day() -> None:
    times = [utc(2022, 7, 31, 23, 59, 59), utc(2022, 8, 1), utc(2022, 8, 15), utc(2022, 8, 31), utc(2022, 8, 31, 23, 59, 59, 999999), utc(2022, 9, 1)]
    refs = refs_at(times)
    (batch,) = batch_files(refs, BatchingOptions(start_time="2022-08-01", end_time="2022-08-31"), "payload")
    assert [f.batch_time for f in batch.files] == times[1:5]


def test_datetime_end_is_inclusive_of_that_instant_like_morpheus() -> None:
    times = [utc(2022, 8, 30, 12), utc(2022, 8, 31), utc(2022, 8, 31, 0, 0, 1)]
    refs = refs_at(times)
    (batch,) = batch_files(refs, BatchingOptions(end_time="2022-08-31T00:00:00"), "payload")
    assert [f.batch_time for f in batch.files] == times[:2]
    (batch,) = batch_files(refs, BatchingOptions(start_time="2022-08-30T12:00:00Z"), "payload")
    assert [f.batch_time for f in batch.files] == times


def test_window_leaving_nothing_gives_no_batches() -> None:
    assert batch_files(refs_at(every(1, 5)), BatchingOptions(start_time="2023-01-01"), "streaming") == []
    assert batch_files([], None, "payload") == []


def test_sampling_by_frequency_keeps_the_earliest_file_per_interval() -> None:
    refs = refs_at(every(5, 20))  # 00:00, 05:00, 10:00, ... over ~4 days
    (batch,) = batch_files(refs, BatchingOptions(sampling="1D"), "payload")
    assert [f.batch_time for f in batch.files] == [utc(2022, 8, 1), utc(2022, 8, 2, 1), utc(2022, 8, 3, 2), utc(2022, 8, 4, 3)]
    (batch,) = batch_files(refs, BatchingOptions(sampling_rate_s=12 * 3600), "payload")
    assert [f.batch_time.hour for f in batch.files][:4] == [0, 15, 1, 16]  # 12-hour bins from midnight


def test_sampling_fraction_is_seeded() -> None:
    refs = refs_at(every(1, 100))
    pick = lambda seed: names(batch_files(refs, BatchingOptions(sampling=0.3), "payload", seed=seed)[0])  # noqa: E731
    assert len(pick(0)) == 30
    assert pick(0) == pick(0) and pick(0) != pick(1)
    assert pick(0) == sorted(pick(0))  # still in time order


def test_sampling_count_and_count_larger_than_files() -> None:
    refs = refs_at(every(1, 40))
    (batch,) = batch_files(refs, BatchingOptions(sampling=7), "payload", seed=3)
    assert len(batch.files) == 7 and len(set(names(batch))) == 7
    (batch,) = batch_files(refs, BatchingOptions(sampling=400), "payload")
    assert names(batch) == [r.url for r in refs]


def test_sampling_happens_after_the_window() -> None:
    refs = refs_at(every(12, 20))  # Aug 1 .. Aug 10
    batches = batch_files(refs, BatchingOptions(start_time="2022-08-05", sampling=3, period="D"), "streaming")
    kept = [f for b in batches for f in b.files]
    assert len(kept) == 3 and all(f.batch_time >= utc(2022, 8, 5) for f in kept)


def test_batch_files_validates_data_type() -> None:
    with pytest.raises(ValueError, match="payload"):
        batch_files(refs_at(every(1, 2)), None, "stream")


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------

AZURE = [
    {
        "time": "2022-08-01T00:05:06.806Z",
        "category": "SignInLogs",
        "properties": {
            "userPrincipalName": "alice@example.com",
            "deviceDetail": {"browser": "Chrome 100", "operatingSystem": "Windows 10", "displayName": None},
            "location": {"city": "Austin", "countryOrRegion": "US", "geoCoordinates": {"latitude": 30.2, "longitude": -97.7}},
            "status": {"errorCode": 0},
            "riskEventTypes_v2": ["unfamiliarFeatures", "anonymizedIPAddress"],
            "isInteractive": True,
        },
    },
    {
        "time": "2022-08-01T00:07:00Z",
        "category": "NonInteractiveUserSignInLogs",
        "properties": {
            "userPrincipalName": "bob@example.com",
            "deviceDetail": {"browser": "Edge 99", "operatingSystem": "MacOs"},
            "location": {"city": "Paris", "countryOrRegion": "FR"},
            "status": {"errorCode": 50126, "failureReason": "Invalid username or password."},
            "riskEventTypes_v2": [],
            "isInteractive": False,
        },
    },
]


def test_json_array_is_flattened_with_dotted_columns_and_lists_kept(tmp_path: Path) -> None:
    path = write_json(tmp_path / "AZUREAD_2022-08-01T00_05_06.806Z.json", AZURE)
    frame = read_raw_file(str(path), FileToDfOptions(parser_kwargs={"lines": False, "orient": "records"}))

    assert frame["properties.deviceDetail.browser"].tolist() == ["Chrome 100", "Edge 99"]
    assert frame["properties.location.geoCoordinates.latitude"].iloc[0] == 30.2
    assert pd.isna(frame["properties.location.geoCoordinates.latitude"].iloc[1])
    assert frame["properties.status.failureReason"].isna().iloc[0]
    assert frame["properties.riskEventTypes_v2"].tolist() == [["unfamiliarFeatures", "anonymizedIPAddress"], []]
    assert frame["properties.isInteractive"].tolist() == [True, False]
    assert frame[SOURCE_FILE_COLUMN].tolist() == [str(path)] * 2
    # json_normalize's values and dtypes; columns may be ordered differently (nested keys
    # stay grouped under their parent object)
    assert_flattened_like_json_normalize(frame.drop(columns=SOURCE_FILE_COLUMN), AZURE)


def assert_flattened_like_json_normalize(frame: pd.DataFrame, records: list[dict]) -> None:
    """json_normalize's columns, values and dtypes. Two documented differences: columns may be
    ordered differently (nested keys stay grouped under their parent object), and a column
    with no value in any record is float NaN whether the key was null or absent."""
    expected = pd.json_normalize(records, sep=".")
    assert set(frame.columns) == set(expected.columns)
    for name in expected.columns:
        if expected[name].isna().all():
            assert frame[name].isna().all(), name
        else:
            pd.testing.assert_series_equal(frame[name], expected[name])


def test_large_files_flatten_column_wise_exactly_like_json_normalize() -> None:
    rng = np.random.default_rng(1)
    records = []
    for i in range(1500):
        rec = json.loads(json.dumps(AZURE[i % 2]))
        rec["properties"]["userPrincipalName"] = f"user{rng.integers(1000)}@example.com"
        if i % 7 == 0:
            rec["properties"]["extra"] = {"deep": {"value": i}}
        records.append(rec)
    assert_flattened_like_json_normalize(flatten_records(records), records)


def test_records_arrow_cannot_type_flatten_like_json_normalize() -> None:
    # a key holding a number in one record and text in another, bools mixed with numbers,
    # an integer beyond 64 bits: Arrow refuses them, the pandas paths take over
    for records in (
        [{"a": 1, "b": {"c": "x"}}, {"a": "two", "b": {"c": "y"}}],
        [{"a": True}, {"a": 2}],
        [{"a": 2**70}, {"a": 1}],
    ):
        for copies in (1, 200):  # below and above the column-wise threshold
            many = records * copies
            assert_flattened_like_json_normalize(flatten_records(many), many)


def test_object_or_null_key_gives_only_dotted_columns_in_both_paths() -> None:
    small = [{"a": None}, {"a": {"b": 1}}]
    big = small * 200
    assert list(flatten_records(small).columns) == ["a.b"]
    assert list(flatten_records(big).columns) == ["a.b"]
    mixed = [{"a": "text"}, {"a": {"b": 1}}] * 200  # a non-null scalar keeps its column
    assert sorted(flatten_records(mixed).columns) == ["a", "a.b"]


def test_json_lines_explicit_auto_and_by_extension(tmp_path: Path) -> None:
    lines = "\n".join(json.dumps(r) for r in AZURE) + "\n\n"
    (tmp_path / "a.json").write_text(lines)
    (tmp_path / "b.jsonl").write_text(lines)
    explicit = read_raw_file(str(tmp_path / "a.json"), FileToDfOptions(parser_kwargs={"lines": True}))
    auto = read_raw_file(str(tmp_path / "a.json"))
    by_ext = read_raw_file(str(tmp_path / "b.jsonl"))
    for frame in (explicit, auto, by_ext):
        assert frame["properties.userPrincipalName"].tolist() == ["alice@example.com", "bob@example.com"]
    first_only = read_raw_file(str(tmp_path / "a.json"), FileToDfOptions(parser_kwargs={"lines": True, "nrows": 1}))
    assert len(first_only) == 1


def test_single_object_and_empty_files(tmp_path: Path) -> None:
    (tmp_path / "one.json").write_text(json.dumps(AZURE[0]))
    assert len(read_raw_file(str(tmp_path / "one.json"))) == 1
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "blank.json").write_text("  \n")
    assert read_raw_file(str(tmp_path / "empty.json")).columns.tolist() == [SOURCE_FILE_COLUMN]
    assert len(read_raw_file(str(tmp_path / "blank.json"))) == 0


def test_other_orients_go_through_pandas(tmp_path: Path) -> None:
    (tmp_path / "split.json").write_text(json.dumps({"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]}))
    frame = read_raw_file(str(tmp_path / "split.json"), FileToDfOptions(parser_kwargs={"orient": "split"}))
    assert frame["a"].tolist() == [1, 2] and frame["b"].tolist() == ["x", "y"]


def test_csv_parquet_gzip_and_sniffing(tmp_path: Path) -> None:
    df = pd.DataFrame({"user": ["alice", "bob"], "n": [1, 2], "ok": [True, False]})
    df.to_csv(tmp_path / "a.csv", index=False)
    df.to_csv(tmp_path / "semi.txt", index=False, sep=";")
    df.to_parquet(tmp_path / "a.parquet")
    df.to_parquet(tmp_path / "noext")
    with gzip.open(tmp_path / "DUO_2022-08-01T00_00_00Z.json.gz", "wt") as fh:
        json.dump(AZURE, fh)

    for frame in (
        read_raw_file(str(tmp_path / "a.csv")),
        read_raw_file(str(tmp_path / "a.parquet")),
        read_raw_file(str(tmp_path / "noext")),  # sniffed: PAR1 magic
        read_raw_file(str(tmp_path / "semi.txt"), FileToDfOptions(file_type="csv", parser_kwargs={"sep": ";"})),
    ):
        pd.testing.assert_frame_equal(frame.drop(columns=SOURCE_FILE_COLUMN), df)
    gz = read_raw_file(str(tmp_path / "DUO_2022-08-01T00_00_00Z.json.gz"))
    assert gz["properties.deviceDetail.browser"].tolist() == ["Chrome 100", "Edge 99"]
    cols = read_raw_file(str(tmp_path / "a.parquet"), FileToDfOptions(parser_kwargs={"columns": ["user"]}))
    assert cols.columns.tolist() == ["user", SOURCE_FILE_COLUMN]


@pytest.mark.parametrize(
    ("content", "options", "needle"),
    [
        ('[{"a": 1},, {"a": 2}]', None, "invalid JSON at line 1 column 11"),
        ('[{"a": 1},\n {"a": 2}\n', None, "invalid JSON at line 3"),
        ('{"a": 1}\n{"a": 2\n{"a": 3}\n', None, "invalid JSON on line 2"),
        ('{"a": 1}\n{"a": 2}\n', {"lines": False}, "set parser_kwargs.lines=true"),
        ("[1, 2, 3]", None, "record 0 is a int, not an object"),
        ("[{\"a\": 1}]", {"orient": "split"}, "orient='split'"),
    ],
)
def test_unparseable_json_says_where_and_what_to_do(tmp_path: Path, content: str, options: dict | None, needle: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(FileReadError) as info:
        read_raw_file(str(path), FileToDfOptions(parser_kwargs=options or {}))
    assert needle in info.value.reason
    assert info.value.url == str(path) and str(path) in str(info.value)


def test_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(FileReadError, match="file not found"):
        read_raw_file(str(tmp_path / "gone.json"))
    (tmp_path / "latin.json").write_bytes('[{"city": "Montréal"}]'.encode("latin-1"))
    with pytest.raises(FileReadError, match="parser_kwargs.encoding"):
        read_raw_file(str(tmp_path / "latin.json"))
    frame = read_raw_file(str(tmp_path / "latin.json"), FileToDfOptions(parser_kwargs={"encoding": "latin-1"}))
    assert frame["city"].tolist() == ["Montréal"]


# ---------------------------------------------------------------------------------------------
# load_files and the cache
# ---------------------------------------------------------------------------------------------


def make_duo_files(directory: Path, n_files: int, per_file: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n_files):
        t = utc(2022, 8, 1) + timedelta(hours=3 * i, seconds=6, microseconds=806000)
        records = [
            {
                "timestamp": int(t.timestamp()) + j,
                "txid": f"{i}-{j}",
                "user": {"name": f"user{rng.integers(5)}", "groups": ["staff"] if j % 2 else []},
                "access_device": {"browser": str(rng.choice(["Chrome", "Edge"])), "location": {"city": "Austin", "country": "US"}},
                "result": str(rng.choice(["success", "denied"])),
                "factor": None if j % 3 else "push",
            }
            for j in range(per_file)
        ]
        paths.append(write_json(directory / f"DUO_{t:%Y-%m-%dT%H_%M_%S}.806Z.json", records))
    return paths


def duo_mapping(frame: pd.DataFrame) -> pd.DataFrame:
    """A stand-in for the schema mapping: renames, a boolean map, a UTC timestamp, a dict column."""
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime(frame["timestamp"], unit="s", utc=True),
            "username": frame["user.name"],
            "accessdevicebrowser": frame["access_device.browser"],
            "result": frame["result"] == "success",
            "groups": frame["user.groups"],
            "loc": [{"city": c, "n": 1} for c in frame["access_device.location.city"]],
            "mixed": [1 if i % 2 else "one" for i in range(len(frame))],
            "count": np.arange(len(frame), dtype=np.int64),
            "factor": frame["factor"],
            SOURCE_FILE_COLUMN: frame[SOURCE_FILE_COLUMN],
        }
    )


def test_load_files_concatenates_in_time_order_with_source_file(tmp_path: Path) -> None:
    make_duo_files(tmp_path, 6, 4)
    refs = expand_globs([str(tmp_path / "*.json")])
    result = load_files(refs, max_workers=3)
    assert (result.files_loaded, result.files_from_cache, result.errors) == (6, 0, [])
    assert len(result.frame) == 24 and result.rows == 24
    assert result.frame[SOURCE_FILE_COLUMN].unique().tolist() == [r.url for r in refs]
    assert result.frame["timestamp"].is_monotonic_increasing
    assert result.seconds > 0
    serial = load_files(refs, max_workers=1, progress=True)
    pd.testing.assert_frame_equal(serial.frame, result.frame)


def test_second_load_is_served_from_cache_with_the_same_dtypes_and_values(tmp_path: Path) -> None:
    make_duo_files(tmp_path / "in", 5, 6)
    refs = expand_globs([str(tmp_path / "in" / "*.json")])
    cache = FrameCache(tmp_path / "cache")
    schema = load_schema("duo")
    key = cache.batch_key(refs, None, schema.fingerprint())

    first = read_and_map(refs, schema, cache=cache, cache_key=key)
    second = read_and_map(refs, schema, cache=cache, cache_key=key)

    assert (first.files_loaded, first.files_from_cache) == (5, 0)
    assert (second.files_loaded, second.files_from_cache) == (5, 5)
    assert len(list((tmp_path / "cache").rglob("*.parquet"))) == 1  # one entry for the batch
    # text columns come back as pandas' string dtype (missing: NaN, not None): same values
    def same(df: pd.DataFrame) -> pd.DataFrame:
        return df.astype(object).where(df.notna(), None)

    pd.testing.assert_frame_equal(same(second.frame), same(first.frame))

    # the cache's own round trip keeps awkward columns as they were
    frame = duo_mapping(load_files(refs).frame)
    cache.put("awkward", frame)
    back = cache.get("awkward")
    assert list(back.columns) == list(frame.columns) and len(back) == len(frame)
    assert str(back["timestamp"].dtype).startswith("datetime64") and str(back["timestamp"].dt.tz) == "UTC"
    assert back["result"].dtype == bool and back["count"].dtype == np.int64
    assert isinstance(back["groups"].iloc[1], list) and back["groups"].iloc[1] == ["staff"]
    assert back["loc"].iloc[0] == {"city": "Austin", "n": 1}
    assert back["mixed"].tolist()[:2] == ["one", 1]
    assert back["factor"].isna().sum() == frame["factor"].isna().sum() > 0


def test_changed_file_mapping_or_options_are_never_served_stale(tmp_path: Path) -> None:
    paths = make_duo_files(tmp_path / "in", 3, 4)
    cache = FrameCache(tmp_path / "cache")
    schema = load_schema("duo")

    def load(mapping_id: str, options: FileToDfOptions | None = None):
        refs = expand_globs([str(tmp_path / "in" / "*.json")])  # listed again, as the router does
        return read_and_map(refs, schema, options=options, cache=cache,
                            cache_key=cache.batch_key(refs, options, mapping_id))

    load("v1")
    assert load("v1").files_from_cache == 3
    # rewrite one file (same name, new content, new mtime)
    records = json.loads(paths[1].read_text())
    for r in records:
        r["user"]["name"] = "mallory"
    write_json(paths[1], records, mtime=utc(2030, 1, 1))
    again = load("v1")
    assert again.files_from_cache == 0
    assert (again.frame["username"] == "mallory").sum() == 4

    assert load("v2").files_from_cache == 0
    other = FileToDfOptions(parser_kwargs={"lines": False})
    assert load("v2", other).files_from_cache == 0
    assert load("v2", other).files_from_cache == 3


def test_cache_key_depends_on_every_input(tmp_path: Path) -> None:
    cache = FrameCache(tmp_path)
    ref = FileRef(url="/d/a.json", size=10, modified=utc(2022, 8, 1), batch_time=utc(2022, 8, 1))
    base = cache.key(ref, None, "t")
    variants = [
        cache.key(FileRef(url="/d/b.json", size=10, modified=ref.modified, batch_time=ref.batch_time), None, "t"),
        cache.key(FileRef(url=ref.url, size=11, modified=ref.modified, batch_time=ref.batch_time), None, "t"),
        cache.key(FileRef(url=ref.url, size=10, modified=utc(2022, 8, 2), batch_time=ref.batch_time), None, "t"),
        cache.key(FileRef(url=ref.url, size=10, modified=ref.modified, batch_time=ref.batch_time, etag="e1"), None, "t"),
        cache.key(ref, FileToDfOptions(parser_kwargs={"lines": True}), "t"),
        cache.key(ref, FileToDfOptions(file_type="json"), "t"),
        cache.key(ref, None, "t2"),
    ]
    assert len({base, *variants}) == len(variants) + 1
    assert cache.key(ref, None, "t") == base
    assert cache.key(ref, FileToDfOptions(), "t") == base


def test_corrupt_entry_is_a_miss_and_is_replaced(tmp_path: Path) -> None:
    make_duo_files(tmp_path / "in", 2, 3)
    refs = expand_globs([str(tmp_path / "in" / "*.json")])
    cache = FrameCache(tmp_path / "cache")
    schema = load_schema("duo")
    key = cache.batch_key(refs, None, schema.fingerprint())
    first = read_and_map(refs, schema, cache=cache, cache_key=key)
    cache.path_for(key).write_bytes(b"not parquet")
    again = read_and_map(refs, schema, cache=cache, cache_key=key)
    assert again.files_from_cache == 0 and again.errors == []
    pd.testing.assert_frame_equal(again.frame, first.frame)
    assert read_and_map(refs, schema, cache=cache, cache_key=key).files_from_cache == 2


def test_disabled_cache_and_unknown_versions_are_not_cached(tmp_path: Path) -> None:
    make_duo_files(tmp_path / "in", 2, 3)
    refs = expand_globs([str(tmp_path / "in" / "*.json")])
    off = FrameCache(tmp_path / "off", enabled=False)
    assert off.batch_key(refs, None, "m") is None
    assert off.get(FrameCache(tmp_path / "x").batch_key(refs, None, "m")) is None and not (tmp_path / "off").exists()

    on = FrameCache(tmp_path / "on")
    unversioned = [FileRef(url=r.url, size=r.size, modified=None, batch_time=r.batch_time) for r in refs]
    assert on.batch_key(unversioned, None, "m") is None
    on.put(on.batch_key(refs, None, "m"), load_files(refs).frame)
    assert list((tmp_path / "on").rglob("*.parquet"))
    on.clear()
    assert list((tmp_path / "on").rglob("*.parquet")) == []


def test_unreadable_files_are_reported_while_the_others_load(tmp_path: Path) -> None:
    paths = make_duo_files(tmp_path, 5, 3)
    paths[1].write_text('[{"timestamp": 1,, }]')
    refs = expand_globs([str(tmp_path / "*.json")])
    paths[3].unlink()  # deleted after listing

    result = load_files(refs)
    assert result.files_loaded == 3 and len(result.frame) == 9
    assert sorted(result.frame[SOURCE_FILE_COLUMN].unique()) == sorted([str(paths[i]) for i in (0, 2, 4)])
    reasons = {e.url: e.reason for e in result.errors}
    assert set(reasons) == {str(paths[1]), str(paths[3])}
    assert reasons[str(paths[1])].startswith("invalid JSON at line 1")
    assert "file not found" in reasons[str(paths[3])]


def test_all_files_failing_gives_an_empty_frame(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{{")
    result = load_files(expand_globs([str(tmp_path / "*.json")]))
    assert result.files_loaded == 0 and result.frame.empty and len(result.errors) == 1


def test_plain_urls_load(tmp_path: Path) -> None:
    paths = make_duo_files(tmp_path / "in", 2, 3)
    result = load_files([str(p) for p in paths])
    assert result.files_loaded == 2 and len(result.frame) == 6 and result.files_from_cache == 0


def test_naive_datetimes_are_utc_even_when_options_skip_validation(monkeypatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")  # a local zone must not leak into the window
    time.tzset()
    try:
        opts = BatchingOptions().model_copy(update={"start_time": datetime(2022, 8, 2), "end_time": datetime(2022, 8, 2, 12)})
        (batch,) = batch_files(refs_at(every(6, 16)), opts, "payload")
        assert [f.batch_time for f in batch.files] == [utc(2022, 8, 2), utc(2022, 8, 2, 6), utc(2022, 8, 2, 12)]
        naive = [FileRef(url="a", size=1, modified=None, batch_time=datetime(2022, 8, 2, 1))]
        assert batch_files(naive, BatchingOptions(start_time="2022-08-02T00:30:00Z"), "payload")[0].files == naive
    finally:
        monkeypatch.undo()
        time.tzset()
