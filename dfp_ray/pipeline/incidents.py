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

import numpy as np
import pandas as pd

from dfp_ray.row_keys import row_keys
from dfp_ray.schemas import SourceSchema

INCIDENT_COLUMNS = ("incident_id", "incident_rank")
_SEP = "\x1f"


@dataclass
class IncidentTracker:
    """Open incidents by key (user, driver, value): ``[incident id, detections so far, last time (ns)]``."""

    gap_ns: int
    open: dict[str, list] = field(default_factory=dict)

    @classmethod
    def hours(cls, gap_hours: float) -> IncidentTracker:
        return cls(gap_ns=int(round(gap_hours * 3_600e9)))

    def forget_before(self, time_ns: int) -> None:
        """Drop incidents whose last detection is more than the gap before ``time_ns``."""
        limit = time_ns - self.gap_ns
        self.open = {k: v for k, v in self.open.items() if v[2] >= limit}


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
        for column in INCIDENT_COLUMNS:
            out[column] = pd.Series(dtype=object if column == "incident_id" else "Int64")
        return out
    ids = row_keys(out, schema.event_id_column).astype(str).to_numpy(dtype=object)
    if tracker.gap_ns <= 0:  # grouping off: every detection is an incident of its own
        out["incident_id"], out["incident_rank"] = ids, np.ones(n, dtype=np.int64)
        return out
    keys = incident_keys(out, schema)
    times = pd.to_datetime(out[schema.time_column], utc=True, errors="coerce")
    t = times.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    order = np.lexsort((t, keys))  # by key, then time
    k, tt, ev = keys[order], t[order], ids[order]
    first_of_key = np.r_[True, k[1:] != k[:-1]]
    gap_break = np.r_[True, (tt[1:] - tt[:-1]) > tracker.gap_ns]
    starts = first_of_key | gap_break
    # the first detection of a key continues the tracker's open incident if it is recent enough
    carried = np.zeros(n, dtype=bool)
    carry_id = np.empty(n, dtype=object)
    carry_rank = np.zeros(n, dtype=np.int64)
    for i in np.flatnonzero(first_of_key):
        state = tracker.open.get(k[i])
        if state is not None and 0 <= tt[i] - state[2] <= tracker.gap_ns:
            carried[i], carry_id[i], carry_rank[i] = True, state[0], state[1]
    incident_no = np.cumsum(starts) - 1  # one number per run of rows of one incident
    first_row = np.flatnonzero(starts)
    run_id = np.where(carried[first_row], carry_id[first_row], ev[first_row])
    run_offset = carry_rank[first_row]
    position = np.arange(n) - first_row[incident_no]
    sorted_id = run_id[incident_no]
    sorted_rank = position + 1 + run_offset[incident_no]
    incident_id = np.empty(n, dtype=object)
    incident_rank = np.empty(n, dtype=np.int64)
    incident_id[order], incident_rank[order] = sorted_id, sorted_rank
    out["incident_id"] = incident_id
    out["incident_rank"] = incident_rank
    # the last run of every key is the open incident now
    last_of_key = np.r_[k[1:] != k[:-1], True]
    for i in np.flatnonzero(last_of_key):
        tracker.open[k[i]] = [sorted_id[i], int(sorted_rank[i]), int(tt[i])]
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
