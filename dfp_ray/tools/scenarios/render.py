"""Events of the ``habits`` family -> raw Duo v2 and Azure AD sign-in records (the shipped schemas map both)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dfp_ray.tools.datagen import ids
from dfp_ray.tools.scenarios import catalog
from dfp_ray.tools.scenarios.habits import ALL_APPS, ALL_CITIES, ALL_DEVICES, Person


def _values(frame: pd.DataFrame, name: str) -> list:
    return ids.column_values(frame, name)


def duo_records(frame: pd.DataFrame, event_ids: list[str], people: list[Person], ips: list[str]) -> list[dict]:
    iso = ids.iso_utc(frame["ts"].to_numpy(), 6)
    secs = (frame["ts"].to_numpy() // 1000).tolist()
    records = []
    cols = [_values(frame, c) for c in ("user", "city", "device", "version", "app", "factor", "result", "reason")]
    for i, (u, c, d, version, a, factor, ok, reason) in enumerate(zip(*cols, strict=True)):
        person, city, dev, app = people[u], ALL_CITIES[c], ALL_DEVICES[d], ALL_APPS[a]
        location = {"city": city.city, "country": city.country, "state": city.state}
        records.append(
            {
                "access_device": {
                    "browser": dev.browser, "browser_version": version, "hostname": None, "ip": ips[i],
                    "location": location, "os": dev.os, "os_version": dev.os_version,
                },
                "application": {"key": app.key, "name": app.name},
                "auth_device": {"ip": ips[i], "location": location, "name": person.phone},
                "email": person.upn,
                "event_type": "authentication",
                "factor": factor,
                "isotimestamp": iso[i] + "+00:00",
                "reason": reason,
                "result": "success" if ok else "denied",
                "timestamp": secs[i],
                "txid": event_ids[i],
                "user": {"groups": ["Staff"], "key": f"DU{u:06d}", "name": person.name},
            }
        )
    return records


def azure_records(frame: pd.DataFrame, event_ids: list[str], people: list[Person], ips: list[str]) -> list[dict]:
    iso = ids.iso_utc(frame["ts"].to_numpy(), 7)
    records = []
    cols = [_values(frame, c) for c in ("user", "city", "device", "version", "app", "result", "reason")]
    for i, (u, c, d, version, a, ok, reason) in enumerate(zip(*cols, strict=True)):
        person, city, dev, app = people[u], ALL_CITIES[c], ALL_DEVICES[d], ALL_APPS[a]
        browser_client = app.client == "Browser"
        browser = f"{dev.browser} {version}" if browser_client else "Rich Client 5.2.1"
        status = (
            {"errorCode": 0, "failureReason": catalog.AZURE_OK}
            if ok
            else {"errorCode": catalog.AZURE_ERROR_CODES.get(reason, 50126),
                  "failureReason": catalog.AZURE_FAILURES.get(reason, "Authentication failed.")}
        )
        records.append(
            {
                "time": iso[i] + "Z",
                "category": "SignInLogs",
                "operationName": "Sign-in activity",
                "resultType": str(status["errorCode"]),
                "properties": {
                    "id": event_ids[i],
                    "createdDateTime": iso[i] + "+00:00",
                    "userPrincipalName": person.upn,
                    "appDisplayName": app.name,
                    "appId": app.key,
                    "clientAppUsed": app.client,
                    "ipAddress": ips[i],
                    "isInteractive": True,
                    "status": status,
                    "deviceDetail": {"browser": browser, "operatingSystem": f"{dev.os} {dev.os_version}".strip(),
                                     "displayName": None, "deviceId": "", "trustType": None},
                    "location": {"city": city.city, "state": city.state, "countryOrRegion": city.country},
                    "riskLevelDuringSignIn": "none",
                },
            }
        )
    return records


def addresses(frame: pd.DataFrame, prefixes: np.ndarray, rng: np.random.Generator) -> list[str]:
    """A public-looking address per event inside its city's /16."""
    return ids.public_ips(rng, prefixes[frame["city"].to_numpy()])
