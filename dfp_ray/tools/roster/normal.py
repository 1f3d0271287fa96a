"""Normal events of the roster: sessions of a few sign-ins, at local working hours.

Why sessions: people do not sign in at uniformly random moments; a login is followed within
minutes by a few more, often to other applications, and Duo remembers the browser for some
of them. Per-day counters (``logcount``, ``locincrement``, ``appincrement``) therefore climb
in steps, as in real logs, and a burst is not by itself unusual.

Everything is sampled per person over the whole window with numpy (sessions, then events),
so 1,000 people x 30 days take seconds. Rare-but-normal behaviour of the inference window
(:mod:`dfp_ray.tools.roster.rare`) is applied here too: it is normal, only new to the model.
"""

from __future__ import annotations

import numpy as np

from dfp_ray.tools.datagen import ids
from dfp_ray.tools.roster import rare, vocab
from dfp_ray.tools.roster.config import RosterConfig
from dfp_ray.tools.roster.events import DAY_MS, HOUR_MS, Events, concat, empty, events_of, take
from dfp_ray.tools.roster.people import ALL_CITIES, ALL_DEVICES, DUO_APP_ID, Person


def _session_hours(p: Person, days: np.ndarray, start_weekday: int, rng: np.random.Generator) -> np.ndarray:
    """Local start hour of each session (rotating shifts: early or late by ISO week)."""
    start = np.full(len(days), p.start_h)
    if p.rotating:
        week = (days + start_weekday) // 7
        start = np.where((week + p.rotation_phase) % 2 == 0, p.start_h, p.late_start_h)
    hours = start + p.len_h * rng.beta(1.6, 1.6, len(days))
    evening = rng.random(len(days)) < p.evening_share
    return np.where(evening, start + p.len_h + rng.uniform(0.0, 3.0, len(days)), hours)


def _sessions(cfg: RosterConfig, p: Person, rng: np.random.Generator, day0_ms: int, prefixes: np.ndarray,
              rare_kind: str | None, rare_city: int) -> dict[str, np.ndarray]:
    """Every session of one person: local day, UTC start, city, device slot, IP, size, note."""
    days = np.arange(-1, cfg.total_days + 1)
    start_wd = cfg.start_date.weekday()
    weekday = (start_wd + days) % 7
    weekend = weekday >= 5
    rate = np.where(weekend, p.sessions_per_day * p.weekend_rate, p.sessions_per_day)
    if p.volume == "sparse":
        count = (rng.random(len(days)) < rate).astype(np.int64)
    else:
        count = rng.poisson(rate * rng.lognormal(0.0, 0.3, len(days)))
    count[days >= p.active_until] = 0
    oncall = np.zeros(len(days), dtype=bool)
    if rare_kind == "weekend_oncall":
        oncall = weekend & (days >= cfg.train_days)
        count = np.where(oncall, rng.integers(1, 3, len(days)), count)
    day = np.repeat(days, count)
    s = len(day)
    hours = _session_hours(p, day, start_wd, rng)
    offset = np.full(s, p.utc_offset)
    city = p.cities[rng.choice(len(p.cities), size=s, p=p.city_p)]
    note = np.where(np.repeat(oncall, count), "weekend_oncall", "").astype(object)
    travel = np.zeros(s, dtype=bool)
    for first, length, trip_city in p.trips:
        on = (day >= first) & (day < first + length)
        city[on], offset[on], travel[on] = trip_city, ALL_CITIES[trip_city].utc_offset, True
    if rare_kind == "conference_trip":
        on = day >= cfg.train_days
        city[on], offset[on], travel[on] = rare_city, ALL_CITIES[rare_city].utc_offset, True
        note[on] = "conference_trip"
    ts = day0_ms + day * DAY_MS + np.round((hours - offset) * HOUR_MS).astype(np.int64) + rng.integers(0, 60_000, s)
    slot = rng.choice(len(p.devices), size=s, p=p.device_p)
    mobile = np.array([ALL_DEVICES[d].kind != "laptop" for d in p.devices.tolist()])[slot]
    carrier = mobile & (rng.random(s) < 0.6)
    carrier_ips = ids.public_ips(rng, prefixes[city])
    hotel = {c: ids.public_ips(rng, prefixes[[c]])[0] for c in np.unique(city[travel]).tolist()}
    ips = []
    for i, (c, d) in enumerate(zip(city.tolist(), day.tolist(), strict=True)):
        if carrier[i] and not travel[i]:
            ips.append(carrier_ips[i])
        elif travel[i]:
            ips.append(hotel[c])
        elif c == p.home:
            ips.append(p.home_ips[0 if d < p.ip_change_day else 1])
        else:
            ips.append(p.other_ips[c])
    size = 1 + rng.choice(7, size=s, p=p.extra_p)
    return {"ts": ts, "city": city, "slot": slot, "ip": np.array(ips, dtype=object), "size": size, "note": note}


def _expand(sess: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Session -> events: index of each event's session, its position, its timestamp."""
    size = sess["size"]
    of = np.repeat(np.arange(len(size)), size)
    first = np.cumsum(size) - size
    pos = np.arange(len(of)) - first[of]
    gaps = np.clip(rng.lognormal(np.log(45.0), 0.9, len(of)), 4.0, 900.0) * 1000
    gaps[pos == 0] = 0
    run = np.cumsum(gaps)
    ts = sess["ts"][of] + (run - run[first[of]]).astype(np.int64)
    return of, pos, ts


def _duo_columns(p: Person, slot: np.ndarray, pos: np.ndarray, of: np.ndarray, rng: np.random.Generator) -> dict:
    n = len(slot)
    app = p.duo_apps[rng.choice(len(p.duo_apps), size=n, p=p.duo_app_p)]
    winlogon = DUO_APP_ID["Windows Logon"]
    on_laptop = np.array([ALL_DEVICES[d].kind == "laptop" for d in p.devices.tolist()])[slot]
    fallback = next((a for a in p.duo_apps.tolist() if a != winlogon), int(DUO_APP_ID["Microsoft 365 SSO"]))
    app = np.where((app == winlogon) & ~on_laptop, fallback, app)
    sessions = int(of.max()) + 1
    factor = np.array(p.duo_factors, dtype=object)[rng.choice(len(p.duo_factors), size=sessions, p=p.duo_factor_p)][of]
    if p.remember_share > 0:
        remembered = rng.random(n) < np.where(pos > 0, p.remember_share, p.remember_share * 0.25)
        factor = np.where(remembered, "remembered_device", factor)
    auth = np.array([_auth_name(p, f) for f in factor.tolist()], dtype=object)
    reason = np.array([vocab.DUO_FACTORS[f] for f in factor.tolist()], dtype=object)
    return {"app": app, "factor": factor, "auth_name": auth, "reason": reason, "ok": np.ones(n, dtype=bool),
            "client": None, "code": 0, "interactive": np.ones(n, dtype=bool)}


def _auth_name(p: Person, factor: str) -> str | None:
    if factor == "remembered_device":
        return None
    if factor == "webauthn_security_key":
        return p.security_key
    return p.auth_phone


def _azure_columns(p: Person, slot: np.ndarray, pos: np.ndarray, rng: np.random.Generator) -> dict:
    n = len(slot)
    app = p.azure_apps[rng.choice(len(p.azure_apps), size=n, p=p.azure_app_p)]
    client = np.array([p.azure_clients[a] for a in app.tolist()], dtype=object)
    interactive = (pos == 0) | (rng.random(n) >= p.noninteractive_share)
    return {"app": app, "factor": None, "auth_name": None, "reason": vocab.AZURE_OK_REASON, "ok": np.ones(n, dtype=bool),
            "client": client, "code": np.zeros(n, dtype=np.int64), "interactive": interactive}


def _add_mistakes(ev: Events, p: Person, source: str, rng: np.random.Generator) -> Events:
    """Everyday failures: a denied / failed attempt a few seconds before a success it precedes."""
    n = len(ev["ts"])
    rate = p.duo_fail_rate if source == "duo" else p.azure_fail_rate
    eligible = ev["factor"] != "remembered_device" if source == "duo" else ev["interactive"].astype(bool)
    pick = np.flatnonzero(eligible & (rng.random(n) < rate))
    if not len(pick):
        return ev
    fails = take(ev, pick)
    fails["ts"] = fails["ts"] - rng.integers(8_000, 45_000, len(pick))
    fails["ok"] = np.zeros(len(pick), dtype=bool)
    if source == "duo":
        fails["reason"] = np.array([str(rng.choice(vocab.DUO_MISTAKES[f])) for f in fails["factor"].tolist()], dtype=object)
    else:
        codes = np.array(p.azure_fail_codes, dtype=np.int64)[rng.integers(len(p.azure_fail_codes), size=len(pick))]
        fails["code"] = codes
        fails["reason"] = np.array([vocab.AZURE_FAILURES[int(c)] for c in codes.tolist()], dtype=object)
        fails["interactive"] = np.ones(len(pick), dtype=bool)
    return concat([ev, fails])


def person_events(cfg: RosterConfig, p: Person, u: int, source: str, rng: np.random.Generator, day0_ms: int,
                  prefixes: np.ndarray, rare_kind: str | None = None, rare_city: int = -1) -> Events:
    """One person's normal events of both windows (and the day either side), rare-normal included."""
    sess = _sessions(cfg, p, rng, day0_ms, prefixes, rare_kind, rare_city)
    if not len(sess["ts"]):
        return empty()
    of, pos, ts = _expand(sess, rng)
    slot = sess["slot"][of]
    cols = _duo_columns(p, slot, pos, of, rng) if source == "duo" else _azure_columns(p, slot, pos, rng)
    managed = np.array([m for m in p.managed] + [(None, "", None)], dtype=object)
    ev = events_of(
        len(ts), user=u, ts=ts, session=of, city=sess["city"][of], ip=sess["ip"][of], dev=p.devices[slot], slot=slot,
        **cols, auth_city=sess["city"][of], dev_name=managed[slot, 0], dev_id=managed[slot, 1], trust=managed[slot, 2],
        kind="", note=sess["note"][of],
    )
    ev = _add_mistakes(ev, p, source, rng)
    return rare.apply(cfg, p, ev, source, rare_kind, rng, day0_ms)
