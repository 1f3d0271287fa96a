"""Write a ``habits`` data set: the same layout as `dfp-ray datagen` (records, ground truth, control messages).

Also written: ``<source>/rare_normal.csv``, the inference events that are normal but rare
(``second_city``, ``off_day_login``, ``late_evening``, ``new_browser_version``), so an evaluation
can report the false-positive rate on them separately.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from dfp_ray.tools.datagen import ids
from dfp_ray.tools.scenarios import attacks, habits, render
from dfp_ray.tools.scenarios.config import HabitsConfig

GROUND_TRUTH_COLUMNS = ("event_id", "source", "username", "timestamp", "kind")
FILE_PREFIX = {"duo": "DUO", "azure": "AZUREAD"}
STREAMS = {"duo": 1, "azure": 2}


class HabitsSummary(BaseModel):
    out: str
    users: int
    records: dict[str, dict[str, int]]
    anomalous_events: dict[str, dict[str, int]]
    rare_normal_events: dict[str, dict[str, int]]
    elapsed_s: float

    def text(self) -> str:
        lines = [f"wrote {self.out} (habits family, {self.users} users per source, {self.elapsed_s:.1f} s)"]
        for source, recs in self.records.items():
            kinds = ", ".join(f"{k}={v}" for k, v in self.anomalous_events[source].items())
            rare = ", ".join(f"{k}={v}" for k, v in self.rare_normal_events[source].items())
            lines.append(f"  {source}: training {recs['training']:,} / inference {recs['inference']:,} records; "
                         f"anomalous: {kinds}; rare-but-normal in inference: {rare}")
        return "\n".join(lines)


def _message(out: str, source: str, window: str, task: str) -> dict:
    return {
        "tasks": [
            {"type": "load", "properties": {"loader_id": "fsspec", "files": [f"{out}/{source}/{window}/*.json"]}},
            {"type": task, "properties": {}},
        ],
        "metadata": {"data_type": "payload",
                     "file_to_df_options": {"parser_kwargs": {"lines": False, "orient": "records"}}},
    }


def events(cfg: HabitsConfig, source: str) -> tuple[list[habits.Person], pd.DataFrame]:
    """Every event of one source (normal + attacks, containment applied), time-sorted."""
    rng = np.random.default_rng([cfg.seed, STREAMS[source]])
    people = habits.build_people(cfg, rng)
    day0 = int(dt.datetime(cfg.start_date.year, cfg.start_date.month, cfg.start_date.day,
                           tzinfo=dt.timezone.utc).timestamp() * 1000)
    days = [habits.normal_day(cfg, people, d, rng, day0) for d in range(-1, cfg.total_days + 1)]
    frame = pd.concat([d for d in days if len(d)], ignore_index=True)
    for plan in attacks.plan_attacks(cfg, people, rng, day0):
        u, start = int(plan["user"].iloc[0]), int(plan["ts"].iloc[0])
        day_end = day0 + ((start - day0) // habits.DAY_MS + 1) * habits.DAY_MS
        ts, users = frame["ts"].to_numpy(), frame["user"].to_numpy()
        frame = frame[~((users == u) & (ts >= start) & (ts < day_end))]
        frame = pd.concat([frame, plan], ignore_index=True)
    ts = frame["ts"].to_numpy()
    frame = frame[(ts >= day0) & (ts < day0 + cfg.total_days * habits.DAY_MS)]
    frame = habits.fill_versions(cfg, people, frame.sort_values("ts", kind="stable").reset_index(drop=True), day0)
    frame["utc_day"] = (frame["ts"].to_numpy() - day0) // habits.DAY_MS
    # A browser version the user never ran in training is ordinary (an upgrade), but new to the model.
    train = frame[frame["utc_day"] < cfg.train_days]
    seen = set(zip(train["user"], train["device"], train["version"], strict=True))
    infer = (frame["utc_day"] >= cfg.train_days) & (frame["kind"] == "")
    fresh = np.array([(u, d, v) not in seen for u, d, v in zip(frame["user"], frame["device"], frame["version"], strict=True)])
    frame.loc[infer & fresh & (frame["note"] == ""), "note"] = "new_browser_version"
    return people, frame


def generate(cfg: HabitsConfig, *, overwrite: bool = False) -> HabitsSummary:
    t0 = time.perf_counter()
    out = Path(cfg.out)
    for name in [*cfg.sources, "control_messages"]:
        if (out / name).exists() and not overwrite:
            raise FileExistsError(f"{out / name} exists; pass --overwrite or choose another --out folder")
    records, anomalous, rare = {}, {}, {}
    prefixes = ids.city_prefixes(cfg.seed + 1000, len(habits.ALL_CITIES))
    for source in cfg.sources:
        people, frame = events(cfg, source)
        rng = np.random.default_rng([cfg.seed, STREAMS[source], 9])
        event_ids = ids.uuids(rng, len(frame))
        ips = render.addresses(frame, prefixes, rng)
        frame["event_id"] = event_ids
        slot = frame["utc_day"].to_numpy() * (24 // cfg.file_interval_hours) + (
            (frame["ts"].to_numpy() % habits.DAY_MS) // (cfg.file_interval_hours * 3_600_000)
        )
        counts = {"training": 0, "inference": 0}
        for window in counts:
            folder = out / source / window
            if folder.exists():
                for old in folder.glob("*.json"):
                    old.unlink()
            folder.mkdir(parents=True, exist_ok=True)
        to_records = render.duo_records if source == "duo" else render.azure_records
        positions = np.arange(len(frame))
        for s in np.unique(slot):
            rows = positions[slot == s]
            part = frame.iloc[rows]
            window = "training" if int(part["utc_day"].iloc[0]) < cfg.train_days else "inference"
            stamp = np.datetime_as_string(np.datetime64(int(part["ts"].iloc[0]), "ms"), unit="ms").replace(":", "_")
            recs = to_records(part, [event_ids[i] for i in rows], people, [ips[i] for i in rows])
            (out / source / window / f"{FILE_PREFIX[source]}_{stamp}Z.json").write_text(json.dumps(recs))
            counts[window] += len(rows)
        records[source] = counts
        names = [p.upn if source == "azure" else p.name for p in people]
        labelled = frame[frame["kind"] != ""]
        truth = pd.DataFrame({
            "event_id": labelled["event_id"], "source": source,
            "username": [names[u] for u in labelled["user"]],
            "timestamp": [s + "Z" for s in ids.iso_utc(labelled["ts"].to_numpy(), 3)],
            "kind": labelled["kind"],
        }, columns=list(GROUND_TRUTH_COLUMNS))
        truth.to_csv(out / source / "ground_truth.csv", index=False, lineterminator="\n")
        infer = frame[(frame["utc_day"] >= cfg.train_days) & (frame["kind"] == "") & (frame["note"] != "")]
        infer[["event_id", "note"]].rename(columns={"note": "kind"}).to_csv(
            out / source / "rare_normal.csv", index=False, lineterminator="\n")
        anomalous[source] = {k: int(v) for k, v in truth["kind"].value_counts().sort_index().items()}
        rare[source] = {k: int(v) for k, v in infer["note"].value_counts().sort_index().items()}
    (out / "control_messages").mkdir(parents=True, exist_ok=True)
    for source in cfg.sources:
        for name, window, task in (("training", "training", "training"), ("inference", "inference", "inference")):
            doc = {"inputs": [_message(cfg.out, source, window, task)]}
            (out / "control_messages" / f"{source}_payload_{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    manifest = {"generator": "dfp_ray.tools.scenarios (habits)", "options": cfg.model_dump(mode="json"),
                "records": records, "anomalous_events": anomalous, "rare_normal_events": rare}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return HabitsSummary(out=cfg.out, users=cfg.users, records=records, anomalous_events=anomalous,
                         rare_normal_events=rare, elapsed_s=round(time.perf_counter() - t0, 2))
