"""Rare-but-normal behaviour of the inference window, listed in ``<source>/rare_normal.csv``.

Why: every real tenant has legitimate events that are new to a user's model. An evaluation
should report how often they are flagged, apart from the false-positive rate on ordinary
events. None of them is in ``ground_truth.csv``.

| kind | what the person does (everything else is usual) |
| --- | --- |
| ``dst_shift`` | the region moved its clocks: every inference event one hour earlier in UTC |
| ``new_phone`` | a new phone (Duo: a new auth device name, same number; Azure: the phone's new device record) |
| ``conference_trip`` | the whole inference window in a conference city, usual devices and apps, usual hours local there |
| ``weekend_oncall`` | someone who never works weekends signs in a few times on the weekend, at usual hours |
| ``password_reset_burst`` | 2-3 normal failures (Azure: old password, 50126; Duo: MFA timeouts / mistyped passcodes) then success |
"""

from __future__ import annotations

import numpy as np

from dfp_ray.tools.datagen import ids
from dfp_ray.tools.roster import vocab
from dfp_ray.tools.roster.config import RARE_KINDS, RosterConfig
from dfp_ray.tools.roster.events import Events, concat, take
from dfp_ray.tools.roster.people import ALL_CITIES, NEVER, TRAVEL_IDS, Person

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
SHARE = 0.05  # of the users per kind (at least one where someone fits)


def _fits(cfg: RosterConfig, p: Person, kind: str, source: str) -> bool:
    active = p.active_until == NEVER
    if kind == "dst_shift":
        return active and p.dst and p.volume != "sparse"
    if kind == "new_phone":
        if source == "duo":
            return active and any(f in ("duo_push", "phone_call", "duo_mobile_passcode") for f in p.duo_factors)
        return active and p.managed[1][0] is not None and p.device_p[1] >= 0.1
    if kind == "conference_trip":
        return active and p.volume == "regular"
    if kind == "weekend_oncall":
        days = np.arange(cfg.train_days, cfg.total_days)
        has_weekend = bool((((cfg.start_date.weekday() + days) % 7) >= 5).any())
        return active and has_weekend and p.weekend_rate == 0 and p.volume == "regular"
    return active  # password_reset_burst


def choose(cfg: RosterConfig, people: list[Person], taken: set[int], source: str,
           rng: np.random.Generator) -> dict[int, tuple[str, int]]:
    """user -> (rare kind, conference city or -1): a few people per kind, none of them attacked."""
    plans: dict[int, tuple[str, int]] = {}
    want = max(1, int(round(SHARE * len(people))))
    for kind in RARE_KINDS:
        pool = [u for u in rng.permutation(len(people)).tolist()
                if u not in taken and u not in plans and _fits(cfg, people[u], kind, source)]
        for u in pool[:want]:
            city = -1
            if kind == "conference_trip":
                p = people[u]
                options = [c for c in TRAVEL_IDS.tolist() if ALL_CITIES[c].country not in p.countries]
                city = int(rng.choice(options or TRAVEL_IDS.tolist()))
            plans[u] = (kind, city)
    return plans


def apply(cfg: RosterConfig, p: Person, ev: Events, source: str, kind: str | None,
          rng: np.random.Generator, day0_ms: int) -> Events:
    """The rare kinds that change recorded values (the others shape the sessions themselves)."""
    if kind not in ("dst_shift", "new_phone", "password_reset_burst") or not len(ev["ts"]):
        return ev
    infer_start = day0_ms + cfg.train_days * DAY_MS
    ts = ev["ts"]
    if kind == "dst_shift":
        on = ts >= infer_start + HOUR_MS
        ev["ts"] = np.where(on, ts - HOUR_MS, ts)
        ev["note"] = np.where(on, "dst_shift", ev["note"]).astype(object)
        return ev
    if kind == "new_phone":
        on = ts >= infer_start
        if source == "duo":
            on &= ev["auth_name"] == p.auth_phone
            model = str(rng.choice([m for m in vocab.PHONE_MODELS if m != p.phone_model]))
            ev["auth_name"] = np.where(on, f"{model} ({p.phone_number})", ev["auth_name"]).astype(object)
        else:
            on &= ev["slot"] == 1
            old = p.managed[1][0] or ""
            tag = "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ23456789"), 4))
            ev["dev_name"] = np.where(on, old.rsplit("-", 1)[0] + "-" + tag, ev["dev_name"]).astype(object)
            ev["dev_id"] = np.where(on, ids.uuids(rng, 1)[0], ev["dev_id"]).astype(object)
        ev["note"] = np.where(on, "new_phone", ev["note"]).astype(object)
        return ev
    # password_reset_burst: before one successful interactive event of the inference window
    ok = ev["ok"].astype(bool) & ev["interactive"].astype(bool) & (ts >= infer_start + HOUR_MS)
    if source == "duo":
        ok &= ev["factor"] != "remembered_device"
    candidates = np.flatnonzero(ok)
    if not len(candidates):
        return ev
    target = int(rng.choice(candidates))
    n = int(rng.integers(2, 4))
    fails = take(ev, np.full(n, target))
    fails["ts"] = int(ts[target]) - np.cumsum(rng.integers(15_000, 90_000, n))[::-1]
    fails["ok"] = np.zeros(n, dtype=bool)
    if source == "duo":
        factor = str(ev["factor"][target])
        fails["reason"] = np.array([str(rng.choice(vocab.DUO_MISTAKES[factor])) for _ in range(n)], dtype=object)
    else:
        fails["code"] = np.full(n, 50126, dtype=np.int64)
        fails["reason"] = np.full(n, vocab.AZURE_FAILURES[50126], dtype=object)
    ev["note"] = ev["note"].copy()
    ev["note"][target] = "password_reset_burst"
    fails["note"] = np.full(n, "password_reset_burst", dtype=object)
    return concat([ev, fails])
