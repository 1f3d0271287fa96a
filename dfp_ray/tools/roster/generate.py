"""Write a roster data set: raw files per window, ground truth, rare-normal list, control messages.

The layout is the one `dfp-ray datagen` and the ``habits`` family write (docs/datagen.md),
so :func:`dfp_ray.tools.quality.load_folder_set` and the pipeline's payload messages read it
unchanged. The population is drawn from ``(seed, 0)`` and shared by both sources; each source
then has its own stream ``(seed, 1)`` / ``(seed, 2)`` (events, victims, rare-normal people),
so writing one source alone gives the same files as writing both.
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
from dfp_ray.tools.roster import attacks, normal, rare, render
from dfp_ray.tools.roster.config import RosterConfig
from dfp_ray.tools.roster.events import take
from dfp_ray.tools.roster.people import ALL_CITIES, Person, build_people

GROUND_TRUTH_COLUMNS = ("event_id", "source", "username", "timestamp", "kind")
FILE_PREFIX = {"duo": "DUO", "azure": "AZUREAD"}
STREAMS = {"duo": 1, "azure": 2}
DAY_MS = normal.DAY_MS


class RosterSummary(BaseModel):
    """What was written: records per window, labelled events per kind, rare-normal events per kind."""

    out: str
    users: int
    records: dict[str, dict[str, int]]
    anomalous_events: dict[str, dict[str, int]]
    attacked_users: dict[str, dict[str, int]]
    rare_normal_events: dict[str, dict[str, int]]
    elapsed_s: float

    def text(self) -> str:
        lines = [f"wrote {self.out} (roster family, {self.users} users per source, {self.elapsed_s:.1f} s)"]
        for source, recs in self.records.items():
            kinds = ", ".join(f"{k}={v} ({self.attacked_users[source].get(k, 0)} users)"
                              for k, v in self.anomalous_events[source].items())
            rare_ = ", ".join(f"{k}={v}" for k, v in self.rare_normal_events[source].items())
            lines.append(f"  {source}: training {recs['training']:,} / inference {recs['inference']:,} records; "
                         f"anomalous: {kinds}; rare-but-normal in inference: {rare_}")
        return "\n".join(lines)


def day0_ms(cfg: RosterConfig) -> int:
    start = dt.datetime(cfg.start_date.year, cfg.start_date.month, cfg.start_date.day, tzinfo=dt.timezone.utc)
    return int(start.timestamp() * 1000)


def prefixes(cfg: RosterConfig) -> np.ndarray:
    """A /16 per city, so every address geolocates to its city within a data set."""
    return ids.city_prefixes(cfg.seed + 3000, len(ALL_CITIES))


def people(cfg: RosterConfig) -> list[Person]:
    return build_people(cfg, np.random.default_rng([cfg.seed, 0]), prefixes(cfg))


def events(cfg: RosterConfig, source: str, roster: list[Person] | None = None) -> tuple[list[Person], pd.DataFrame]:
    """Every event of one source in the two windows (normal, rare-normal, attacks; containment applied)."""
    pre = prefixes(cfg)
    roster = people(cfg) if roster is None else roster
    rng = np.random.default_rng([cfg.seed, STREAMS[source]])
    start = day0_ms(cfg)
    victims = attacks.choose_victims(cfg, roster, source, rng)
    rare_plans = rare.choose(cfg, roster, set(victims), source, rng)
    per_user = []
    for u, p in enumerate(roster):
        kind, city = rare_plans.get(u, (None, -1))
        per_user.append(normal.person_events(cfg, p, u, source, rng, start, pre, kind, city))
    ev = attacks.apply_attacks(cfg, roster, victims, per_user, source, rng, start, pre)
    inside = (ev["ts"] >= start) & (ev["ts"] < start + cfg.total_days * DAY_MS)
    ev = take(ev, np.flatnonzero(inside))
    order = np.lexsort((ev["user"], ev["ts"]))
    frame = pd.DataFrame(take(ev, order))
    frame["utc_day"] = (frame["ts"].to_numpy() - start) // DAY_MS
    # Rare-normal notes count in the inference window only (a conference trip may begin the evening before).
    frame.loc[frame["utc_day"].to_numpy() < cfg.train_days, "note"] = ""
    return roster, frame


def _message(out: str, source: str, window: str, task: str) -> dict:
    return {
        "tasks": [
            {"type": "load", "properties": {"loader_id": "fsspec", "files": [f"{out}/{source}/{window}/*.json"]}},
            {"type": task, "properties": {}},
        ],
        "metadata": {"data_type": "payload",
                     "file_to_df_options": {"parser_kwargs": {"lines": False, "orient": "records"}}},
    }


def generate(cfg: RosterConfig, *, overwrite: bool = False) -> RosterSummary:
    """Write the data set under ``cfg.out``; refuses an existing source folder unless ``overwrite``."""
    t0 = time.perf_counter()
    out = Path(cfg.out)
    for name in [*cfg.sources, "control_messages"]:
        if (out / name).exists() and not overwrite:
            raise FileExistsError(f"{out / name} exists; pass --overwrite or choose another --out folder")
    records, anomalous, attacked, rare_counts = {}, {}, {}, {}
    start = day0_ms(cfg)
    pre = prefixes(cfg)
    roster = people(cfg)
    for source in cfg.sources:
        roster, frame = events(cfg, source, roster)
        rng = np.random.default_rng([cfg.seed, STREAMS[source], 9])
        event_ids = ids.uuids(rng, len(frame))
        frame["event_id"] = event_ids
        if source == "duo":
            auth_city = np.maximum(frame["auth_city"].to_numpy().astype(np.int64), 0)
            extra = ids.public_ips(rng, pre[auth_city])
            tenant = ""
        else:
            extra = ids.uuids(rng, len(frame))
            tenant = ids.uuids(np.random.default_rng([cfg.seed, 0, 7]), 1)[0]
        slot = frame["utc_day"].to_numpy() * (24 // cfg.file_interval_hours) + (
            (frame["ts"].to_numpy() % DAY_MS) // (cfg.file_interval_hours * 3_600_000))
        counts = {"training": 0, "inference": 0}
        for window in counts:
            folder = out / source / window
            if folder.exists():
                for old in folder.glob("*.json"):
                    old.unlink()
            folder.mkdir(parents=True, exist_ok=True)
        values = {c: ids.column_values(frame, c) for c in frame.columns}
        bounds = np.flatnonzero(np.diff(slot)) + 1
        for lo, hi in zip(np.concatenate([[0], bounds]).tolist(), np.concatenate([bounds, [len(frame)]]).tolist(),
                          strict=True):
            if hi <= lo:
                continue
            window = "training" if values["utc_day"][lo] < cfg.train_days else "inference"
            stamp = np.datetime_as_string(np.datetime64(values["ts"][lo], "ms"), unit="ms").replace(":", "_")
            cols = {c: values[c][lo:hi] for c in values}
            if source == "duo":
                recs = render.duo_records(cols, event_ids[lo:hi], roster, start, extra[lo:hi])
            else:
                recs = render.azure_records(cols, event_ids[lo:hi], extra[lo:hi], roster, start, tenant)
            (out / source / window / f"{FILE_PREFIX[source]}_{stamp}Z.json").write_text(json.dumps(recs))
            counts[window] += hi - lo
        records[source] = counts
        names = [p.upn if source == "azure" else p.name for p in roster]
        labelled = frame[frame["kind"] != ""]
        truth = pd.DataFrame({
            "event_id": labelled["event_id"], "source": source,
            "username": [names[u] for u in labelled["user"]],
            "timestamp": [s + "Z" for s in ids.iso_utc(labelled["ts"].to_numpy(), 3)],
            "kind": labelled["kind"],
        }, columns=list(GROUND_TRUTH_COLUMNS))
        truth.to_csv(out / source / "ground_truth.csv", index=False, lineterminator="\n")
        noted = frame[(frame["utc_day"] >= cfg.train_days) & (frame["kind"] == "") & (frame["note"] != "")]
        noted[["event_id", "note"]].rename(columns={"note": "kind"}).to_csv(
            out / source / "rare_normal.csv", index=False, lineterminator="\n")
        anomalous[source] = {k: int(v) for k, v in truth["kind"].value_counts().sort_index().items()}
        attacked[source] = {k: int(v) for k, v in
                            labelled.drop_duplicates("user")["kind"].value_counts().sort_index().items()}
        rare_counts[source] = {k: int(v) for k, v in noted["note"].value_counts().sort_index().items()}
    (out / "control_messages").mkdir(parents=True, exist_ok=True)
    for source in cfg.sources:
        for window in ("training", "inference"):
            doc = {"inputs": [_message(cfg.out, source, window, window)]}
            (out / "control_messages" / f"{source}_payload_{window}.json").write_text(json.dumps(doc, indent=2) + "\n")
    manifest = {"generator": "dfp_ray.tools.roster (roster)", "options": cfg.model_dump(mode="json"),
                "records": records, "anomalous_events": anomalous, "attacked_users": attacked,
                "rare_normal_events": rare_counts}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return RosterSummary(out=cfg.out, users=cfg.users, records=records, anomalous_events=anomalous,
                         attacked_users=attacked, rare_normal_events=rare_counts,
                         elapsed_s=round(time.perf_counter() - t0, 2))
