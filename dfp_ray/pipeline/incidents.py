"""Group detections into incidents: what an analyst triages once, however many events it spans.

A user who signs in from a conference city for four days, or who got a new phone, produces a
detection on every event until their model is retrained: each one is right (the value is new
for that user) and each one after the first tells the analyst nothing new. An **incident** is
the detections of one user with the same top driver (``driver_1``; for a categorical feature
also the same value: a new city is one incident, a second new city another), each within
``detection.incident_gap_hours`` of the previous one. Every detection keeps its own row and
scores; two columns are added:

- ``incident_id``: the event id of the incident's first detection;
- ``incident_rank``: 1 for that first detection, 2 for the next, ... An alert queue that shows
  only ``incident_rank == 1`` shows each incident once.

Incidents continue across batches and messages in the process that scores the user (the user
actor owns its users): :class:`IncidentTracker` keeps, per open incident, its id, size and last
event time, and forgets incidents idle for longer than the gap. A restarted actor starts new
incidents. Scores over HTTP (``POST /dfp/{source}/score``) carry no incident columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from dfp_ray.row_keys import row_keys
from dfp_ray.schemas import SourceSchema

INCIDENT_COLUMNS = ("incident_id", "incident_rank")
_SEP = "\x1f"


class OpenIncident(NamedTuple):
    incident_id: str
    detections: int  # so far
    last_ns: int  # time of its latest detection


@dataclass
class IncidentTracker:
    """Open incidents by key (user, driver, value; see :func:`incident_keys`)."""

    gap_ns: int
    open: dict[str, OpenIncident] = field(default_factory=dict)

    @classmethod
    def with_gap_hours(cls, gap_hours: float) -> IncidentTracker:
        return cls(gap_ns=int(round(gap_hours * 3_600e9)))

    def forget_before(self, time_ns: int) -> None:
        """Drop incidents whose last detection is more than the gap before ``time_ns``."""
        limit = time_ns - self.gap_ns
        self.open = {k: v for k, v in self.open.items() if v.last_ns >= limit}


def incident_keys(detections: pd.DataFrame, schema: SourceSchema) -> np.ndarray:
    """Per detection: user, top driver and, for a categorical driver, its observed value."""
    users = detections[schema.user_column].astype(str).to_numpy(dtype=object)
    if "driver_1" in detections.columns:
        driver = detections["driver_1"].astype(object).where(detections["driver_1"].notna(), "").astype(str)
    else:
        driver = pd.Series("", index=detections.index)
    driver = driver.to_numpy(dtype=object)
    if "driver_1_value" in detections.columns:
        value = detections["driver_1_value"].astype(object).where(detections["driver_1_value"].notna(), "")
        value = value.astype(str).to_numpy(dtype=object)
    else:
        value = np.full(len(detections), "", dtype=object)
    categorical = np.isin(driver, list(schema.features.categorical))
    value = np.where(categorical, value, "")
    return (users + _SEP + driver + _SEP + value).astype(object)


def group_incidents(detections: pd.DataFrame, schema: SourceSchema, tracker: IncidentTracker) -> pd.DataFrame:
    """``detections`` with ``incident_id`` and ``incident_rank`` (same index and row order), and
    ``tracker`` updated. Vectorised over the detections; the tracker is touched once per key."""
    out = detections.copy()
    n = len(out)
    if n == 0:
        out["incident_id"] = pd.Series(dtype=object)
        out["incident_rank"] = pd.Series(dtype=np.int64)
        return out
    ids = row_keys(out, schema.event_id_column).astype(str).to_numpy(dtype=object)
    if tracker.gap_ns <= 0:  # grouping off: every detection is an incident of its own
        out["incident_id"], out["incident_rank"] = ids, np.ones(n, dtype=np.int64)
        return out
    keys = incident_keys(out, schema)
    t = pd.to_datetime(out[schema.time_column], utc=True, errors="coerce").to_numpy(dtype="datetime64[ns]")
    t = t.astype(np.int64)
    order = np.lexsort((t, keys))  # by key, then time
    k, tt, ev = keys[order], t[order], ids[order]
    first_of_key = np.r_[True, k[1:] != k[:-1]]
    starts = first_of_key | np.r_[True, (tt[1:] - tt[:-1]) > tracker.gap_ns]
    run_of = np.cumsum(starts) - 1  # sorted row -> its run (the rows of one incident in this call)
    run_start = np.flatnonzero(starts)
    run_id, run_offset = ev[run_start], np.zeros(len(run_start), dtype=np.int64)
    # a key's first run continues the tracker's open incident when it comes within the gap
    for run, i in zip(run_of[first_of_key], np.flatnonzero(first_of_key), strict=True):
        state = tracker.open.get(k[i])
        if state is not None and 0 <= tt[i] - state.last_ns <= tracker.gap_ns:
            run_id[run], run_offset[run] = state.incident_id, state.detections
    sorted_id = run_id[run_of]
    sorted_rank = np.arange(n) - run_start[run_of] + 1 + run_offset[run_of]
    incident_id = np.empty(n, dtype=object)
    incident_rank = np.empty(n, dtype=np.int64)
    incident_id[order], incident_rank[order] = sorted_id, sorted_rank
    out["incident_id"] = incident_id
    out["incident_rank"] = incident_rank
    # the last run of every key is the open incident now
    for i in np.flatnonzero(np.r_[k[1:] != k[:-1], True]):
        tracker.open[k[i]] = OpenIncident(sorted_id[i], int(sorted_rank[i]), int(tt[i]))
    tracker.forget_before(int(t.max()))
    return out


def with_incidents(scored: pd.DataFrame, detections: pd.DataFrame) -> pd.DataFrame:
    """``scored`` (changed in place and returned) with the incident columns of ``detections``
    (rows of it, by index); empty on the rows that are not detections."""
    if scored.empty or any(c not in detections.columns for c in INCIDENT_COLUMNS):
        return scored
    scored["incident_id"] = pd.Series(detections["incident_id"], dtype=object).reindex(scored.index)
    scored["incident_rank"] = pd.Series(detections["incident_rank"]).reindex(scored.index).astype("Int64")
    return scored
