"""The ``roster`` scenario family: determinism, raw records the shipped schemas map, label integrity,
rare-but-normal events kept out of the ground truth, the people it promises, config validation.

Fast (a few seconds): small data sets, no model training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from dfp_ray.messages import parse_control_messages
from dfp_ray.schemas import load_schema
from dfp_ray.tools.quality import load_folder_set
from dfp_ray.tools.roster import RARE_KINDS, ROSTER_KINDS, RosterConfig, generate
from dfp_ray.tools.roster.generate import GROUND_TRUTH_COLUMNS, events, people

SOURCES = ("duo", "azure")
CFG = dict(users=48, attack_fraction=0.5, seed=5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("roster") / "data"
    summary = generate(RosterConfig(out=str(out), **CFG))
    return out, summary


def _records(folder: Path) -> list[dict]:
    return [r for path in sorted(folder.glob("*.json")) for r in json.loads(path.read_text())]


def _event_id(source: str, record: dict) -> str:
    return record["txid"] if source == "duo" else record["properties"]["id"]


def _data_files(root: Path) -> dict[str, bytes]:
    """Every file whose bytes must not depend on where the set was written (not the messages or manifest)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.parts[-2] != "control_messages" and p.name != "manifest.json"}


def test_same_seed_writes_the_same_bytes_and_another_seed_differs(tmp_path):
    small = dict(users=12, train_days=14, infer_days=2)
    generate(RosterConfig(out=str(tmp_path / "a"), seed=3, **small))
    generate(RosterConfig(out=str(tmp_path / "b"), seed=3, **small))
    generate(RosterConfig(out=str(tmp_path / "c"), seed=4, **small))
    a, b, c = (_data_files(tmp_path / x) for x in "abc")
    assert a and a == b
    assert a != c
    # a source written alone is the same as in a run of both
    generate(RosterConfig(out=str(tmp_path / "d"), seed=3, sources=["azure"], **small))
    d = _data_files(tmp_path / "d")
    assert d == {k: v for k, v in a.items() if k.startswith("azure")}


@pytest.mark.parametrize("source", SOURCES)
def test_every_record_maps_through_the_shipped_schema(dataset, source):
    """Read as the quality tools and the pipeline read it (``read_and_map`` with the shipped schema):
    no file is unreadable, no record is dropped as malformed, model features are filled."""
    out, _ = dataset
    qset = load_folder_set("roster", out, source, load_schema(source))
    assert len(qset.truth) and qset.rare is not None
    for window, frame in (("training", qset.train), ("inference", qset.infer)):
        assert len(frame) == len(_records(out / source / window))  # no record skipped
        assert frame["username"].notna().all() and frame["event_id"].is_unique
        assert frame["timestamp"].notna().all()
        for col in ("location", "accessdeviceos") if source == "duo" else ("location", "appDisplayName",
                                                                             "deviceDetailoperatingSystem"):
            assert frame[col].notna().all(), col
        if source == "azure":  # the version is stripped: a browser update is not a new browser
            assert not frame["deviceDetailbrowser"].str.contains(r"\d").any()
    for path in (out / source).rglob("*.json"):
        assert "NaN" not in path.read_text()


@pytest.mark.parametrize("source", SOURCES)
def test_ground_truth_points_at_inference_records_with_the_configured_kinds(dataset, source):
    out, summary = dataset
    truth = pd.read_csv(out / source / "ground_truth.csv", dtype=str, keep_default_na=False)
    assert tuple(truth.columns) == GROUND_TRUTH_COLUMNS
    infer = {_event_id(source, r): r for r in _records(out / source / "inference")}
    train = {_event_id(source, r) for r in _records(out / source / "training")}
    assert truth["event_id"].is_unique
    assert set(truth["event_id"]) <= set(infer) and not set(truth["event_id"]) & train
    assert set(truth["kind"]) == set(ROSTER_KINDS)
    assert (truth["source"] == source).all()
    user_key = "user" if source == "duo" else "properties"
    for eid, user in zip(truth["event_id"], truth["username"], strict=True):
        rec = infer[eid]
        assert (rec[user_key]["name"] if source == "duo" else rec[user_key]["userPrincipalName"]) == user
    # one kind per attacked user, about attack_fraction of them
    per_user = truth.groupby("username")["kind"].nunique()
    assert (per_user == 1).all()
    assert abs(len(per_user) - CFG["attack_fraction"] * CFG["users"]) <= 2
    assert summary.anomalous_events[source] == truth["kind"].value_counts().sort_index().to_dict()


def test_only_the_configured_kinds_are_injected(tmp_path):
    generate(RosterConfig(out=str(tmp_path / "d"), users=20, train_days=14, infer_days=2, sources=["duo"],
                          attack_kinds=["credential_stuffing", "token_replay"], attack_fraction=0.4))
    truth = pd.read_csv(tmp_path / "d" / "duo" / "ground_truth.csv", dtype=str)
    assert set(truth["kind"]) == {"credential_stuffing", "token_replay"}
    stuffing = truth[truth["kind"] == "credential_stuffing"].groupby("username").size()
    assert (stuffing >= 5).all() and (stuffing <= 20).all()


@pytest.mark.parametrize("source", SOURCES)
def test_rare_normal_events_are_inference_events_and_not_in_ground_truth(dataset, source):
    out, summary = dataset
    rare = pd.read_csv(out / source / "rare_normal.csv", dtype=str, keep_default_na=False)
    truth = pd.read_csv(out / source / "ground_truth.csv", dtype=str, keep_default_na=False)
    infer = {_event_id(source, r) for r in _records(out / source / "inference")}
    assert list(rare.columns) == ["event_id", "kind"]
    assert rare["event_id"].is_unique and set(rare["event_id"]) <= infer
    assert not set(rare["event_id"]) & set(truth["event_id"])
    assert set(rare["kind"]) <= set(RARE_KINDS)
    assert len(set(rare["kind"])) >= 4  # weekend_oncall needs a weekend in the window: the default has one
    assert summary.rare_normal_events[source] == rare["kind"].value_counts().sort_index().to_dict()


def test_the_people_and_the_attacks_are_as_documented():
    cfg = RosterConfig(out="unused", **CFG)
    roster = people(cfg)
    assert len({p.utc_offset for p in roster}) >= 5
    assert any(p.rotating for p in roster) and any(p.volume == "sparse" for p in roster)
    _, frame = events(cfg, "duo", roster)
    day0 = int(pd.Timestamp(cfg.start_date, tz="UTC").timestamp() * 1000)
    train = frame[frame["utc_day"] < cfg.train_days]
    rows = train.groupby("user").size().reindex(range(cfg.users), fill_value=0)
    assert (rows < 30).any() and rows.max() > 500  # sparse users fall back to the generic model; heavy tails
    normal = frame[frame["kind"] == ""]
    for u, kind in frame.loc[frame["kind"] != "", ["user", "kind"]].drop_duplicates().itertuples(index=False):
        attack = frame[(frame["user"] == u) & (frame["kind"] == kind)]
        start = int(attack["ts"].min())
        day_end = day0 + ((start - day0) // 86_400_000 + 1) * 86_400_000
        own = normal[normal["user"] == u]
        assert not ((own["ts"] >= start) & (own["ts"] < day_end)).any()  # containment
        assert int(attack["ts"].max()) < day_end  # no attack crosses UTC midnight
        seen_cities = set(train.loc[train["user"] == u, "city"])
        if kind in ("impossible_travel", "token_replay", "dormant_wakeup", "credential_stuffing"):
            assert not set(attack["city"]) & seen_cities, kind
        if kind == "new_device_enrolment":
            assert set(attack["city"]) <= seen_cities
            assert not set(attack["auth_name"]) & set(train.loc[train["user"] == u, "auth_name"])
        if kind == "dormant_wakeup":
            last = train.loc[train["user"] == u, "utc_day"]
            assert last.empty or last.max() < cfg.train_days - 10
        if kind == "impossible_travel":
            before = own[own["ts"] < start]["ts"]
            assert len(before) and start - int(before.max()) <= 75 * 60_000
        if kind == "credential_stuffing":
            assert attack["ip"].nunique() == 1 and (~attack["ok"].astype(bool)).sum() >= len(attack) - 1
    oncall = frame[frame["note"] == "weekend_oncall"]
    # local Saturdays and Sundays: Friday to Monday in UTC, across the zones
    assert len(oncall) and ((cfg.start_date.weekday() + oncall["utc_day"]) % 7).isin([4, 5, 6, 0]).all()


def test_control_messages_parse_and_point_at_the_files(dataset):
    out, _ = dataset
    for source in SOURCES:
        for window in ("training", "inference"):
            path = out / "control_messages" / f"{source}_payload_{window}.json"
            result = parse_control_messages(path)
            assert result.ok and len(result.messages) == 1, result.rejections
            (glob,) = json.loads(path.read_text())["inputs"][0]["tasks"][0]["properties"]["files"]
            assert glob == f"{out}/{source}/{window}/*.json" and list(Path("/").glob(glob.lstrip("/")))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["seed"] == CFG["seed"]


@pytest.mark.parametrize(
    "bad",
    [
        {"attack_kinds": ["not_a_kind"]},
        {"attack_kinds": []},
        {"sources": []},
        {"sources": ["okta"]},
        {"file_interval_hours": 5},
        {"users": 2},
        {"train_days": 7},
        {"attack_fraction": 1.5},
        {"colour": "blue"},
    ],
)
def test_config_rejects_bad_options(bad):
    with pytest.raises(ValidationError):
        RosterConfig(out="x", **bad)


def test_refuses_to_overwrite_unless_asked(tmp_path):
    cfg = RosterConfig(out=str(tmp_path / "d"), users=8, train_days=14, infer_days=1, sources=["azure"])
    generate(cfg)
    with pytest.raises(FileExistsError):
        generate(cfg)
    generate(cfg, overwrite=True)
    assert np.all([p.suffix == ".json" for p in (tmp_path / "d" / "azure" / "training").iterdir()])
