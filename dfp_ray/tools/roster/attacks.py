"""Attacks of the roster family, written to ``ground_truth.csv`` (every event of every attack).

Each victim gets one attack on one inference day. Several change only one or two features of
the victim's habits, as account takeovers that a security team would still label do:

| kind | what changes (the rest is the victim's usual device, app, factor) |
| --- | --- |
| ``impossible_travel`` | 1-3 successful sign-ins from a far country 15-70 minutes after one of the victim's own, usual hours (Azure: the attacker's machine has no device record) |
| ``token_replay`` | a stolen session replayed from a new country at a night hour of the victim: Duo remembers the browser (``remembered_device``, for victims who have that habit), Azure: non-interactive token use with the victim's device claims |
| ``credential_stuffing`` | 5-20 denied / failed attempts seconds apart from one hosting address, sometimes followed by one success |
| ``new_device_enrolment`` | a new computer (browser, OS; Azure: newly registered device) and a new Duo phone, at the victim's usual hours, in the victim's home city |
| ``dormant_wakeup`` | an account quiet for more than ten days of training resumes from a new country, at the victim's usual hours |

Containment, as in the other families: from the attack's first event to the end of that UTC
day the victim's own events are dropped (the account is locked), so no normal event carries
counters the attacker raised. Attacks never cross UTC midnight.
"""

from __future__ import annotations

import numpy as np

from dfp_ray.tools.datagen import ids
from dfp_ray.tools.roster import vocab
from dfp_ray.tools.roster.config import RosterConfig
from dfp_ray.tools.roster.events import DAY_MS, HOUR_MS, Events, concat, events_of, take
from dfp_ray.tools.roster.people import (
    ALL_CITIES,
    ALL_DEVICES,
    AZURE_APP_ID,
    DUO_APP_ID,
    ELSEWHERE_IDS,
    HOSTING_IDS,
    LAPTOP_IDS,
    NEVER,
    TRAVEL_IDS,
    Person,
)

MINUTE_MS = 60_000


def _fits(p: Person, kind: str, source: str) -> bool:
    active = p.active_until == NEVER
    if kind == "dormant_wakeup":
        return not active
    if kind in ("impossible_travel", "token_replay"):
        if kind == "token_replay" and source == "duo" and p.remember_share == 0:
            return False
        return active and p.volume != "sparse"
    return active


def choose_victims(cfg: RosterConfig, people: list[Person], source: str, rng: np.random.Generator) -> dict[int, str]:
    """user -> kind, kinds in turn; a kind no one (left) fits drops out of the rotation."""
    n = int(round(cfg.attack_fraction * len(people)))
    if cfg.attack_fraction > 0:
        n = max(n, min(len(cfg.attack_kinds), len(people) // 2))
    kinds = list(cfg.attack_kinds)
    order = rng.permutation(len(people)).tolist()
    victims: dict[int, str] = {}
    i = 0
    while len(victims) < n and kinds:
        kind = kinds[i % len(kinds)]
        pick = next((u for u in order if u not in victims and _fits(people[u], kind, source)), None)
        if pick is None:
            kinds.remove(kind)
            continue
        victims[pick] = kind
        i += 1
    return victims


def _offset_gap(a: float, b: float) -> float:
    d = abs(a - b) % 24
    return min(d, 24 - d)


def _far_city(p: Person, rng: np.random.Generator, min_hours: float) -> int:
    """A city in a country the victim never signs in from, ``min_hours`` or more of time zones away."""
    home = ALL_CITIES[p.home]
    pool = [c for c in np.concatenate([ELSEWHERE_IDS, TRAVEL_IDS]).tolist()
            if ALL_CITIES[c].country not in p.countries and _offset_gap(ALL_CITIES[c].utc_offset, home.utc_offset) >= min_hours]
    if not pool:
        pool = [c for c in ELSEWHERE_IDS.tolist() if ALL_CITIES[c].country not in p.countries] or ELSEWHERE_IDS.tolist()
    return int(rng.choice(pool))


def _fold(day0_ms: int, day: int, local_hour: float, offset: float) -> int:
    """Epoch ms of a local hour, folded into UTC day ``day``."""
    return day0_ms + day * DAY_MS + int(((local_hour - offset) % 24.0) * HOUR_MS)


def _usual_hour(p: Person, day: int, start_weekday: int, rng: np.random.Generator) -> float:
    start = p.start_h
    if p.rotating and (((day + start_weekday) // 7) + p.rotation_phase) % 2:
        start = p.late_start_h
    return start + p.len_h * float(rng.uniform(0.2, 0.8))


def _base(p: Person, u: int, kind: str, city: int, ip: str, source: str) -> dict:
    """Columns of an attack's events on the victim's usual laptop, apps and factor."""
    factor = _remote_factor(p) if kind != "new_device_enrolment" else "duo_push"
    return {
        "user": u, "session": -1, "city": city, "ip": ip, "dev": int(p.devices[0]), "slot": 0,
        "factor": factor if source == "duo" else None,
        "auth_name": p.auth_phone if source == "duo" else None,
        "auth_city": p.home, "ok": True,
        "reason": vocab.DUO_FACTORS[factor] if source == "duo" else vocab.AZURE_OK_REASON,
        "code": 0, "interactive": True, "dev_name": p.managed[0][0], "dev_id": p.managed[0][1],
        "trust": p.managed[0][2], "kind": kind, "note": "",
    }


def _apps(p: Person, n: int, source: str, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """The victim's own applications, as an attacker from elsewhere reaches them: Duo's Windows
    Logon needs the victim's machine, and a replayed browser session is a web application's."""
    if source == "duo":
        keep = np.array([a != DUO_APP_ID["Windows Logon"] and not (kind == "token_replay" and vocab.DUO_APPS[a].browserless)
                         for a in p.duo_apps.tolist()])
        if not keep.any():
            return np.full(n, DUO_APP_ID["Microsoft 365 SSO"]), None
        apps, prob = p.duo_apps[keep], p.duo_app_p[keep]
        return apps[rng.choice(len(apps), size=n, p=prob / prob.sum())], None
    app = p.azure_apps[rng.choice(len(p.azure_apps), size=n, p=p.azure_app_p)]
    return app, np.array([p.azure_clients[a] for a in app.tolist()], dtype=object)


def _remote_factor(p: Person) -> str:
    """The victim's factor an attacker elsewhere gets through (a push or call the victim approves, a
    phished passcode); a hardware key stays with its owner, so its users are pushed instead."""
    usable = [f for f in p.duo_factors if f != "webauthn_security_key"]
    return usable[0] if usable else "duo_push"


def plan_attack(cfg: RosterConfig, p: Person, u: int, kind: str, source: str, own: Events,
                rng: np.random.Generator, day0_ms: int, prefixes: np.ndarray) -> Events:
    """The labelled events of one attack on person ``u`` (``own``: that person's normal events)."""
    start_wd = cfg.start_date.weekday()
    day = cfg.train_days + int(rng.integers(cfg.infer_days))
    n = {"impossible_travel": int(rng.integers(1, 4)), "token_replay": int(rng.integers(2, 6)),
         "credential_stuffing": int(rng.integers(5, 21)), "new_device_enrolment": int(rng.integers(2, 6)),
         "dormant_wakeup": int(rng.integers(2, 7))}[kind]
    gap = (2_000, 25_000) if kind == "credential_stuffing" else (20_000, 480_000)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(*gap, n - 1))]).astype(np.int64)
    span = int(offsets[-1])
    start = -1
    if kind == "impossible_travel":
        ts = own["ts"]
        lo = day0_ms + cfg.train_days * DAY_MS
        utc_day = (ts - day0_ms) // DAY_MS
        hi = day0_ms + cfg.total_days * DAY_MS
        fits = (ts >= lo) & (ts < hi) & own["ok"].astype(bool) & (
            ts + 70 * MINUTE_MS + span < day0_ms + (utc_day + 1) * DAY_MS - MINUTE_MS)
        anchors = np.flatnonzero(fits)
        if len(anchors):
            anchor = int(ts[int(rng.choice(anchors))])
            day = int((anchor - day0_ms) // DAY_MS)
            start = anchor + int(rng.integers(15, 71)) * MINUTE_MS
    if start < 0:
        if kind == "token_replay":
            local = p.quiet_hour(rng)
        elif kind == "credential_stuffing":
            local = float(rng.uniform(0, 24)) + p.utc_offset
        else:
            local = _usual_hour(p, day, start_wd, rng)
        start = _fold(day0_ms, day, local, p.utc_offset)
    day_lo, day_hi = day0_ms + day * DAY_MS, day0_ms + (day + 1) * DAY_MS
    start = int(min(max(start, day_lo + MINUTE_MS), day_hi - span - MINUTE_MS))

    if kind == "credential_stuffing":
        city = int(rng.choice([c for c in HOSTING_IDS.tolist() if c not in set(p.cities.tolist())]))
    elif kind == "new_device_enrolment":
        city = p.home
    else:
        city = _far_city(p, rng, 4.0 if kind == "impossible_travel" else 3.0)
    ip = ids.public_ips(rng, prefixes[[city]])[0]
    cols = _base(p, u, kind, city, ip, source)
    app, client = _apps(p, n, source, kind, rng)
    cols["app"], cols["client"] = app, client
    cols["ts"] = start + offsets
    if kind in ("impossible_travel", "dormant_wakeup") and source == "azure":
        cols["dev_name"], cols["dev_id"], cols["trust"] = None, "", None  # the attacker's machine
    if kind in ("impossible_travel", "dormant_wakeup") and source == "duo" and p.remember_share > 0 and n > 1:
        factor = np.array([cols["factor"]] * n, dtype=object)
        factor[1:] = np.where(rng.random(n - 1) < p.remember_share, "remembered_device", factor[1:])
        cols["factor"] = factor
        cols["reason"] = np.array([vocab.DUO_FACTORS[f] for f in factor.tolist()], dtype=object)
        cols["auth_name"] = np.where(factor == "remembered_device", None, cols["auth_name"])
    if kind == "token_replay":
        if source == "duo":
            cols["factor"], cols["reason"], cols["auth_name"], cols["auth_city"] = (
                "remembered_device", "remembered_device", None, None)
        else:
            cols["interactive"] = False
    elif kind == "credential_stuffing":
        dev_w = np.array([w for w, _ in vocab.LAPTOPS])
        cols["dev"], cols["slot"] = int(LAPTOP_IDS[rng.choice(len(LAPTOP_IDS), p=dev_w / dev_w.sum())]), -1
        cols["dev_name"], cols["dev_id"], cols["trust"] = None, "", None
        success = rng.random() < 0.35
        ok = np.zeros(n, dtype=bool)
        ok[-1] = success
        cols["ok"] = ok
        if source == "duo":
            push = rng.random(n) < 0.4
            push[-1] = push[-1] or success
            cols["factor"] = np.where(push, "duo_push", "duo_mobile_passcode")
            reason = np.where(push, "no_response", "invalid_passcode").astype(object)
            reason[-1] = "user_approved" if success else reason[-1]
            cols["reason"] = reason
            cols["auth_name"] = p.auth_phone
            cols["auth_city"] = np.where(push, p.home, -1)
        else:
            code = np.where(np.arange(n) >= 10, 50053, 50126)
            code[-1] = 0 if success else code[-1]
            cols["code"] = code
            cols["reason"] = np.array([vocab.AZURE_OK_REASON if c == 0 else vocab.AZURE_FAILURES[int(c)]
                                       for c in code.tolist()], dtype=object)
            cols["app"] = np.full(n, AZURE_APP_ID[vocab.STUFFING_APP])
            cols["client"] = "Browser"
        if source == "duo":
            cols["app"] = np.full(n, DUO_APP_ID[vocab.DUO_STUFFING_APP])
    elif kind == "new_device_enrolment":
        mine = ALL_DEVICES[int(p.devices[0])]
        others = [int(d) for d in LAPTOP_IDS.tolist()
                  if ALL_DEVICES[d].os != mine.os and ALL_DEVICES[d].browser != mine.browser]
        cols["dev"], cols["slot"] = int(rng.choice(others)), -1
        if source == "duo":
            model = str(rng.choice([m for m in vocab.PHONE_MODELS if m != p.phone_model]))
            number = f"{vocab.COUNTRY_CALLING.get(ALL_CITIES[p.home].country, '+1')} {rng.integers(200, 990)}-555-{rng.integers(0, 10000):04d}"
            cols["factor"], cols["reason"], cols["auth_name"] = "duo_push", "user_approved", f"{model} ({number})"
        else:
            tag = "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ23456789"), 7))
            cols["dev_name"], cols["dev_id"], cols["trust"] = f"DESKTOP-{tag}", ids.uuids(rng, 1)[0], "Azure AD registered"
            cols["client"] = np.array([c if c == "Browser" or "Browser" not in vocab.AZURE_APPS[a].clients else "Browser"
                                       for a, c in zip(app.tolist(), client.tolist(), strict=True)], dtype=object)
    if not isinstance(cols["auth_city"], np.ndarray) and cols["auth_city"] is None:
        cols["auth_city"] = -1
    for name in ("dev_name", "trust", "factor", "auth_name", "client"):
        if isinstance(cols[name], np.ndarray):
            cols[name] = cols[name].astype(object)
    return events_of(n, **cols)


def apply_attacks(cfg: RosterConfig, people: list[Person], victims: dict[int, str], per_user: list[Events],
                  source: str, rng: np.random.Generator, day0_ms: int, prefixes: np.ndarray) -> Events:
    """Every person's events with the victims' attacks added and the victim's own events after the
    attack's start dropped to the end of that UTC day (containment)."""
    parts = list(per_user)
    for u, kind in sorted(victims.items()):
        own = per_user[u]
        plan = plan_attack(cfg, people[u], u, kind, source, own, rng, day0_ms, prefixes)
        start = int(plan["ts"][0])
        day_end = day0_ms + ((start - day0_ms) // DAY_MS + 1) * DAY_MS
        keep = ~((own["ts"] >= start) & (own["ts"] < day_end))
        parts[u] = concat([take(own, np.flatnonzero(keep)), plan])
    return concat(parts)
