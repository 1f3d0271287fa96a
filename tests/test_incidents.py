"""Incidents: one alert per user and driving value, however many events it spans.

Hand-built detections through the pure function, batch by batch as a user actor scores them;
each test fails if grouping, its continuation across batches or its off switch is lost.
"""

from __future__ import annotations

import pandas as pd

from dfp_ray.config import DetectionConfig
from dfp_ray.pipeline.incidents import IncidentTracker, group_incidents, with_incidents
from dfp_ray.schemas import load_schema

DUO = load_schema("duo")
T0 = pd.Timestamp("2024-02-02T08:00:00Z")


def detections(rows: list[tuple[str, str, str, str, float]]) -> pd.DataFrame:
    """(event id, user, driver_1, driver_1_value, hours after T0) per detection."""
    return pd.DataFrame({
        "event_id": [r[0] for r in rows], "username": [r[1] for r in rows],
        "driver_1": [r[2] for r in rows], "driver_1_value": [r[3] for r in rows],
        "timestamp": [T0 + pd.Timedelta(hours=r[4]) for r in rows],
        "anomaly_score": 2.0,
    })


ROWS = [
    ("e1", "ana", "location", "Lyon, FR", 0.0),     # a trip to Lyon ...
    ("e2", "ana", "location", "Lyon, FR", 3.0),
    ("e3", "ana", "location", "Rome, IT", 4.0),     # another new city: another incident
    ("e4", "ana", "hour_of_day", "03:12", 5.0),     # a time driver groups whatever the clock time
    ("e5", "ana", "hour_of_day", "04:40", 6.0),
    ("e6", "bo", "location", "Lyon, FR", 1.0),      # another user: another incident
    ("e7", "ana", "location", "Lyon, FR", 20.0),    # ... within 24 h of the previous one
    ("e8", "ana", "location", "Lyon, FR", 50.0),    # 30 h later: a new incident
]


def as_table(frame: pd.DataFrame) -> dict[str, tuple[str, int]]:
    return {e: (i, int(r)) for e, i, r in zip(frame["event_id"], frame["incident_id"], frame["incident_rank"],
                                             strict=True)}


EXPECTED = {
    "e1": ("e1", 1), "e2": ("e1", 2), "e7": ("e1", 3), "e8": ("e8", 1),
    "e3": ("e3", 1), "e4": ("e4", 1), "e5": ("e4", 2), "e6": ("e6", 1),
}


def test_detections_of_one_user_and_driving_value_within_the_gap_are_one_incident():
    frame = detections(ROWS)
    out = group_incidents(frame, DUO, IncidentTracker.with_gap_hours(24))
    assert list(out.index) == list(frame.index) and list(out["event_id"]) == list(frame["event_id"])
    assert as_table(out) == EXPECTED


def test_incidents_continue_across_batches_as_an_actor_scores_them():
    tracker = IncidentTracker.with_gap_hours(24)
    by_time = sorted(ROWS, key=lambda r: r[4])
    parts = [group_incidents(detections(by_time[i:i + 3]), DUO, tracker) for i in range(0, len(by_time), 3)]
    assert as_table(pd.concat(parts)) == EXPECTED
    # incidents idle for longer than the gap are forgotten: the tracker stays small
    assert set(tracker.open) == {"ana\x1flocation\x1fLyon, FR"}


def test_gap_zero_makes_every_detection_its_own_incident_and_the_default_is_a_day():
    out = group_incidents(detections(ROWS), DUO, IncidentTracker.with_gap_hours(0))
    assert (out["incident_id"] == out["event_id"]).all() and (out["incident_rank"] == 1).all()
    assert DetectionConfig().incident_gap_hours == 24


def test_the_scored_frame_carries_the_columns_on_detections_only():
    scored = pd.concat([detections(ROWS), detections([("n1", "ana", None, None, 2.0)]).assign(anomaly_score=0.5)],
                       ignore_index=True)
    found = group_incidents(scored[scored["anomaly_score"] > 1], DUO, IncidentTracker.with_gap_hours(24))
    out = with_incidents(scored, found)
    assert out.loc[out["event_id"] == "n1", ["incident_id", "incident_rank"]].isna().all(axis=None)
    assert as_table(out.dropna(subset=["incident_id"])) == EXPECTED
    empty = group_incidents(scored.iloc[:0], DUO, IncidentTracker.with_gap_hours(24))
    assert list(empty.columns[-2:]) == ["incident_id", "incident_rank"] and empty.empty
