"""Injected, labelled misuse in the inference window.

Each attacked user gets one attack session of one kind (kinds are assigned round-robin; the
``attacktarget`` user always gets ``new_location``). Every event of the session is labelled.

Two rules shape every session (docs/datagen.md explains them per kind):

1. Attack values are chosen OUTSIDE what the victim's normal habits can produce (see
   ``seen_values`` in duo.py / azure.py): the attacker's browser, OS, phone, client, apps,
   failure reasons and locations are ones the victim's training data never contains.
2. The session is also visible in the per-user-per-day counters (locincrement, appincrement,
   logcount) and the result flag, because with Morpheus's default training (30 SGD steps of
   lr 0.001 for a user with ~150 events) the per-user autoencoder barely learns categorical
   habits: measured z-scores of never-seen categories are only ~1-4, while a counter far
   outside the user's range scores in the tens. So attackers behave as real ones do when it
   matters here: rotating proxies (a new exit city per attempt), bursts, lateral movement
   through many hosts or apps, repeated MFA prompts.

Per-day counters count everything the user did that UTC day, attacker included, so an attack
would raise the counters of the victim's own later events. Sessions are therefore placed after
the victim's last normal event of that UTC day when they fit; otherwise (and for ``off_hours``,
which must happen in the victim's night) the account is contained once the attack starts
(sessions revoked, account disabled) and the victim has no further events that UTC day.

Why over ~400 lines: one small injector per anomaly kind, side by side so their ground-truth
labels stay consistent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dfp_ray.tools.datagen import azure, catalog, duo, ids
from dfp_ray.tools.datagen.config import DatagenConfig
from dfp_ray.tools.datagen.users import ALL_CITIES, N_HOME_CITIES, Population, rng_for

DAY_MS = 86_400_000
ATTACKER_CITY_IDS = np.arange(N_HOME_CITIES, N_HOME_CITIES + len(catalog.ATTACKER_CITIES))
DATACENTER_CITY_IDS = np.arange(
    N_HOME_CITIES + len(catalog.ATTACKER_CITIES),
    N_HOME_CITIES + len(catalog.ATTACKER_CITIES) + len(catalog.DATACENTER_CITIES),
)


@dataclass
class AttackPlan:
    user: int
    kind: str
    utc_day: int  # day index from start_date
    planned_start_ms: int  # the kind's natural time (victim's afternoon / night)
    gap_ms: int  # pause after the victim's last event when placed at the end of their day
    offsets: np.ndarray  # ms from the session start
    events: pd.DataFrame  # source columns, kind filled in, ts filled in by place()

    @property
    def duration_ms(self) -> int:
        return int(self.offsets[-1])


def place(plan: AttackPlan, day_frame: pd.DataFrame, day0_ms: int) -> tuple[pd.DataFrame, int]:
    """Fix the session's start on its UTC day; return (events with ts, containment cut-off).

    Non-night kinds start ``gap_ms`` after the victim's last event that day when the whole
    session still ends before UTC midnight, so no normal event of the victim sees the attack in
    its counters; otherwise they start at the planned time and the victim is contained.
    """
    start = plan.planned_start_ms
    if plan.kind != "off_hours":
        mine = day_frame["ts"].to_numpy()[day_frame["user"].to_numpy() == plan.user]
        if len(mine):
            candidate = int(mine.max()) + plan.gap_ms
            if candidate + plan.duration_ms < day0_ms + (plan.utc_day + 1) * DAY_MS - 60_000:
                start = max(start, candidate)
    events = plan.events.copy()
    events["ts"] = start + plan.offsets
    return events, start


def _offsets(rng: np.random.Generator, n: int, lo_s: float, hi_s: float) -> np.ndarray:
    gaps = rng.uniform(lo_s, hi_s, n) * 1000
    gaps[0] = 0
    return np.cumsum(gaps).astype(np.int64)


def _planned_start(
    rng: np.random.Generator, pop: Population, u: int, kind: str, day: int, duration_ms: int, day0_ms: int
) -> int:
    """The kind's natural start: local night (01:00-04:00) for off_hours, the afternoon otherwise.

    The whole session must end in the same UTC day (so its events share one set of counters).
    """
    if kind == "off_hours":
        lo, hi = 1.0, 4.0
    else:
        lo = pop.work_start[u] + 0.35 * pop.work_len[u]
        hi = pop.work_start[u] + pop.work_len[u] - 0.3
    latest = DAY_MS - duration_ms - 60_000
    for _ in range(200):
        local_h = rng.uniform(lo, hi)
        utc_ms = int(((local_h - pop.utc_offset[u]) % 24) * 3_600_000)
        if 60_000 <= utc_ms <= latest:
            return day0_ms + day * DAY_MS + utc_ms
    return day0_ms + day * DAY_MS + int(rng.integers(60_000, max(latest, 60_001)))


def _pick_device(
    rng: np.random.Generator, candidates, devices, seen: dict[str, set], attr_b: str, attr_o: str
):
    """First candidate (in random order) whose browser AND OS the victim never uses; else browser only."""
    order = rng.permutation(len(candidates))
    for strict in (True, False):
        for i in order:
            d = devices[candidates[i]]
            b, o = getattr(d, attr_b), getattr(d, attr_o)
            if b not in seen["browser"] and (not strict or o not in seen["os"]):
                return candidates[i]
    return candidates[order[0]]


def _exits(rng: np.random.Generator, n: int, pool_size: int | None, per_exit: int = 1) -> np.ndarray:
    """Attacker exit cities per event.

    ``pool_size`` None: a fresh exit every ``per_exit`` events (rotating proxies, Tor); else a
    small pool of exits used in turn (a spraying tool's proxy list).
    """
    if pool_size is None:
        k = -(-n // per_exit)
        fresh = rng.choice(ATTACKER_CITY_IDS, size=k, replace=k > len(ATTACKER_CITY_IDS))
        return fresh[np.arange(n) // per_exit]
    pool = rng.choice(ATTACKER_CITY_IDS, size=pool_size, replace=False)
    return pool[np.arange(n) % pool_size]


def _other_cities(rng: np.random.Generator, pop: Population, u: int, k: int) -> np.ndarray:
    """``k`` cities the victim never visits (not home, no trip), same country first."""
    home = int(pop.home[u])
    visited = {home, int(pop.second[u])} | {c for _, _, c in pop.trips[u]}
    candidates = [c for c in range(N_HOME_CITIES) if c not in visited]
    same = [c for c in candidates if ALL_CITIES[c].code == ALL_CITIES[home].code]
    ordered = list(rng.permutation(same)) + list(rng.permutation([c for c in candidates if c not in same]))
    return np.array(ordered[:k], dtype=np.int64)


def plan_victims(config: DatagenConfig, pop: Population, stream: int) -> list[tuple[int, str, int]]:
    """(user, kind, utc_day) for every attacked user of one source."""
    rng = rng_for(config.seed, stream, 7)
    n = config.n_attacked
    if n == 0:
        return []
    others = rng.permutation(np.arange(1, pop.size))[: n - 1].tolist()
    victims = [0, *others]
    kinds = list(config.anomaly_kinds)
    # Round-robin over the kinds, starting with new_location (Morpheus's attacktarget story).
    first = kinds.index("new_location") if "new_location" in kinds else 0
    order = [kinds[(first + i) % len(kinds)] for i in range(n)]
    days = rng.integers(config.train_days, config.total_days, n).tolist()
    return [(int(v), k, int(d)) for v, k, d in zip(victims, order, days, strict=True)]


def _frame(columns: tuple[str, ...], cols: dict, n: int) -> pd.DataFrame:
    data = {}
    for c in columns:
        v = cols[c]
        data[c] = v if (isinstance(v, (list, np.ndarray)) and c != "risk_events") else [v] * n
    return pd.DataFrame(data, columns=list(columns))


# ---------------------------------------------------------------------------------------------
# Duo
# ---------------------------------------------------------------------------------------------


def _attacker_phone(rng: np.random.Generator) -> str:
    model = catalog.ATTACKER_PHONE_MODELS[rng.integers(len(catalog.ATTACKER_PHONE_MODELS))]
    return f"{model} (+{int(rng.integers(20, 99))} {int(rng.integers(100, 999))}-{int(rng.integers(1000, 9999))})"


def duo_attack(
    kind: str, u: int, pop: Population, prof: duo.DuoProfiles, rng: np.random.Generator, prefix: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray]:
    """One attack session on user ``u``: (columns, offsets in ms from the session start)."""
    seen = prof.seen_values(u)
    home = int(pop.home[u])
    phone = prof.phone_name[u]
    browser_apps = [a for a in prof.apps[u].tolist() if duo.ALL_APPS[a].browser_based] or [0]
    attacker_dev = _pick_device(rng, duo.ATTACKER_DEVICE_IDS, duo.ALL_DEVICES, seen, "browser", "os")
    base = dict(
        user=u,
        hostname=None,
        ip_geo=True,
        auth_city=home,
        auth_ip=prof.phone_ip[u],
        auth_name=phone,
        factor="duo_push",
        kind=kind,
        ts=0,
    )

    def ips(city) -> list[str]:
        return ids.public_ips(rng, prefix[np.asarray(city)])

    if kind == "new_location":
        # Stolen password replayed through rotating proxies abroad; each push reaches the
        # victim's phone, who rejects it as fraud, ignores it, or (sometimes) approves it.
        n = int(rng.integers(5, 10))
        city = _exits(rng, n, None)
        outcome = rng.choice(3, size=n, p=[0.45, 0.35, 0.2])
        cols = dict(
            city=city,
            app=int(rng.choice(browser_apps)),
            device=attacker_dev,
            ip=ips(city),
            result=np.array(["fraud", "denied", "success"], dtype=object)[outcome],
            reason=np.array(["user_marked_fraud", "no_response", "user_approved"], dtype=object)[outcome],
        )
        off = _offsets(rng, n, 30, 300)
    elif kind == "new_device":
        # Account takeover: the attacker enrolled their own phone and signs in from a new
        # computer, from two cities the victim never visits, app after app.
        n = int(rng.integers(5, 11))
        dev = _pick_device(
            rng,
            list(range(duo.N_USER_DEVICES)) + list(duo.ATTACKER_DEVICE_IDS),
            duo.ALL_DEVICES,
            seen,
            "browser",
            "os",
        )
        cities = _other_cities(rng, pop, u, 3)
        city = cities[np.arange(n) % len(cities)]
        all_browser_apps = [i for i, a in enumerate(duo.ALL_APPS[: len(catalog.DUO_APPS)]) if a.browser_based]
        cols = dict(
            city=city,
            app=rng.choice(all_browser_apps, size=n),
            device=dev,
            ip=ips(city),
            result="success",
            reason="user_approved",
            auth_name=_attacker_phone(rng),
            auth_city=city,
            auth_ip=ips(city),
        )
        off = _offsets(rng, n, 60, 600)
    elif kind == "failed_burst":
        # Passcode guessing from a spraying tool that rotates three proxies; Duo locks the user out.
        n = int(rng.integers(15, 36))
        locked = int(rng.integers(1, 4))
        city = _exits(rng, n, 3)
        cols = dict(
            city=city,
            app=int(rng.choice(browser_apps)),
            device=attacker_dev,
            ip=ips(city),
            factor="duo_mobile_passcode",
            result="denied",
            auth_ip=None,
            reason=np.array(["invalid_passcode"] * (n - locked) + ["locked_out"] * locked, dtype=object),
        )
        off = _offsets(rng, n, 2, 15)
    elif kind == "unusual_app":
        # Lateral movement: SSH / RDP into servers the user never administers, from inside the
        # network (private source addresses have no geolocation); some hosts refuse the user.
        n = int(rng.integers(8, 16))
        ssh, rdp = len(duo.ALL_APPS) - 4, len(duo.ALL_APPS) - 3  # Unix SSH, Windows Logon
        use_rdp = rng.random(n) < 0.4
        refused = rng.random(n) < 0.35
        # Jump hosts in several cloud regions (public addresses in datacenter cities), and hops
        # between servers from private addresses, which have no geolocation.
        regions = rng.permutation(DATACENTER_CITY_IDS)[: int(rng.integers(2, 5))]
        geo = rng.random(n) < 0.7
        geo[0] = True
        internal = [f"10.{a}.{b}.{c}" for a, b, c in rng.integers(1, 255, (n, 3)).tolist()]
        public = ids.public_ips(rng, prefix[regions[np.arange(n) % len(regions)]])
        ip = [p if g else i for p, i, g in zip(public, internal, geo.tolist(), strict=True)]
        cols = dict(
            app=np.where(use_rdp, rdp, ssh),
            device=np.where(use_rdp, duo.SERVER_DEVICE_IDS[1], duo.SERVER_DEVICE_IDS[0]),
            hostname=[
                f"{'dc' if r else 'prod-db'}-{int(h):02d}"
                for r, h in zip(use_rdp, rng.integers(1, 20, n), strict=True)
            ],
            city=regions[np.arange(n) % len(regions)],
            ip=ip,
            ip_geo=geo,
            result=np.where(refused, "denied", "success").astype(object),
            reason=np.where(refused, "user_not_in_permitted_group", "user_approved").astype(object),
        )
        off = _offsets(rng, n, 40, 240)
    elif kind == "off_hours":
        # MFA fatigue in the victim's night, by an attacker abroad (whose working day it is) behind
        # Tor (a new exit per attempt): unanswered pushes, then the half-asleep victim approves and the attacker moves in.
        pushes = int(rng.integers(8, 21))
        after = int(rng.integers(3, 7))
        n = pushes + after
        city = _exits(rng, n, None)
        cols = dict(
            city=city,
            app=int(rng.choice(browser_apps)),
            device=attacker_dev,
            ip=ips(city),
            result=np.array(["denied"] * pushes + ["success"] * after, dtype=object),
            reason=np.array(["no_response"] * pushes + ["user_approved"] * after, dtype=object),
        )
        off = _offsets(rng, n, 20, 90)
    else:  # pragma: no cover - config validation restricts kinds
        raise ValueError(f"unknown anomaly kind {kind!r}")
    return _frame(duo.COLUMNS, {**base, **cols}, n), off


# ---------------------------------------------------------------------------------------------
# Azure
# ---------------------------------------------------------------------------------------------


def _azure_frame(cols: dict, n: int) -> pd.DataFrame:
    device = np.broadcast_to(np.asarray(cols["device"]), (n,)).astype(np.int64)
    client = np.broadcast_to(np.asarray(cols["client"], dtype=object), (n,))
    browser, os_, ua = azure.device_columns(device, client)
    cols.update(device=device, client=client, browser=browser, os=os_, ua=ua)
    return _frame(azure.COLUMNS, cols, n)


def _clients(apps: np.ndarray) -> np.ndarray:
    return np.array([azure.ALL_APPS[a].client for a in apps.tolist()], dtype=object)


def azure_attack(
    kind: str,
    u: int,
    pop: Population,
    prof: azure.AzureProfiles,
    rng: np.random.Generator,
    prefix: np.ndarray,
) -> tuple[pd.DataFrame, np.ndarray]:
    seen = prof.seen_values(u)
    tenant_apps = np.arange(len(catalog.AZURE_APPS))
    web_apps = np.array([i for i in tenant_apps if azure.ALL_APPS[i].client == "Browser"])
    attacker_dev = _pick_device(
        rng, azure.ATTACKER_DEVICE_IDS, azure.ALL_DEVICES, seen, "browser", "operating_system"
    )
    base = dict(
        user=u,
        dev_name=None,
        dev_id="",
        trust=None,
        risk="none",
        risk_events=None,
        kind=kind,
        ts=0,
        interactive=True,
    )

    def ips(city) -> list[str]:
        return ids.public_ips(rng, prefix[np.asarray(city)])

    if kind == "new_location":
        # Password replay through rotating proxies abroad, browsing the tenant's web apps; the
        # MFA prompt is failed or, now and then, satisfied (the victim approved it).
        n = int(rng.integers(5, 10))
        city = _exits(rng, n, None)
        code = rng.choice([0, 500121, 50074], size=n, p=[0.4, 0.35, 0.25])
        code[0] = 50074
        app = rng.choice(web_apps, size=n)
        cols = dict(
            city=city,
            app=app,
            client="Browser",
            device=attacker_dev,
            code=code,
            ip=ips(city),
            risk="high",
            risk_events=["unfamiliarFeatures", "anonymizedIPAddress"],
        )
        off = _offsets(rng, n, 30, 300)
    elif kind == "new_device":
        # Takeover with a newly registered device, from two cities the victim never visits,
        # exploring every app of the tenant.
        n = int(rng.integers(5, 11))
        dev = _pick_device(
            rng,
            list(range(azure.N_USER_DEVICES)) + list(azure.ATTACKER_DEVICE_IDS),
            azure.ALL_DEVICES,
            seen,
            "browser",
            "operating_system",
        )
        cities = _other_cities(rng, pop, u, 3)
        city = cities[np.arange(n) % len(cities)]
        app = rng.permutation(tenant_apps)[np.arange(n) % len(tenant_apps)]
        tag = "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"), 7))
        cols = dict(
            city=city,
            app=app,
            client=_clients(app),
            device=dev,
            code=0,
            ip=ips(city),
            dev_name=f"DESKTOP-{tag}",
            dev_id=ids.uuids(rng, 1)[0],
            trust="Azure AD registered",
            risk="low",
            risk_events=["unfamiliarFeatures"],
        )
        off = _offsets(rng, n, 60, 600)
    elif kind == "failed_burst":
        # Password spray over a legacy protocol (no MFA there) from three rotating proxies,
        # ending in Smart Lockout.
        n = int(rng.integers(15, 36))
        locked = int(rng.integers(1, 4))
        city = _exits(rng, n, 3)
        clients = [c for c in catalog.AZURE_LEGACY_CLIENTS if c not in seen["client"]]
        cols = dict(
            city=city,
            app=1,
            client=clients[int(rng.integers(len(clients)))],
            device=azure.LEGACY_DEVICE,
            code=np.array([50126] * (n - locked) + [50053] * locked),
            ip=ips(city),
            risk="medium",
            risk_events=["passwordSpray"],
        )
        off = _offsets(rng, n, 2, 12)
    elif kind == "unusual_app":
        # Admin portals and CLIs the user never uses, from jump hosts / cloud shells in several
        # cloud regions; Conditional Access blocks some of them.
        n = int(rng.integers(6, 13))
        k = int(rng.integers(4, 7))
        apps = rng.choice(azure.PRIVILEGED_APP_IDS, size=k, replace=False)
        app = apps[np.arange(n) % k]
        regions = rng.permutation(DATACENTER_CITY_IDS)[: int(rng.integers(2, 5))]
        city = regions[np.arange(n) % len(regions)]
        slot = 0  # the user's own main device (an insider, or their hijacked session)
        cols = dict(
            city=city,
            app=app,
            client=_clients(app),
            device=int(prof.devices[u][slot]),
            code=np.where(rng.random(n) < 0.35, 53003, 0),
            ip=ips(city),
            dev_name=prof.dev_name[u][slot],
            dev_id=prof.dev_id[u][slot],
            trust=prof.trust[u][slot],
        )
        off = _offsets(rng, n, 40, 300)
    elif kind == "off_hours":
        # A script replaying a stolen refresh token in the victim's night through Tor (a new exit
        # per request), pulling mail, files and chats.
        n = int(rng.integers(15, 36))
        city = _exits(rng, n, None)
        app = np.array([1, 3, 0, 5])[np.arange(n) % 4]  # Exchange, SharePoint, Teams, Office
        cols = dict(
            city=city,
            app=app,
            client="Mobile Apps and Desktop clients",
            device=azure.SCRIPT_DEVICE_ID,
            interactive=False,
            code=0,
            ip=ips(city),
        )
        off = _offsets(rng, n, 10, 90)
    else:  # pragma: no cover
        raise ValueError(f"unknown anomaly kind {kind!r}")
    return _azure_frame({**base, **cols}, n), off


def build_attacks(
    config: DatagenConfig, pop: Population, source: str, stream: int, prof, prefix: np.ndarray, day0_ms: int
) -> dict[int, list[AttackPlan]]:
    """Every attack of one source, grouped by the UTC day it happens on."""
    by_day: dict[int, list[AttackPlan]] = {}
    make = duo_attack if source == "duo" else azure_attack
    for rank, (u, kind, day) in enumerate(plan_victims(config, pop, stream)):
        rng = rng_for(config.seed, stream, 8, rank)
        frame, off = make(kind, u, pop, prof, rng, prefix)
        start = _planned_start(rng, pop, u, kind, day, int(off[-1]), day0_ms)
        gap = int(rng.integers(2 * 60_000, 45 * 60_000))
        plan = AttackPlan(
            user=u, kind=kind, utc_day=day, planned_start_ms=start, gap_ms=gap, offsets=off, events=frame
        )
        by_day.setdefault(day, []).append(plan)
    return by_day
