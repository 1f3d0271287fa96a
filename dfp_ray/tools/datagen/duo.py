"""Duo authentication logs (Admin API v2 ``/logs/authentication`` records).

Habits per user: one to three access devices (browser + OS), two to four Duo-protected
applications (a VPN integration reports no browser or OS), a preferred second factor,
sometimes a remembered device, a personal failure rate with the user's own failure reasons.
Events are sampled day by day as columns (:func:`normal_events`) and turned into raw records
only when a file is written (:func:`render`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dfp_ray.tools.datagen import catalog, ids
from dfp_ray.tools.datagen.users import (
    ALL_CITIES,
    DayEvents,
    Population,
    choose_rows,
    cumulative,
    habit_shares,
    weighted_pick,
)

NAME = "duo"
FILE_PREFIX = "DUO"

ALL_APPS: tuple[catalog.DuoApp, ...] = catalog.DUO_APPS + catalog.DUO_PRIVILEGED_APPS
N_USER_DEVICES = len(catalog.DUO_USER_DEVICES)
SERVER_DEVICES: tuple[catalog.DuoDevice, ...] = (
    catalog.DuoDevice("Linux", "5.15.0", "", ""),
    catalog.DuoDevice("Windows Server", "2019", "", ""),
)
ALL_DEVICES: tuple[catalog.DuoDevice, ...] = (
    tuple(d for _, d in catalog.DUO_USER_DEVICES) + catalog.DUO_ATTACKER_DEVICES + SERVER_DEVICES
)
ATTACKER_DEVICE_IDS = tuple(range(N_USER_DEVICES, N_USER_DEVICES + len(catalog.DUO_ATTACKER_DEVICES)))
SERVER_DEVICE_IDS = tuple(range(len(ALL_DEVICES) - len(SERVER_DEVICES), len(ALL_DEVICES)))
NO_DEVICE = -1  # RADIUS/VPN integrations: Duo knows only the IP address

FACTORS = ("duo_push", "duo_mobile_passcode", "phone_call", "webauthn_security_key")
FACTOR_WEIGHTS = (0.70, 0.12, 0.06, 0.12)
FAIL_REASONS = (*catalog.DUO_NORMAL_FAIL_REASONS, catalog.DUO_PASSCODE_FAIL_REASON)
_FAIL_OPTION_W = np.array([5.0, 3.0, 1.0, 4.0])
FAIL_RATE = (0.15, 0.22)  # range of users' share of denied authentications
COLUMNS = (
    "user", "ts", "city", "app", "device", "hostname", "ip", "ip_geo", "factor", "result", "reason",
    "auth_name", "auth_city", "auth_ip", "kind",
)  # fmt: skip


@dataclass
class DuoProfiles:
    """Per-user Duo habits. Ragged choices are padded cumulative matrices for vectorised draws."""

    devices: list[np.ndarray]  # indices into ALL_DEVICES
    device_cum: np.ndarray
    apps: list[np.ndarray]  # indices into ALL_APPS
    app_cum: np.ndarray
    factor: np.ndarray  # index into FACTORS (primary)
    push_fallback: np.ndarray  # share of non-push users' auths that still use a push
    remembered: np.ndarray  # share of browser auths satisfied by a remembered device
    fail_rate: np.ndarray
    fail_reasons: list[np.ndarray]  # indices into FAIL_REASONS
    fail_cum: np.ndarray
    phone_name: list[str]
    key_name: list[str | None]
    home_ips: list[list[str]]
    phone_ip: list[str]
    user_key: list[str]
    groups: list[list[str]]
    user_dicts: list[dict] | None = None  # the record's "user" object, built once per run

    def seen_values(self, u: int) -> dict[str, set]:
        """Every value the user's NORMAL behaviour can produce, per model-relevant field.

        The anomaly code picks attacker values outside these sets, so each injected event
        carries something the user's model never saw in training.
        """
        devs = [ALL_DEVICES[d] for d in self.devices[u]]
        has_vpn = any(not ALL_APPS[a].browser_based for a in self.apps[u])
        browsers = {d.browser for d in devs} | ({None} if has_vpn else set())
        oses = {d.os for d in devs} | ({None} if has_vpn else set())
        factors = {FACTORS[self.factor[u]]} | ({"duo_push"} if self.push_fallback[u] > 0 else set())
        reasons = {catalog.DUO_FACTOR_SUCCESS_REASON[f] for f in factors}
        if self.remembered[u] > 0:
            reasons.add("remembered_device")
        reasons |= {FAIL_REASONS[i] for i in self.fail_reasons[u]}
        auth_names = {self.phone_name[u], self.key_name[u]} | ({None} if self.remembered[u] > 0 else set())
        return {"browser": browsers, "os": oses, "reason": reasons, "auth_name": auth_names}


def _phone_name(rng: np.random.Generator, models: tuple[str, ...]) -> str:
    model = models[rng.integers(len(models))]
    area, line = rng.integers(201, 990), rng.integers(0, 10_000)
    return f"{model} ({area}-555-{line:04d})"


def build_profiles(pop: Population, rng: np.random.Generator, city_prefix: np.ndarray) -> DuoProfiles:
    n = pop.size
    dev_w = np.array([w for w, _ in catalog.DUO_USER_DEVICES])
    app_w = np.array([10, 5, 4, 4, 3, 3, 5], dtype=float)[: len(catalog.DUO_APPS)]
    devices, dev_p, apps, app_p, fails, fail_p = [], [], [], [], [], []
    phone, key = [], []
    factor = weighted_pick(rng, len(FACTORS), FACTOR_WEIGHTS, size=n)
    for u in range(n):
        k = int(weighted_pick(rng, 3, [0.15, 0.55, 0.3])) + 1
        d = weighted_pick(rng, N_USER_DEVICES, dev_w, size=k, replace=False)
        p = habit_shares(rng, k, (0.55, 0.8), 0.12)
        devices.append(d)
        dev_p.append(p)
        m = int(rng.integers(2, 5))
        a = weighted_pick(rng, len(catalog.DUO_APPS), app_w, size=m, replace=False)
        apps.append(a)
        app_p.append(habit_shares(rng, m, (0.35, 0.7), 0.12))
        # A user fails in their own one or two ways (ignores pushes, cancels, mistypes codes).
        options = [0, 1, 2] + ([3] if FACTORS[factor[u]] == "duo_mobile_passcode" else [])
        kf = 1 if rng.random() < 0.7 else 2  # one usual way to fail, or two equally usual ones
        w = _FAIL_OPTION_W[: len(options)]
        f = rng.choice(options, size=kf, replace=False, p=w / w.sum())
        fails.append(f)
        fail_p.append(np.ones(kf))
        phone.append(_phone_name(rng, catalog.PHONE_MODELS))
        key.append("Security Key (YubiKey 5 NFC)" if FACTORS[factor[u]] == "webauthn_security_key" else None)
    push_fallback = np.where(factor == 0, 0.0, rng.uniform(0.1, 0.3, n))
    remembered = np.where(rng.random(n) < 0.6, rng.uniform(0.15, 0.4, n), 0.0)
    fail_rate = rng.uniform(*FAIL_RATE, n)
    n_home_ips = rng.integers(1, 3, n)
    home_ips = [
        ids.public_ips(rng, np.repeat(city_prefix[pop.home[u]][None], n_home_ips[u], 0)) for u in range(n)
    ]
    phone_ip = ids.public_ips(rng, city_prefix[pop.home])
    user_key = ids.duo_keys(rng, "DU", n)
    offices = [catalog.HOME_CITIES[c].city for c in pop.home]
    groups = [["Duo Users", f"{o} Users"] for o in offices]
    return DuoProfiles(
        devices=devices,
        device_cum=cumulative(dev_p, 3),
        apps=apps,
        app_cum=cumulative(app_p, 4),
        factor=factor,
        push_fallback=push_fallback,
        remembered=remembered,
        fail_rate=fail_rate,
        fail_reasons=fails,
        fail_cum=cumulative(fail_p, len(FAIL_REASONS)),
        phone_name=phone,
        key_name=key,
        home_ips=home_ips,
        phone_ip=phone_ip,
        user_key=user_key,
        groups=groups,
    )


def normal_events(
    day: DayEvents, prof: DuoProfiles, pop: Population, rng: np.random.Generator, city_prefix: np.ndarray
) -> pd.DataFrame:
    """Source-specific columns for one local day of normal activity (vectorised over events)."""
    u = day.user
    n = len(u)
    app_slot = choose_rows(rng, prof.app_cum, u)
    app = np.array(
        [prof.apps[x][s] for x, s in zip(u.tolist(), app_slot.tolist(), strict=True)], dtype=np.int64
    )
    browser_app = np.array([ALL_APPS[a].browser_based for a in app.tolist()], dtype=bool)
    dev_slot = choose_rows(rng, prof.device_cum, u)
    device = np.array(
        [prof.devices[x][s] for x, s in zip(u.tolist(), dev_slot.tolist(), strict=True)], dtype=np.int64
    )
    device = np.where(browser_app, device, NO_DEVICE)

    remembered = browser_app & (rng.random(n) < prof.remembered[u])
    primary = prof.factor[u]
    use_push = rng.random(n) < prof.push_fallback[u]
    factor_idx = np.where(use_push, 0, primary)
    factor = np.array(FACTORS, dtype=object)[factor_idx]
    factor = np.where(remembered, "remembered_device", factor)
    failed = ~remembered & (rng.random(n) < prof.fail_rate[u])
    fail_slot = choose_rows(rng, prof.fail_cum, u)
    fail_reason = np.array(
        [FAIL_REASONS[prof.fail_reasons[x][s]] for x, s in zip(u.tolist(), fail_slot.tolist(), strict=True)],
        dtype=object,
    )
    success_reason = np.array([catalog.DUO_FACTOR_SUCCESS_REASON[f] for f in factor.tolist()], dtype=object)
    reason = np.where(failed, fail_reason, success_reason)
    result = np.where(failed, "denied", "success")

    is_key = factor == "webauthn_security_key"
    auth_name = np.array(
        [
            None if rem else (prof.key_name[x] if k else prof.phone_name[x])
            for x, rem, k in zip(u.tolist(), remembered.tolist(), is_key.tolist(), strict=True)
        ],
        dtype=object,
    )
    at_home = day.city == pop.home[u]
    ip_pick = rng.integers(0, 2, n)
    travel_ips = ids.public_ips(rng, city_prefix[day.city])
    ip = [
        prof.home_ips[x][p % len(prof.home_ips[x])] if h else t
        for x, h, p, t in zip(u.tolist(), at_home.tolist(), ip_pick.tolist(), travel_ips, strict=True)
    ]
    auth_ip = np.array([prof.phone_ip[x] for x in u.tolist()], dtype=object)
    auth_ip = np.where(remembered, None, auth_ip)
    return pd.DataFrame(
        {
            "user": u,
            "ts": day.ts_ms,
            "city": day.city,
            "app": app,
            "device": device,
            "hostname": None,
            "ip": ip,
            "ip_geo": True,
            "factor": factor,
            "result": result,
            "reason": reason,
            "auth_name": auth_name,
            "auth_city": day.city,
            "auth_ip": auth_ip,
            "kind": "",
        },
        columns=list(COLUMNS),
    )


_NO_GEO = {"city": None, "country": None, "state": None}


def _loc(c: int) -> dict:
    city = ALL_CITIES[c]
    return {"city": city.city, "country": city.country, "state": city.state}


_LOCS = [_loc(c) for c in range(len(ALL_CITIES))]
_APPS = [{"key": a.key, "name": a.name} for a in ALL_APPS]


def render(frame: pd.DataFrame, event_ids: list[str], pop: Population, prof: DuoProfiles) -> list[dict]:
    """Raw Duo v2 authentication records for a time-sorted frame (keys in Duo's alphabetical order)."""
    if prof.user_dicts is None:
        prof.user_dicts = [
            {"groups": prof.groups[u], "key": prof.user_key[u], "name": pop.duo_username[u]}
            for u in range(pop.size)
        ]
    users = prof.user_dicts
    emails = pop.upn
    iso = ids.iso_utc(frame["ts"].to_numpy(), 6)
    secs = (frame["ts"].to_numpy() // 1000).tolist()
    records = []
    cols = [ids.column_values(frame, c) for c in COLUMNS]
    for i, (
        u,
        _ts,
        city,
        app,
        dev,
        host,
        ip,
        geo,
        factor,
        result,
        reason,
        aname,
        acity,
        aip,
        _k,
    ) in enumerate(zip(*cols, strict=True)):
        loc = _LOCS[city] if geo else _NO_GEO
        if dev == NO_DEVICE:
            access = {"hostname": host, "ip": ip, "location": loc}
        else:
            d = ALL_DEVICES[dev]
            access = {}
            if d.browser:
                access["browser"] = d.browser
                access["browser_version"] = d.browser_version
                access["flash_version"] = "uninstalled"
            access["hostname"] = host
            access["ip"] = ip
            if d.browser:
                access["is_encryption_enabled"] = "unknown"
                access["is_firewall_enabled"] = "unknown"
                access["is_password_set"] = "unknown"
                access["java_version"] = "uninstalled"
            access["location"] = loc
            access["os"] = d.os
            access["os_version"] = d.os_version
        if aname is None and factor == "remembered_device":
            auth = {"ip": None, "location": _NO_GEO, "name": None}
        else:
            auth = {"ip": aip, "location": _LOCS[acity], "name": aname}
        records.append(
            {
                "access_device": access,
                "alias": "",
                "application": _APPS[app],
                "auth_device": auth,
                "email": emails[u],
                "event_type": "authentication",
                "factor": factor,
                "isotimestamp": iso[i] + "+00:00",
                "ood_software": None,
                "reason": reason,
                "result": result,
                "timestamp": secs[i],
                "trusted_endpoint_status": "not trusted",
                "txid": event_ids[i],
                "user": users[u],
            }
        )
    return records
