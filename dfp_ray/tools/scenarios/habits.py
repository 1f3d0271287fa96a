"""People and their normal days in the ``habits`` scenario family.

Users are drawn from archetypes whose habits differ from `dfp-ray datagen`'s single office
profile: office workers (rare weekend and late-evening logins), night-shift workers, people
who work Wednesday to Sunday, heavy users (dozens of events a day), light users (one event
a day or less: a few dozen rows of history), and travellers. Rare-but-normal behaviour is
part of every training window and recurs in inference: a second city near home, a weekend
login, a late evening, a rarely used application, and browser versions that roll forward
(a release lands just before inference, so many users show a version never seen in training).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dfp_ray.tools.scenarios import catalog
from dfp_ray.tools.scenarios.config import HabitsConfig

ALL_CITIES: tuple[catalog.City, ...] = (
    tuple(h for h, _ in catalog.HOMES) + tuple(s for _, s in catalog.HOMES) + catalog.FOREIGN
)
N_HOMES = len(catalog.HOMES)
FOREIGN_IDS = np.arange(2 * N_HOMES, len(ALL_CITIES))
ALL_DEVICES: tuple[catalog.Device, ...] = tuple(d for _, d in catalog.DEVICES) + catalog.ATTACKER_DEVICES
N_USER_DEVICES = len(catalog.DEVICES)
ALL_APPS: tuple[catalog.App, ...] = catalog.APPS + catalog.SENSITIVE_APPS
SENSITIVE_IDS = np.arange(len(catalog.APPS), len(ALL_APPS))
ARCHETYPES = ("office", "shift", "midweek", "heavy", "light", "traveller")
ARCHETYPE_WEIGHTS = (0.42, 0.1, 0.1, 0.1, 0.16, 0.12)
DAY_MS = 86_400_000
EVENT_COLUMNS = ("user", "ts", "city", "device", "version", "app", "factor", "result", "reason", "kind", "note")


@dataclass
class Person:
    name: str
    upn: str
    archetype: str
    home: int  # index into ALL_CITIES
    second: int
    second_share: float
    start_h: float  # local hour the active period starts
    len_h: float
    workdays: np.ndarray  # bool[7], Monday first
    off_day_factor: float  # rate on non-working days, as a share of the working-day rate
    late_share: float  # share of events in the three hours after the active period
    rate: float  # mean events per working day
    devices: np.ndarray  # indices into ALL_DEVICES
    device_p: np.ndarray
    apps: np.ndarray  # indices into ALL_APPS
    app_p: np.ndarray
    factor: int  # index into catalog.FACTORS
    fail_rate: float
    fail_reasons: list[str]
    phone: str
    upgrade_lag: int  # days after a browser release before this user runs it
    trips: list[tuple[int, int, int]] = field(default_factory=list)  # (first day, days, city)

    @property
    def utc_offset(self) -> float:
        return ALL_CITIES[self.home].utc_offset

    def quiet_hour(self) -> float:
        """The local hour farthest from the middle of the user's active period."""
        return (self.start_h + self.len_h / 2 + 12.0) % 24.0


def _shares(rng: np.random.Generator, k: int, main: tuple[float, float], exponent: float) -> np.ndarray:
    """A main habit and a Zipf-like tail: the last of several habits may be a rare one (2-6%)."""
    if k == 1:
        return np.ones(1)
    rest = 1.0 / np.arange(1, k) ** exponent
    rest = rest / rest.sum() * (1 - rng.uniform(*main))
    p = np.concatenate([[1 - rest.sum()], rest])
    return p / p.sum()


def build_people(cfg: HabitsConfig, rng: np.random.Generator) -> list[Person]:
    people: list[Person] = []
    seen: set[str] = set()
    dev_w = np.array([w for w, _ in catalog.DEVICES], dtype=float)
    app_w = np.array([a.weight for a in catalog.APPS], dtype=float)
    for _ in range(cfg.users):
        first, last = catalog.FIRST[rng.integers(len(catalog.FIRST))], catalog.LAST[rng.integers(len(catalog.LAST))]
        name, k = f"{first}.{last}", 2
        while name in seen:
            name, k = f"{first}.{last}{k}", k + 1
        seen.add(name)
        arch = ARCHETYPES[int(rng.choice(len(ARCHETYPES), p=ARCHETYPE_WEIGHTS))]
        home = int(rng.integers(N_HOMES))
        second_share = 0.0 if rng.random() < 0.3 else float(rng.uniform(0.03, 0.15))
        workdays = np.array([True] * 5 + [False] * 2)
        start, length, off, late = rng.normal(8.5, 1.0), rng.uniform(8, 10), rng.uniform(0.0, 0.08), rng.uniform(0.01, 0.04)
        rate = float(rng.lognormal(np.log(6), 0.35))
        if arch == "shift":
            start, length, off, late = rng.uniform(20, 23), 8.0, rng.uniform(0.7, 1.0), 0.02
        elif arch == "midweek":
            workdays = np.roll(np.array([True] * 5 + [False] * 2), 2)  # Wednesday to Sunday
            start = rng.normal(10.0, 1.0)
        elif arch == "heavy":
            start, length, off, rate = rng.uniform(6.5, 8), rng.uniform(10.5, 12), rng.uniform(0.1, 0.3), float(rng.uniform(25, 50))
        elif arch == "light":
            rate = float(rng.uniform(0.6, 1.6))
        n_dev = int(rng.choice([1, 2, 3], p=[0.35, 0.45, 0.2]))
        devices = rng.choice(N_USER_DEVICES, size=n_dev, replace=False, p=dev_w / dev_w.sum())
        n_app = int(rng.integers(2, 7))
        apps = rng.choice(len(catalog.APPS), size=n_app, replace=False, p=app_w / app_w.sum())
        if rng.random() < 0.08:  # a few administrators: sensitive applications are not unknown to the population
            apps = np.append(apps, SENSITIVE_IDS[rng.integers(len(SENSITIVE_IDS))])
        factor_p = np.array([f[2] for f in catalog.FACTORS])
        n_fail = int(rng.choice([1, 2], p=[0.7, 0.3]))
        person = Person(
            name=name,
            upn=f"{name}@{catalog.DOMAIN}",
            archetype=arch,
            home=home,
            second=home + N_HOMES,
            second_share=second_share,
            start_h=float(np.clip(start, 0, 23.9)),
            len_h=float(length),
            workdays=workdays,
            off_day_factor=float(off),
            late_share=float(late),
            rate=rate,
            devices=devices.astype(np.int64),
            device_p=_shares(rng, n_dev, (0.6, 0.85), 1.0),
            apps=apps.astype(np.int64),
            app_p=_shares(rng, len(apps), (0.3, 0.6), 1.3),
            factor=int(rng.choice(len(catalog.FACTORS), p=factor_p / factor_p.sum())),
            fail_rate=float(rng.uniform(0.02, 0.1)),
            fail_reasons=[str(r) for r in rng.choice(catalog.FAIL_REASONS, size=n_fail, replace=False)],
            phone=f"{catalog.PHONES[rng.integers(len(catalog.PHONES))]} ({rng.integers(200, 990)}-555-{rng.integers(0, 10000):04d})",
            upgrade_lag=int(rng.integers(0, 7)),
        )
        n_trips = int(rng.integers(2, 4)) if arch == "traveller" else int(rng.random() < 0.25)
        for _ in range(n_trips):
            days = int(rng.integers(1, 4))
            first_day = int(rng.integers(1, max(2, cfg.train_days - days - 2)))
            city = int(rng.choice([c for c in range(N_HOMES) if c != home]))
            person.trips.append((first_day, days, city))
        people.append(person)
    return people


def browser_version(cfg: HabitsConfig, family: str, day: np.ndarray, lag: int) -> np.ndarray:
    """The major version a user runs on each day: releases every ``period`` days, one of them two
    days before inference starts; the user picks a release up ``lag`` days after it."""
    base, period = catalog.BROWSER_RELEASES[family]
    anchor = cfg.train_days - 2  # a release day
    releases_before = np.floor((day - lag - anchor) / period).astype(np.int64)
    major = base + releases_before + int(np.ceil(anchor / period))
    return np.array([f"{m}.0.{(m * 37) % 900 + 100}" for m in major.tolist()], dtype=object)


def normal_day(cfg: HabitsConfig, people: list[Person], day: int, rng: np.random.Generator, day0_ms: int) -> pd.DataFrame:
    """Every user's normal events of local day ``day`` (in their own time zone)."""
    weekday = (cfg.start_date.weekday() + day) % 7
    parts = []
    for u, p in enumerate(people):
        working = bool(p.workdays[weekday])
        mean = p.rate * (1.0 if working else p.off_day_factor) * rng.lognormal(0.0, 0.25)
        n = int(rng.poisson(mean))
        if n == 0:
            continue
        hours = p.start_h + p.len_h * rng.beta(2.0, 2.0, n)
        late = rng.random(n) < p.late_share
        hours = np.where(late, p.start_h + p.len_h + rng.uniform(0.0, 3.0, n), hours)
        ts = day0_ms + day * DAY_MS + np.round((hours - p.utc_offset) * 3_600_000).astype(np.int64)
        ts += rng.integers(0, 60_000, n)
        city = np.full(n, p.home)
        for first, length, trip_city in p.trips:
            if first <= day < first + length:
                city[:] = trip_city
        second = (city == p.home) & (rng.random(n) < p.second_share)
        city = np.where(second, p.second, city)
        device = p.devices[rng.choice(len(p.devices), size=n, p=p.device_p)]
        app = p.apps[rng.choice(len(p.apps), size=n, p=p.app_p)]
        failed = rng.random(n) < p.fail_rate
        reason_ok = catalog.FACTORS[p.factor][1]
        reasons = np.where(failed, rng.choice(p.fail_reasons, size=n), reason_ok).astype(object)
        note = np.full(n, "", dtype=object)
        note = np.where(late, "late_evening", note)
        note = np.where(not working, "off_day_login", note)
        note = np.where(second, "second_city", note)
        parts.append(
            pd.DataFrame(
                {
                    "user": u, "ts": ts, "city": city, "device": device, "version": None, "app": app,
                    "factor": catalog.FACTORS[p.factor][0], "result": ~failed, "reason": reasons,
                    "kind": "", "note": note,
                }
            )
        )
    if not parts:
        return pd.DataFrame({c: [] for c in EVENT_COLUMNS})
    return pd.concat(parts, ignore_index=True)


def fill_versions(cfg: HabitsConfig, people: list[Person], frame: pd.DataFrame, day0_ms: int) -> pd.DataFrame:
    """The browser version of every event (from its UTC day and the user's upgrade lag)."""
    frame = frame.copy()
    day = (frame["ts"].to_numpy() - day0_ms) // DAY_MS
    versions = np.empty(len(frame), dtype=object)
    users, devices = frame["user"].to_numpy(), frame["device"].to_numpy()
    for dev in np.unique(devices):
        family = ALL_DEVICES[int(dev)].browser
        for u in np.unique(users[devices == dev]):
            mask = (devices == dev) & (users == u)
            versions[mask] = browser_version(cfg, family, day[mask], people[int(u)].upgrade_lag)
    frame["version"] = versions
    return frame
