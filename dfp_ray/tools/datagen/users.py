"""The people behind the logs: who they are, where they live, when they work, how they travel.

One :class:`Population` is drawn from the seed and shared by every source, so ``j.doe`` in the
Duo logs and ``john.doe@corp.example`` in the Azure AD logs are the same person with the same
home city, working hours and trips. Each source then adds its own habits (devices, apps,
factors) on top, in :mod:`dfp_ray.tools.datagen.duo` and :mod:`dfp_ray.tools.datagen.azure`.

Everything is stored as numpy arrays indexed by user so a whole day of events can be sampled
with a handful of vectorised draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dfp_ray.tools.datagen import catalog
from dfp_ray.tools.datagen.config import DatagenConfig

ATTACK_TARGET = "attacktarget"
SECOND_LOCATION_SHARE = (0.08, 0.3)  # range of users' share of events from their nearby city
DAILY_SD = 0.4  # sd of a user's daily event count, as a multiple of the Poisson sd
DAILY_CAP = 1.0  # a day's count never exceeds the user's rate + DAILY_CAP sd
EVENING_SHARE = (0.0, 0.04)  # range of users' share of events in the two hours after work
# Stream ids for numpy SeedSequence: every consumer of randomness gets its own stream, so
# adding a source or changing one source's code never changes another source's bytes.
STREAM_PEOPLE = 0
STREAM_DUO = 1
STREAM_AZURE = 2

ALL_CITIES: tuple[catalog.City, ...] = (
    catalog.HOME_CITIES + catalog.ATTACKER_CITIES + catalog.DATACENTER_CITIES + catalog.NEARBY_CITIES
)
NEARBY_OFFSET = len(ALL_CITIES) - len(catalog.NEARBY_CITIES)  # NEARBY_CITIES[i] pairs with HOME_CITIES[i]
N_HOME_CITIES = len(catalog.HOME_CITIES)


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    """Independent, reproducible random stream for (seed, *stream)."""
    return np.random.default_rng([seed, *stream])


def weighted_pick(rng: np.random.Generator, n: int, weights, size=None, replace=True):
    """Draw indices 0..n-1 with the given (unnormalised) weights."""
    p = np.asarray(weights, dtype=float)
    return rng.choice(n, size=size, replace=replace, p=p / p.sum())


def choose_rows(rng: np.random.Generator, cum: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each event (row of a user), pick a slot from that user's cumulative-probability row.

    ``cum`` is (users, slots) with unused slots padded by +inf; one uniform draw per event.
    """
    r = rng.random(len(rows))
    return (r[:, None] >= cum[rows]).sum(axis=1)


def habit_shares(rng: np.random.Generator, k: int, first: tuple[float, float], floor: float) -> np.ndarray:
    """Shares of a user's ``k`` habits (devices, apps): a main one, the rest never below ``floor``.

    A habit used on 2% of events is what makes a per-user model flag the user's own ordinary
    behaviour; real habits are either regular or absent.
    """
    p = np.empty(k)
    p[0] = rng.uniform(*first) if k > 1 else 1.0
    if k > 1:
        rest = rng.dirichlet(np.ones(k - 1) * 4) * (1 - p[0])
        p[1:] = np.maximum(rest, floor)
    return p / p.sum()


def cumulative(probs: list[np.ndarray], width: int) -> np.ndarray:
    """Stack ragged per-user probability vectors into a padded cumulative matrix."""
    out = np.full((len(probs), width), np.inf)
    for i, p in enumerate(probs):
        c = np.cumsum(p / p.sum())
        c[-1] = 1.0
        out[i, : len(c)] = c
    return out


@dataclass
class Population:
    """Per-user arrays (length ``users``) plus per-user-per-local-day location."""

    first: list[str]
    last: list[str]
    display_name: list[str]
    duo_username: list[str]
    upn: list[str]
    home: np.ndarray  # index into ALL_CITIES
    second: np.ndarray  # the user's other usual location (index into ALL_CITIES)
    second_share: np.ndarray  # share of at-home events that geolocate there
    utc_offset: np.ndarray  # hours (from home city)
    work_start: np.ndarray  # local hour the working day starts
    work_len: np.ndarray  # hours
    weekday_rate: np.ndarray  # mean events per weekday
    weekend_factor: np.ndarray  # weekend rate = weekday_rate * factor
    evening_share: np.ndarray  # share of events in the two hours after work
    city_by_day: np.ndarray  # (users, total_days + 4): city at local day d is column d + 2
    trips: list[list[tuple[int, int, int]]]  # per user: (first local day, days, city)

    @property
    def size(self) -> int:
        return len(self.first)

    def city_on(self, local_day: int) -> np.ndarray:
        return self.city_by_day[:, local_day + 2]


def _names(rng: np.random.Generator, n: int) -> tuple[list[str], list[str]]:
    firsts, lasts, seen = [], [], set()
    for _ in range(n):
        for _attempt in range(50):
            f = catalog.FIRST_NAMES[rng.integers(len(catalog.FIRST_NAMES))]
            la = catalog.LAST_NAMES[rng.integers(len(catalog.LAST_NAMES))]
            if (f, la) not in seen:
                break
        # Past ~5,000 users name pairs repeat: a numeric suffix keeps accounts distinct, as IT does.
        base, k = la, 2
        while (f, la) in seen:
            la, k = f"{base}{k}", k + 1
        seen.add((f, la))
        firsts.append(f)
        lasts.append(la)
    return firsts, lasts


def _duo_usernames(rng: np.random.Generator, firsts: list[str], lasts: list[str]) -> list[str]:
    """Duo usernames in the styles real tenants mix: ``jdoe``, ``j.doe``, ``john.doe``, e-mail."""
    styles = rng.choice(4, size=len(firsts), p=[0.45, 0.2, 0.25, 0.1])
    # Names with dots and '@' are a known trouble spot downstream (model registry naming):
    # make sure every data set with a few users has both.
    if len(firsts) >= 3:
        styles[1], styles[2] = 1, 3
    names, seen = [], set()
    for f, la, s in zip(firsts, lasts, styles, strict=True):
        f0 = f.replace("-", "")
        name = {
            0: f"{f0[0]}{la}",
            1: f"{f0[0]}.{la}",
            2: f"{f0}.{la}",
            3: f"{f0}.{la}@{catalog.COMPANY_DOMAIN}",
        }[int(s)]
        base, k = name, 2
        while name in seen:
            name, k = f"{base}{k}" if "@" not in base else base.replace("@", f"{k}@"), k + 1
        seen.add(name)
        names.append(name)
    return names


def _trips(
    rng: np.random.Generator, home: int, offices: np.ndarray, train_days: int
) -> list[tuple[int, int, int]]:
    """Zero to two business trips, all inside the training window.

    Trips end at least two days before inference starts: travel is normal behaviour the model
    must learn, but a normal user travelling somewhere new during inference would be a true
    "new location" that no label covers.
    """
    n = min(int(rng.poisson(0.9)), 2)
    trips: list[tuple[int, int, int]] = []
    last_possible = train_days - 3
    for _ in range(n):
        length = int(rng.integers(1, 5))
        if last_possible - length < 1:
            break
        first = int(rng.integers(1, last_possible - length + 1))
        if any(first <= t0 + tl and t0 <= first + length for t0, tl, _ in trips):
            continue
        choices = [c for c in offices if c != home] if rng.random() < 0.75 else []
        if not choices:
            choices = [c for c in range(N_HOME_CITIES) if c != home]
        trips.append((first, length, int(choices[rng.integers(len(choices))])))
    return sorted(trips)


def build_population(config: DatagenConfig) -> Population:
    """Draw every user's identity and timetable from the seed (stream STREAM_PEOPLE)."""
    rng = rng_for(config.seed, STREAM_PEOPLE)
    n = config.users
    firsts, lasts = _names(rng, n)
    if n >= 1:
        # Morpheus's example data set names its victim `attacktarget`; keep that user.
        firsts[0], lasts[0] = "attack", "target"
    display = [f"{f.title()} {la.title()}" for f, la in zip(firsts, lasts, strict=True)]
    duo_names = _duo_usernames(rng, firsts, lasts)
    upns = [
        f"{f}.{la}@{catalog.COMPANY_DOMAIN}".replace("-", "") for f, la in zip(firsts, lasts, strict=True)
    ]
    if n >= 1:
        duo_names[0], upns[0], display[0] = (
            ATTACK_TARGET,
            f"{ATTACK_TARGET}@{catalog.COMPANY_DOMAIN}",
            "Attack Target",
        )
    # The brief wants a dotted Duo name and an e-mail-style one; _duo_usernames made users 1, 2 so.

    offices = np.arange(catalog.N_OFFICES)
    office_w = np.array([8, 6, 4, 4, 3, 3], dtype=float)[: catalog.N_OFFICES]
    remote_w = np.ones(N_HOME_CITIES - catalog.N_OFFICES) * 0.35
    home = weighted_pick(rng, N_HOME_CITIES, np.concatenate([office_w, remote_w]), size=n)
    utc_offset = np.array([ALL_CITIES[c].utc_offset for c in home])
    # Nobody connects from one geolocation only: the office network, the phone's carrier or the
    # ISP put some events in a nearby city, so "two locations in a day" is ordinary.
    second = NEARBY_OFFSET + home
    second_share = rng.uniform(*SECOND_LOCATION_SHARE, n)

    work_start = rng.normal(8.6, 0.9, n).clip(6.5, 11.0)
    work_len = rng.normal(9.0, 0.8, n).clip(7.0, 11.0)
    # Morpheus's example averages ~5 events per user per day; users differ by ~2x either way.
    weekend_factor = rng.uniform(0.05, 0.35, n)
    mean_daily = config.events_per_user_per_day * rng.lognormal(0.0, 0.35, n)
    mean_daily *= config.events_per_user_per_day / max(mean_daily.mean(), 1e-9) if n >= 10 else 1.0
    weekday_rate = mean_daily / (5 / 7 + 2 / 7 * weekend_factor)
    evening_share = rng.uniform(*EVENING_SHARE, n)

    total = config.total_days
    city_by_day = np.repeat(home[:, None], total + 4, axis=1)
    trips = []
    for u in range(n):
        t = _trips(rng, int(home[u]), offices, config.train_days)
        trips.append(t)
        for first, length, city in t:
            city_by_day[u, first + 2 : first + 2 + length] = city
    return Population(
        first=firsts,
        last=lasts,
        display_name=display,
        duo_username=duo_names,
        upn=upns,
        home=home,
        second=second,
        second_share=second_share,
        utc_offset=utc_offset,
        work_start=work_start,
        work_len=work_len,
        weekday_rate=weekday_rate,
        weekend_factor=weekend_factor,
        evening_share=evening_share,
        city_by_day=city_by_day,
        trips=trips,
    )


@dataclass
class DayEvents:
    """The when/who/where of one local day of normal activity, before source-specific details."""

    user: np.ndarray  # int
    ts_ms: np.ndarray  # int64 epoch milliseconds, UTC
    city: np.ndarray  # index into ALL_CITIES


def sample_day(
    pop: Population, config: DatagenConfig, local_day: int, rng: np.random.Generator, day0_ms: int
) -> DayEvents:
    """Sample when each user is active on ``local_day`` (their own calendar day, in their time zone).

    Events fall in the user's working hours (a hump in the middle of the day) with a small share
    in the evening; weekends are quieter. On the first and last day of a trip the user is at
    home before local noon and at the destination after (first day), or the reverse (last day),
    which is what makes a "two locations in one day" pattern appear in normal training data.
    """
    date = config.start_date.toordinal() + local_day
    weekend = (date - 1) % 7 >= 5  # date.toordinal(): 0001-01-01 is a Monday
    rate = pop.weekday_rate * (pop.weekend_factor if weekend else 1.0)
    # People's daily volume is steadier than a Poisson process (DAILY_SD times the Poisson sd)
    # and has a ceiling: an ordinary day is never much busier than usual.
    sd = DAILY_SD * np.sqrt(rate)
    counts = np.clip(np.rint(rng.normal(rate, sd)), 0, np.rint(rate + DAILY_CAP * sd)).astype(np.int64)
    user = np.repeat(np.arange(pop.size), counts)
    n = len(user)
    hours = pop.work_start[user] + pop.work_len[user] * rng.beta(1.8, 1.8, n)
    evening = rng.random(n) < pop.evening_share[user]
    hours = np.where(evening, pop.work_start[user] + pop.work_len[user] + rng.uniform(0.0, 2.0, n), hours)
    utc_hours = hours - pop.utc_offset[user]
    ts = day0_ms + local_day * 86_400_000 + np.round(utc_hours * 3_600_000).astype(np.int64)
    ts = ts + rng.integers(0, 1000, n)  # sub-second jitter

    today = pop.city_on(local_day)[user]
    yesterday = pop.city_on(local_day - 1)[user]
    tomorrow = pop.city_on(local_day + 1)[user]
    home = pop.home[user]
    morning = hours < 12.0
    # Departure day: today away, yesterday home -> home in the morning.
    city = np.where((today != home) & (yesterday == home) & morning, home, today)
    # Return day: today home... modelled as the trip's last day: away in the morning, home after.
    city = np.where((today != home) & (tomorrow == home) & ~morning & (yesterday != home), home, city)
    nearby = (city == home) & (rng.random(n) < pop.second_share[user])
    city = np.where(nearby, pop.second[user], city)
    return DayEvents(user=user, ts_ms=ts, city=city)
