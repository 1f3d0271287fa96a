"""Roster events -> raw Duo Admin API v2 authentication-log records and Azure AD sign-in records.

Why a renderer of its own: the records must be what the shipped schemas (``duo.yaml``,
``azure.yaml``) read from real exports, with the gaps real exports have (no browser for VPN
and Windows Logon integrations, no auth-device location for passcodes and remembered
devices, no ``displayName`` for unmanaged devices), and with browser versions that move on
during the window (release trains per family, each person upgrading some days later).
"""

from __future__ import annotations

import numpy as np

from dfp_ray.tools.datagen import ids
from dfp_ray.tools.roster import vocab
from dfp_ray.tools.roster.people import ALL_CITIES, ALL_DEVICES, Person

DAY_MS = 86_400_000
_NO_LOC = {"city": None, "country": None, "state": None}
_AZURE_BROWSER = {"Edge Chromium": "Edge", "Samsung Internet": "Samsung Browser"}
_UA_OS = {
    "Windows": "Windows NT 10.0; Win64; x64", "Mac OS X": "Macintosh; Intel Mac OS X 10_15_7",
    "Linux": "X11; Linux x86_64", "Chrome OS": "X11; CrOS x86_64 15633.69.0", "iOS": "iPhone; CPU iPhone OS 17_2 like Mac OS X",
    "Android": "Linux; Android 14; K",
}


def browser_version(family: str, day: int) -> str:
    """The version string of ``family`` a person runs on ``day`` (their upgrade lag already subtracted)."""
    base, period = vocab.BROWSER_RELEASES[family]
    k = int(np.floor(day / period)) + 1
    major = base + k
    if family in ("Chrome", "Chrome Mobile", "Edge Chromium"):
        return f"{major}.0.{6099 + 68 * k}.{(major * 37) % 180 + 20}"
    if family in ("Safari", "Mobile Safari"):
        return f"{base}.{2 + k}"
    if family == "Rich Client":
        return f"{base}.{58 + k}.0.0"
    return f"{major}.0"


class _Versions:
    """Memo of version strings: there are few (family, day) pairs and many events."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, int], str] = {}

    def __call__(self, family: str, day: int) -> str:
        key = (family, day)
        if key not in self._memo:
            self._memo[key] = browser_version(family, day)
        return self._memo[key]


def _location(city: int) -> dict:
    c = ALL_CITIES[city]
    return {"city": c.city, "country": c.country, "state": c.state}


def duo_records(columns: dict[str, list], event_ids: list[str], people: list[Person], day0_ms: int,
                auth_ips: list[str]) -> list[dict]:
    """Duo v2 authlog records, keys in Duo's alphabetical order (``columns``: event columns as lists)."""
    ts = np.asarray(columns["ts"], dtype=np.int64)
    iso = ids.iso_utc(ts, 6)
    secs = (ts // 1000).tolist()
    days = ((ts - day0_ms) // DAY_MS).tolist()
    versions = _Versions()
    names = ("user", "city", "ip", "dev", "slot", "app", "factor", "auth_name", "auth_city", "ok", "reason", "dev_name")
    cols = [columns[c] for c in names]
    records = []
    for i, (u, city, ip, dev, slot, app, factor, auth_name, auth_city, ok, reason, dev_name) in enumerate(
            zip(*cols, strict=True)):
        p, d, a = people[u], ALL_DEVICES[dev], vocab.DUO_APPS[app]
        loc = _location(city)
        access: dict = {}
        if not a.browserless:
            access["browser"] = d.browser
            access["browser_version"] = versions(d.browser, days[i] - p.upgrade_lag)
            access["flash_version"] = "uninstalled"
        access["hostname"] = dev_name if a.browserless and d.kind == "laptop" else None
        access["ip"] = ip
        if not a.browserless:
            access["is_encryption_enabled"] = "unknown"
            access["is_firewall_enabled"] = "unknown"
            access["is_password_set"] = "unknown"
            access["java_version"] = "uninstalled"
        access["location"] = loc
        access["os"] = d.os
        access["os_version"] = d.os_version
        if factor == "remembered_device":
            auth = {"ip": None, "location": _NO_LOC, "name": None}
        elif factor == "duo_mobile_passcode" or auth_city < 0:
            auth = {"ip": None, "location": _NO_LOC, "name": auth_name}
        elif factor == "webauthn_security_key" or auth_city == city:
            auth = {"ip": ip, "location": loc, "name": auth_name}
        else:
            auth = {"ip": auth_ips[i], "location": _location(auth_city), "name": auth_name}
        result = "success" if ok else "denied"
        records.append({
            "access_device": access,
            "alias": "",
            "application": {"key": a.key, "name": a.name},
            "auth_device": auth,
            "email": p.upn,
            "event_type": "authentication",
            "factor": factor,
            "isotimestamp": iso[i] + "+00:00",
            "ood_software": None,
            "reason": reason,
            "result": result,
            "timestamp": secs[i],
            "trusted_endpoint_status": "trusted" if slot == 0 and p.managed[0][0] is not None else "not trusted",
            "txid": event_ids[i],
            "user": {"groups": [f"{ALL_CITIES[3 * p.office].city} staff"], "key": p.duo_key, "name": p.name},
        })
    return records


def _user_agent(d: vocab.Device, version: str, client: str) -> str:
    if client != "Browser":
        return f"Mozilla/5.0 ({_UA_OS.get(d.os, 'Windows NT 10.0')}) MSAL/{version}"
    token = {"Edge Chromium": f"Chrome/{version} Safari/537.36 Edg/{version}", "Firefox": f"Gecko/20100101 Firefox/{version}",
             "Safari": f"Version/{version} Safari/605.1.15", "Mobile Safari": f"Version/{version} Mobile/15E148 Safari/604.1",
             "Samsung Internet": f"SamsungBrowser/{version} Chrome/120.0.0.0 Mobile Safari/537.36"}
    tail = token.get(d.browser, f"Chrome/{version} Safari/537.36")
    return f"Mozilla/5.0 ({_UA_OS.get(d.os, 'Windows NT 10.0')}) AppleWebKit/537.36 (KHTML, like Gecko) {tail}"


def azure_records(columns: dict[str, list], event_ids: list[str], corr_ids: list[str], people: list[Person],
                  day0_ms: int, tenant: str) -> list[dict]:
    """Azure AD sign-ins in the diagnostic-settings envelope around the Graph ``signIn``."""
    ts = np.asarray(columns["ts"], dtype=np.int64)
    iso = ids.iso_utc(ts, 7)
    days = ((ts - day0_ms) // DAY_MS).tolist()
    versions = _Versions()
    names = ("user", "city", "ip", "dev", "app", "client", "code", "reason", "interactive", "dev_name", "dev_id", "trust")
    cols = [columns[c] for c in names]
    records = []
    for i, (u, city, ip, dev, app, client, code, reason, inter, dev_name, dev_id, trust) in enumerate(
            zip(*cols, strict=True)):
        p, d, a = people[u], ALL_DEVICES[dev], vocab.AZURE_APPS[app]
        c = ALL_CITIES[city]
        family = d.browser if client == "Browser" else "Rich Client"
        version = versions(family, days[i] - p.upgrade_lag)
        detail = {"deviceId": dev_id or "", "operatingSystem": d.azure_os,
                  "browser": f"{_AZURE_BROWSER.get(family, family)} {version}"}
        if dev_name is not None:
            detail["displayName"] = dev_name
            detail["isCompliant"] = trust != "Azure AD registered"
            detail["isManaged"] = trust != "Azure AD registered"
            detail["trustType"] = trust
        failed = int(code) != 0
        status = {"errorCode": int(code), "failureReason": reason}
        if failed:
            status["additionalDetails"] = "The user did not complete the sign-in." if int(code) in (50074, 50140) else None
        inter = bool(inter)
        props = {
            "id": event_ids[i],
            "createdDateTime": iso[i] + "+00:00",
            "userDisplayName": p.display,
            "userPrincipalName": p.upn,
            "userId": p.azure_id,
            "appId": a.app_id,
            "appDisplayName": a.name,
            "ipAddress": ip,
            "status": status,
            "clientAppUsed": client,
            "userAgent": _user_agent(d, version, client),
            "deviceDetail": detail,
            "location": {"city": c.city, "state": c.state, "countryOrRegion": c.country},
            "correlationId": corr_ids[i],
            "conditionalAccessStatus": "success" if inter and not failed else "notApplied",
            "isInteractive": inter,
            "authenticationRequirement": "multiFactorAuthentication" if inter else "singleFactorAuthentication",
            "riskDetail": "none",
            "riskLevelAggregated": "none",
            "riskLevelDuringSignIn": "none",
            "riskState": "none",
            "riskEventTypes_v2": [],
            "resourceDisplayName": a.name,
            "homeTenantId": tenant,
            "userType": "Member",
        }
        rec = {
            "time": iso[i] + "Z",
            "resourceId": f"/tenants/{tenant}/providers/Microsoft.aadiam",
            "operationName": "Sign-in activity",
            "operationVersion": "1.0",
            "category": "SignInLogs" if inter else "NonInteractiveUserSignInLogs",
            "tenantId": tenant,
            "resultType": str(int(code)),
            "resultSignature": "None",
        }
        if failed:
            rec["resultDescription"] = reason
        rec.update({"durationMs": 0, "callerIpAddress": ip, "correlationId": corr_ids[i], "identity": p.display,
                    "Level": 4, "location": c.country, "properties": props})
        records.append(rec)
    return records
