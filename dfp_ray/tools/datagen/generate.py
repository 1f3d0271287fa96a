"""Orchestration: people -> habits -> attacks -> one UTC day at a time -> files.

Memory stays bounded whatever the number of days: events are sampled per local day of the
users (their own time zones), held until every local day that can reach a UTC day has been
sampled (at most three), then that UTC day is cut into files, rendered to raw records, written
and dropped. Only the ground truth (one row per anomalous event) grows with the run.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import time
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from dfp_ray.tools.datagen import anomalies, azure, duo, ids
from dfp_ray.tools.datagen.config import DatagenConfig
from dfp_ray.tools.datagen.control_messages import control_messages
from dfp_ray.tools.datagen.users import (
    ALL_CITIES,
    STREAM_AZURE,
    STREAM_DUO,
    Population,
    build_population,
    rng_for,
    sample_day,
)
from dfp_ray.tools.datagen.writer import DatasetWriter

log = logging.getLogger(__name__)
DAY_MS = 86_400_000
GROUND_TRUTH_COLUMNS = ("event_id", "source", "username", "timestamp", "kind")

KIND_DESCRIPTIONS = {
    "new_location": "stolen password replayed through rotating proxies abroad (a new country and city per "
    "attempt) from the attacker's own computer; the victim rejects or ignores most MFA prompts",
    "new_device": "account takeover: a newly enrolled phone / registered device and a new computer, signing "
    "in to app after app from cities the victim never visits",
    "failed_burst": "password / passcode spraying through a few rotating proxies: a fast burst of denied "
    "attempts ending in a lock-out (Azure AD: over a legacy protocol)",
    "unusual_app": "privileged systems the user never uses (Duo: SSH/RDP into servers; Azure AD: admin portals "
    "and CLIs) from jump hosts in cloud regions, some refused",
    "off_hours": "activity in the victim's night (01:00-04:00 local) through Tor: unanswered MFA pushes then "
    "approvals (Duo), a script replaying a stolen token (Azure AD)",
}


class SourceSummary(BaseModel):
    users: int
    files: dict[str, int]
    records: dict[str, int]
    anomalies: dict[str, int]
    anomalous_events: int
    attacked_users: list[dict[str, Any]]
    contained_normal_events: int


class DatagenSummary(BaseModel):
    out: str
    sources: dict[str, SourceSummary]
    control_messages: list[str]
    elapsed_s: float

    @property
    def total_records(self) -> int:
        return sum(sum(s.records.values()) for s in self.sources.values())

    def text(self) -> str:
        """Human-readable summary the CLI prints."""
        lines = [f"wrote {self.out}  ({self.total_records:,} records in {self.elapsed_s:.1f} s)"]
        for name, s in self.sources.items():
            kinds = ", ".join(f"{k}={v}" for k, v in s.anomalies.items())
            lines.append(
                f"  {name:6s} users={s.users} training: {s.files['training']} files / {s.records['training']:,} "
                f"records; inference: {s.files['inference']} files / {s.records['inference']:,} records; "
                f"anomalous events={s.anomalous_events} ({kinds}) on {len(s.attacked_users)} users"
            )
        lines.append(f"  control messages: {len(self.control_messages)} files in control_messages/")
        return "\n".join(lines)


def _day0_ms(config: DatagenConfig) -> int:
    start = dt.datetime(
        config.start_date.year, config.start_date.month, config.start_date.day, tzinfo=dt.timezone.utc
    )
    return int(start.timestamp() * 1000)


def _file_name(prefix: str, first_ts_ms: int) -> str:
    stamp = np.datetime_as_string(np.datetime64(int(first_ts_ms), "ms"), unit="ms").replace(":", "_")
    return f"{prefix}_{stamp}Z.json"


class _SourceRun:
    """State of one source while its days are generated."""

    def __init__(self, config: DatagenConfig, pop: Population, source: str, prefix: np.ndarray, day0: int):
        self.config, self.pop, self.source, self.prefix, self.day0 = config, pop, source, prefix, day0
        self.mod = duo if source == "duo" else azure
        self.stream = STREAM_DUO if source == "duo" else STREAM_AZURE
        self.prof = self.mod.build_profiles(pop, rng_for(config.seed, self.stream, 0), prefix)
        self.attacks = anomalies.build_attacks(config, pop, source, self.stream, self.prof, prefix, day0)
        self.buffer: pd.DataFrame | None = None
        self.files = {"training": 0, "inference": 0}
        self.records = {"training": 0, "inference": 0}
        self.truth: list[pd.DataFrame] = []
        self.placed: list[tuple[anomalies.AttackPlan, int]] = []
        self.contained = 0  # victims' normal events dropped by containment

    def usernames(self) -> list[str]:
        return self.pop.duo_username if self.source == "duo" else self.pop.upn

    def add_local_day(self, local_day: int) -> None:
        rng = rng_for(self.config.seed, self.stream, 1, local_day + 1)
        day = sample_day(self.pop, self.config, local_day, rng, self.day0)
        frame = self.mod.normal_events(day, self.prof, self.pop, rng, self.prefix)
        self.buffer = frame if self.buffer is None else pd.concat([self.buffer, frame], ignore_index=True)

    def flush_utc_day(self, d: int, writer: DatasetWriter) -> None:
        buf = self.buffer
        utc_day = (buf["ts"].to_numpy() - self.day0) // DAY_MS
        frame = buf[utc_day == d]
        self.buffer = buf[utc_day > d].reset_index(drop=True)
        for plan in self.attacks.get(d, []):
            events, start = anomalies.place(plan, frame, self.day0)
            self.placed.append((plan, start))
            # Containment: the victim's own activity stops once the attack starts (see anomalies.py).
            keep = ~((frame["user"].to_numpy() == plan.user) & (frame["ts"].to_numpy() >= start))
            self.contained += int((~keep).sum())
            frame = pd.concat([frame[keep], events], ignore_index=True)
        frame = frame.sort_values("ts", kind="stable").reset_index(drop=True)
        window = "training" if d < self.config.train_days else "inference"
        rng = rng_for(self.config.seed, self.stream, 2, d)
        event_ids = ids.uuids(rng, len(frame))
        corr_ids = ids.uuids(rng, len(frame)) if self.source == "azure" else None
        ts = frame["ts"].to_numpy()
        slot_ms = self.config.file_interval_hours * 3_600_000
        slot = (ts - (self.day0 + d * DAY_MS)) // slot_ms
        bounds = np.flatnonzero(np.diff(slot)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(frame)], strict=True):
            if hi <= lo:
                continue
            sub = frame.iloc[lo:hi]
            if self.source == "duo":
                records = duo.render(sub, event_ids[lo:hi], self.pop, self.prof)
            else:
                records = azure.render(sub, event_ids[lo:hi], corr_ids[lo:hi], self.pop, self.prof)
            name = _file_name(self.mod.FILE_PREFIX, int(ts[lo]))
            writer.write_text(f"{self.source}/{window}/{name}", json.dumps(records, allow_nan=False))
            self.files[window] += 1
            self.records[window] += hi - lo
        labelled = frame["kind"].to_numpy() != ""
        if labelled.any():
            idx = np.flatnonzero(labelled)
            names = self.usernames()
            self.truth.append(
                pd.DataFrame(
                    {
                        "event_id": [event_ids[i] for i in idx],
                        "source": self.source,
                        "username": [names[u] for u in frame["user"].to_numpy()[idx]],
                        "timestamp": [s + "Z" for s in ids.iso_utc(ts[idx], 3)],
                        "kind": frame["kind"].to_numpy()[idx],
                    },
                    columns=list(GROUND_TRUTH_COLUMNS),
                )
            )

    def write_ground_truth(self, writer: DatasetWriter) -> pd.DataFrame:
        truth = (
            pd.concat(self.truth, ignore_index=True)
            if self.truth
            else pd.DataFrame({c: pd.Series(dtype=object) for c in GROUND_TRUTH_COLUMNS})
        )
        buf = io.StringIO()
        truth.to_csv(buf, index=False, lineterminator="\n")
        writer.write_text(f"{self.source}/ground_truth.csv", buf.getvalue())
        return truth

    def summary(self, truth: pd.DataFrame) -> SourceSummary:
        counts = truth["kind"].value_counts()
        names = self.usernames()
        attacked = [
            {
                "username": names[p.user],
                "kind": p.kind,
                "start": ids.iso_utc(np.array([start]), 3)[0] + "Z",
                "events": len(p.events),
            }
            for p, start in self.placed
        ]
        return SourceSummary(
            users=self.pop.size,
            files=dict(self.files),
            records=dict(self.records),
            anomalies={k: int(counts.get(k, 0)) for k in self.config.anomaly_kinds},
            anomalous_events=len(truth),
            attacked_users=attacked,
            contained_normal_events=self.contained,
        )


def generate(config: DatagenConfig, *, overwrite: bool = False, progress: bool = True) -> DatagenSummary:
    """Write a complete data set (records, ground truth, control messages, manifest) to ``config.out``.

    Deterministic: the same config (seed included) writes byte-identical files.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    writer = DatasetWriter(config.out, config.storage_options)
    writer.prepare([*config.sources, "control_messages", "manifest.json"], overwrite)
    pop = build_population(config)
    prefix = ids.city_prefixes(config.seed, len(ALL_CITIES))
    day0 = _day0_ms(config)
    summaries: dict[str, SourceSummary] = {}
    bar = tqdm(
        total=len(config.sources) * config.total_days,
        disable=not progress,
        unit="day",
        desc="datagen",
        leave=False,
    )
    try:
        for source in config.sources:
            for window in ("training", "inference"):
                writer.makedirs(f"{source}/{window}")
            run = _SourceRun(config, pop, source, prefix, day0)
            bar.set_description(f"datagen {source}")
            for local_day in range(-1, config.total_days + 1):
                run.add_local_day(local_day)
                if local_day >= 1:
                    run.flush_utc_day(local_day - 1, writer)
                    bar.update(1)
            summaries[source] = run.summary(run.write_ground_truth(writer))
    finally:
        bar.close()

    docs = control_messages(config)
    writer.makedirs("control_messages")
    for name, doc in docs.items():
        writer.write_json(f"control_messages/{name}", doc, indent=2)
    manifest = {
        "generator": "dfp_ray.tools.datagen",
        "format_version": 1,
        "options": config.model_dump(mode="json", exclude={"storage_options"}),
        "windows": {
            "training": {"start": config.train_start.isoformat(), "end": config.train_end.isoformat()},
            "inference": {"start": config.infer_start.isoformat(), "end": config.infer_end.isoformat()},
        },
        "anomaly_kinds": {k: KIND_DESCRIPTIONS[k] for k in config.anomaly_kinds},
        "sources": {name: s.model_dump() for name, s in summaries.items()},
        "control_messages": sorted(docs),
    }
    writer.write_json("manifest.json", manifest, indent=2)
    return DatagenSummary(
        out=config.out,
        sources=summaries,
        control_messages=sorted(docs),
        elapsed_s=round(time.perf_counter() - t0, 3),
    )
