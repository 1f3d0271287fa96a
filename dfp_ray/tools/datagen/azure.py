"""Azure AD (Entra ID) sign-in logs, as diagnostic settings export them (Event Hub / storage).

Each record is the Azure Monitor envelope (``time``, ``category``, ``resultType``, ...) around
the Microsoft Graph ``signIn`` object in ``properties``. Habits per user: one to three devices
(company-managed ones carry a ``displayName``; personal ones do not), three to six apps, each
with its usual client (browser or desktop/mobile app), a personal rate of the benign failures
every tenant sees (Keep-me-signed-in interrupts, MFA prompts, the odd wrong password).
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

NAME = "azure"
FILE_PREFIX = "AZUREAD"

ALL_APPS: tuple[catalog.AzureApp, ...] = (
    tuple(a for _, a in catalog.AZURE_APPS) + catalog.AZURE_PRIVILEGED_APPS
)
PRIVILEGED_APP_IDS = tuple(range(len(catalog.AZURE_APPS), len(ALL_APPS)))
N_USER_DEVICES = len(catalog.AZURE_USER_DEVICES)
ALL_DEVICES: tuple[catalog.AzureDevice, ...] = (
    tuple(d for _, d in catalog.AZURE_USER_DEVICES)
    + catalog.AZURE_ATTACKER_DEVICES
    + (catalog.AZURE_SCRIPT_DEVICE,)
)
ATTACKER_DEVICE_IDS = tuple(range(N_USER_DEVICES, N_USER_DEVICES + len(catalog.AZURE_ATTACKER_DEVICES)))
SCRIPT_DEVICE_ID = len(ALL_DEVICES) - 1
FAIL_RATE = (0.12, 0.2)  # range of users' share of interrupted / failed sign-ins
LEGACY_DEVICE = -1  # legacy protocols: nothing is parsed from the client, deviceDetail is empty

COLUMNS = (
    "user", "ts", "city", "app", "client", "device", "browser", "os", "dev_name", "dev_id", "trust",
    "interactive", "code", "ip", "ua", "risk", "risk_events", "kind",
)  # fmt: skip


@dataclass
class AzureProfiles:
    devices: list[np.ndarray]  # indices into ALL_DEVICES
    device_cum: np.ndarray
    dev_name: list[list[str | None]]  # per user per device slot; None = unmanaged (no displayName)
    dev_id: list[list[str]]
    trust: list[list[str | None]]
    apps: list[np.ndarray]  # indices into ALL_APPS
    app_cum: np.ndarray
    fail_rate: np.ndarray
    fail_codes: list[np.ndarray]  # error codes
    fail_cum: np.ndarray
    home_ips: list[list[str]]
    user_id: list[str]
    tenant_id: str

    def seen_values(self, u: int) -> dict[str, set]:
        """Every value the user's normal behaviour can produce, per model feature (see duo.py)."""
        devs = [ALL_DEVICES[d] for d in self.devices[u]]
        apps = [ALL_APPS[a] for a in self.apps[u]]
        clients = {a.client for a in apps}
        browsers = set()
        for d in devs:
            if "Browser" in clients:
                browsers.add(d.browser)
            if "Mobile Apps and Desktop clients" in clients:
                browsers.add(d.rich_client)
        reasons = {catalog.AZURE_SUCCESS_REASON} | {
            catalog.AZURE_FAILURES[int(c)] for c in self.fail_codes[u]
        }
        return {
            "app": {a.name for a in apps},
            "client": clients,
            "browser": browsers,
            "os": {d.operating_system for d in devs},
            "dev_name": set(self.dev_name[u]),
            "reason": reasons,
        }


def _device_name(rng: np.random.Generator, kind: str, first: str) -> str:
    tag = "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"), 7))
    if kind == "phone":
        return f"{first.title()}'s phone"
    return f"{'LAPTOP' if kind == 'laptop' else 'DESKTOP'}-{tag}"


def build_profiles(pop: Population, rng: np.random.Generator, city_prefix: np.ndarray) -> AzureProfiles:
    n = pop.size
    dev_w = np.array([w for w, _ in catalog.AZURE_USER_DEVICES])
    app_w = np.array([w for w, _ in catalog.AZURE_APPS])
    devices, dev_p, names, dev_ids, trusts, apps, app_p, fails, fail_p = ([] for _ in range(9))
    fail_w = {50140: 5.0, 50074: 4.0, 50126: 1.5, 50089: 0.5}
    for u in range(n):
        k = int(weighted_pick(rng, 3, [0.15, 0.55, 0.3])) + 1
        d = weighted_pick(rng, N_USER_DEVICES, dev_w, size=k, replace=False)
        p = habit_shares(rng, k, (0.55, 0.8), 0.12)
        devices.append(d)
        dev_p.append(p)
        nm, di, tr = [], [], []
        for dev in d.tolist():
            kind = ALL_DEVICES[dev].kind
            managed = rng.random() < (0.8 if kind != "phone" else 0.5)
            if managed:
                nm.append(_device_name(rng, kind, pop.first[u]))
                di.append(ids.uuids(rng, 1)[0])
                tr.append(
                    "Azure AD registered"
                    if kind == "phone"
                    else ("Azure AD joined" if rng.random() < 0.6 else "Hybrid Azure AD joined")
                )
            else:
                nm.append(None)
                di.append("")
                tr.append(None)
        names.append(nm)
        dev_ids.append(di)
        trusts.append(tr)
        # Two to four apps, each a real habit (no app used only once a month): how many distinct
        # apps a user opens in a day then stays within a range the user reaches most weekdays.
        m = int(rng.integers(2, 5))
        a = weighted_pick(rng, len(catalog.AZURE_APPS), app_w, size=m, replace=False)
        apps.append(a)
        app_p.append(habit_shares(rng, m, (0.3, 0.6), 0.12))
        # Interrupts (Keep-me-signed-in, MFA prompts) are everyday "failures"; each user has one
        # or two usual ones.
        codes = list(fail_w)
        kf = 1 if rng.random() < 0.7 else 2  # one usual way to fail, or two equally usual ones
        c = rng.choice(
            codes, size=kf, replace=False, p=np.array(list(fail_w.values())) / sum(fail_w.values())
        )
        fails.append(c)
        fail_p.append(np.ones(kf))
    fail_rate = rng.uniform(*FAIL_RATE, n)
    n_home_ips = rng.integers(1, 3, n)
    home_ips = [
        ids.public_ips(rng, np.repeat(city_prefix[pop.home[u]][None], n_home_ips[u], 0)) for u in range(n)
    ]
    user_id = ids.uuids(rng, n)
    tenant = ids.uuids(rng, 1)[0]
    return AzureProfiles(
        devices=devices,
        device_cum=cumulative(dev_p, 3),
        dev_name=names,
        dev_id=dev_ids,
        trust=trusts,
        apps=apps,
        app_cum=cumulative(app_p, 4),
        fail_rate=fail_rate,
        fail_codes=fails,
        fail_cum=cumulative(fail_p, 4),
        home_ips=home_ips,
        user_id=user_id,
        tenant_id=tenant,
    )


def device_columns(dev: np.ndarray, client: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """browser, operatingSystem and userAgent of each event from its device and client type."""
    browser = np.array(
        [
            None
            if d == LEGACY_DEVICE
            else (ALL_DEVICES[d].browser if c == "Browser" else ALL_DEVICES[d].rich_client)
            for d, c in zip(dev.tolist(), client.tolist(), strict=True)
        ],
        dtype=object,
    )
    os_ = np.array(
        [None if d == LEGACY_DEVICE else ALL_DEVICES[d].operating_system for d in dev.tolist()], dtype=object
    )
    ua = np.array(
        ["BAV2ROPC" if d == LEGACY_DEVICE else ALL_DEVICES[d].user_agent for d in dev.tolist()], dtype=object
    )
    return browser, os_, ua


def normal_events(
    day: DayEvents, prof: AzureProfiles, pop: Population, rng: np.random.Generator, city_prefix: np.ndarray
) -> pd.DataFrame:
    u = day.user
    n = len(u)
    ul = u.tolist()
    app_slot = choose_rows(rng, prof.app_cum, u)
    app = np.array([prof.apps[x][s] for x, s in zip(ul, app_slot.tolist(), strict=True)], dtype=np.int64)
    client = np.array([ALL_APPS[a].client for a in app.tolist()], dtype=object)
    interactive = rng.random(n) < np.array([ALL_APPS[a].interactive for a in app.tolist()])
    dev_slot = choose_rows(rng, prof.device_cum, u).tolist()
    device = np.array([prof.devices[x][s] for x, s in zip(ul, dev_slot, strict=True)], dtype=np.int64)
    dev_name = np.array([prof.dev_name[x][s] for x, s in zip(ul, dev_slot, strict=True)], dtype=object)
    dev_id = np.array([prof.dev_id[x][s] for x, s in zip(ul, dev_slot, strict=True)], dtype=object)
    trust = np.array([prof.trust[x][s] for x, s in zip(ul, dev_slot, strict=True)], dtype=object)
    browser, os_, ua = device_columns(device, client)
    failed = rng.random(n) < prof.fail_rate[u]
    fail_slot = choose_rows(rng, prof.fail_cum, u).tolist()
    code = np.array([int(prof.fail_codes[x][s]) for x, s in zip(ul, fail_slot, strict=True)], dtype=np.int64)
    code = np.where(failed, code, 0)
    interactive = interactive | failed  # interrupts and bad passwords happen in interactive sign-ins
    at_home = day.city == pop.home[u]
    ip_pick = rng.integers(0, 2, n).tolist()
    travel_ips = ids.public_ips(rng, city_prefix[day.city])
    ip = [
        prof.home_ips[x][p % len(prof.home_ips[x])] if h else t
        for x, h, p, t in zip(ul, at_home.tolist(), ip_pick, travel_ips, strict=True)
    ]
    return pd.DataFrame(
        {
            "user": u,
            "ts": day.ts_ms,
            "city": day.city,
            "app": app,
            "client": client,
            "device": device,
            "browser": browser,
            "os": os_,
            "dev_name": dev_name,
            "dev_id": dev_id,
            "trust": trust,
            "interactive": interactive,
            "code": code,
            "ip": ip,
            "ua": ua,
            "risk": "none",
            "risk_events": None,
            "kind": "",
        },
        columns=list(COLUMNS),
    )


def _loc(c: int) -> dict:
    city = ALL_CITIES[c]
    return {
        "city": city.city,
        "state": city.state,
        "countryOrRegion": city.code,
        "geoCoordinates": {"latitude": city.lat, "longitude": city.lon},
    }


_LOCS = [_loc(c) for c in range(len(ALL_CITIES))]
_NO_RISK: list[str] = []


def render(
    frame: pd.DataFrame, event_ids: list[str], corr_ids: list[str], pop: Population, prof: AzureProfiles
) -> list[dict]:
    """Raw diagnostic-settings sign-in records for a time-sorted frame."""
    iso = ids.iso_utc(frame["ts"].to_numpy(), 7)
    proc_ms = ((frame["ts"].to_numpy() * 7919) % 380 + 40).tolist()  # deterministic, varied
    resource = f"/tenants/{prof.tenant_id}/providers/Microsoft.aadiam"
    records = []
    cols = [ids.column_values(frame, c) for c in COLUMNS]
    for i, (
        u,
        _ts,
        city,
        app_i,
        client,
        _dev,
        browser,
        os_,
        dname,
        did,
        trust,
        inter,
        code,
        ip,
        ua,
        risk,
        rev,
        _k,
    ) in enumerate(zip(*cols, strict=True)):
        app = ALL_APPS[app_i]
        failed = code != 0
        status: dict = {"errorCode": code}
        if failed:
            status["failureReason"] = catalog.AZURE_FAILURES[code]
            status["additionalDetails"] = catalog.AZURE_ADDITIONAL_DETAILS.get(code)
        else:
            status["failureReason"] = catalog.AZURE_SUCCESS_REASON
            status["additionalDetails"] = catalog.AZURE_ADDITIONAL_DETAILS[0] if inter else None
        detail: dict = {"deviceId": did or ""}
        if dname is not None:
            detail["displayName"] = dname
        if os_ is not None:
            detail["operatingSystem"] = os_
        if browser is not None:
            detail["browser"] = browser
        if os_ is not None:
            detail["isCompliant"] = trust is not None and trust != "Azure AD registered"
            detail["isManaged"] = trust is not None and trust != "Azure AD registered"
        if trust is not None:
            detail["trustType"] = trust
        loc = _LOCS[city]
        risk_events = list(rev) if rev else _NO_RISK
        props = {
            "id": event_ids[i],
            "createdDateTime": iso[i] + "+00:00",
            "userDisplayName": pop.display_name[u],
            "userPrincipalName": pop.upn[u],
            "userId": prof.user_id[u],
            "appId": app.app_id,
            "appDisplayName": app.name,
            "ipAddress": ip,
            "status": status,
            "clientAppUsed": client,
            "userAgent": ua,
            "deviceDetail": detail,
            "location": loc,
            "correlationId": corr_ids[i],
            "conditionalAccessStatus": ("failure" if code == 53003 else "success") if inter else "notApplied",
            "appliedConditionalAccessPolicies": [],
            "authenticationRequirement": "multiFactorAuthentication"
            if inter
            else "singleFactorAuthentication",
            "isInteractive": bool(inter),
            "tokenIssuerType": "AzureAD",
            "processingTimeInMilliseconds": proc_ms[i],
            "riskDetail": "none",
            "riskLevelAggregated": risk,
            "riskLevelDuringSignIn": risk,
            "riskState": "atRisk" if risk in ("medium", "high") else "none",
            "riskEventTypes": risk_events,
            "riskEventTypes_v2": risk_events,
            "resourceDisplayName": app.resource,
            "resourceId": app.resource_id,
            "resourceTenantId": prof.tenant_id,
            "homeTenantId": prof.tenant_id,
            "userType": "Member",
            "signInEventTypes": ["interactiveUser" if inter else "nonInteractiveUser"],
            "crossTenantAccessType": "none",
        }
        rec = {
            "time": iso[i] + "Z",
            "resourceId": resource,
            "operationName": "Sign-in activity",
            "operationVersion": "1.0",
            "category": "SignInLogs" if inter else "NonInteractiveUserSignInLogs",
            "tenantId": prof.tenant_id,
            "resultType": str(code),
            "resultSignature": "None",
        }
        if failed:
            rec["resultDescription"] = catalog.AZURE_FAILURES[code]
        rec.update(
            {
                "durationMs": 0,
                "callerIpAddress": ip,
                "correlationId": corr_ids[i],
                "identity": pop.display_name[u],
                "Level": 4,
                "location": ALL_CITIES[city].code,
                "properties": props,
            }
        )
        records.append(rec)
    return records
