"""The roster: a distributed workforce, one population shared by both sources.

Why these people: the other families put most users on one office schedule in a handful of
zones. Here working hours are local to six offices from UTC-8 to UTC+9, so in UTC they differ
per user; a tenth work rotating shifts (a week early, a week late); volume is heavy-tailed
(most people 2-15 events a working day, a few help-desk / service-like accounts 40-120, a
few sparse users with one session every few days, some below the per-user training minimum);
a few people went quiet (leave, project end) more than ten days before training ends. Each
person has a laptop and a phone (sometimes a tablet), one to three usual cities with IP pools
that change now and then, their own factor and application habits, and rare mistakes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dfp_ray.tools.datagen import ids
from dfp_ray.tools.roster import vocab
from dfp_ray.tools.roster.config import RosterConfig

ALL_CITIES: tuple[vocab.City, ...] = (
    tuple(c for office in vocab.OFFICES for c in office) + vocab.TRAVEL + vocab.ELSEWHERE
)
CITY_ID = {c.city: i for i, c in enumerate(ALL_CITIES)}
N_OFFICE_CITIES = 3 * len(vocab.OFFICES)
TRAVEL_IDS = np.array([CITY_ID[c.city] for c in vocab.TRAVEL])
ELSEWHERE_IDS = np.array([CITY_ID[c.city] for c in vocab.ELSEWHERE])
CUSTOMER_IDS = np.array([CITY_ID[c] for c in vocab.CUSTOMER_SITES])
HOSTING_IDS = np.array([CITY_ID[c] for c in vocab.HOSTING])
ALL_DEVICES: tuple[vocab.Device, ...] = (
    tuple(d for _, d in vocab.LAPTOPS) + tuple(d for _, d in vocab.PHONES) + tuple(d for _, d in vocab.TABLETS)
)
LAPTOP_IDS = np.arange(len(vocab.LAPTOPS))
PHONE_IDS = np.arange(len(vocab.LAPTOPS), len(vocab.LAPTOPS) + len(vocab.PHONES))
TABLET_IDS = np.arange(len(vocab.LAPTOPS) + len(vocab.PHONES), len(ALL_DEVICES))
DUO_APP_ID = {a.name: i for i, a in enumerate(vocab.DUO_APPS)}
AZURE_APP_ID = {a.name: i for i, a in enumerate(vocab.AZURE_APPS)}
# How many extra events follow a session's first one (0..6): "a login and a few more within minutes".
SESSION_EXTRA_P = np.array([0.22, 0.24, 0.19, 0.14, 0.1, 0.07, 0.04])
VOLUME_CLASSES = ("regular", "heavy", "sparse")
VOLUME_WEIGHTS = (0.84, 0.06, 0.10)
NEVER = 1 << 30  # a day index after every window
DORMANT_SHARE = 0.1


@dataclass
class Person:
    """One member of the workforce and every habit the generator samples events from."""

    name: str  # Duo username
    upn: str  # Azure AD userPrincipalName (and Duo e-mail)
    display: str
    duo_key: str
    azure_id: str
    office: int  # index into vocab.OFFICES
    volume: str  # regular / heavy / sparse
    rotating: bool  # a week early, a week late
    start_h: float  # local start of the working day (early week for rotating shifts)
    len_h: float
    late_start_h: float  # rotating shifts: the late week's start
    rotation_phase: int
    weekend_rate: float  # share of a working day's sessions on a Saturday or Sunday (0: never)
    evening_share: float  # sessions in the three hours after the working day
    sessions_per_day: float  # mean sessions on a working day (sparse: probability of one)
    extra_p: np.ndarray  # session size habit: P(0..6 follow-up events)
    active_until: int  # first training day with no activity (dormant people); NEVER otherwise
    cities: np.ndarray  # global city ids: home first, then office / others
    city_p: np.ndarray
    home_ips: list[str]  # the home line's address, then the address it changes to
    ip_change_day: int
    other_ips: dict[int, str]  # a fixed address for each other usual city (not the office)
    devices: np.ndarray  # global device ids: laptop first, then phone, maybe a tablet
    device_p: np.ndarray
    upgrade_lag: int  # days after a browser release before this person runs it
    phone_model: str
    phone_number: str
    security_key: str | None
    duo_factors: list[str]  # first-factor habits (never remembered_device)
    duo_factor_p: np.ndarray
    remember_share: float  # share of later auths in a browser session that Duo remembers (0: never)
    duo_apps: np.ndarray
    duo_app_p: np.ndarray
    duo_fail_rate: float
    azure_apps: np.ndarray
    azure_app_p: np.ndarray
    azure_clients: dict[int, str]  # app -> the client this person reaches it with
    azure_fail_codes: list[int]
    azure_fail_rate: float
    noninteractive_share: float
    managed: list[tuple[str | None, str, str | None]]  # per device slot: displayName, deviceId, trustType
    trips: list[tuple[int, int, int]] = field(default_factory=list)  # (first day, days, city) in training

    @property
    def home(self) -> int:
        return int(self.cities[0])

    @property
    def utc_offset(self) -> float:
        return vocab.OFFICES[self.office][0].utc_offset

    @property
    def dst(self) -> bool:
        return vocab.OFFICES[self.office][0].dst

    @property
    def countries(self) -> set[str]:
        return {ALL_CITIES[c].country for c in self.cities.tolist()} | {ALL_CITIES[t[2]].country for t in self.trips}

    @property
    def auth_phone(self) -> str:
        return f"{self.phone_model} ({self.phone_number})"

    def quiet_hour(self, rng: np.random.Generator) -> float:
        """A local hour well outside this person's working hours (rotating shifts: outside both)."""
        if self.rotating:
            return float(rng.uniform(23.0, 27.5) % 24.0)
        end = self.start_h + self.len_h + 3.0
        return float((end + rng.uniform(0.5, max(1.0, 24.0 - self.len_h - 5.0))) % 24.0)


def _shares(rng: np.random.Generator, k: int, main: tuple[float, float], floor: float) -> np.ndarray:
    """A main habit and a tail where every other habit keeps at least ``floor``."""
    if k == 1:
        return np.ones(1)
    first = rng.uniform(*main)
    rest = rng.dirichlet(np.full(k - 1, 1.5)) * (1 - first - floor * (k - 1)) + floor
    p = np.concatenate([[first], rest])
    return p / p.sum()


def _pick(rng: np.random.Generator, weighted: tuple, k: int = 1) -> np.ndarray:
    w = np.array([x[0] if isinstance(x, tuple) else x.weight for x in weighted], dtype=float)
    return rng.choice(len(weighted), size=k, replace=False, p=w / w.sum())


def _phone_number(rng: np.random.Generator, country: str) -> str:
    code = vocab.COUNTRY_CALLING.get(country, "+1")
    return f"{code} {rng.integers(200, 990)}-555-{rng.integers(0, 10000):04d}"


def _device_name(rng: np.random.Generator, kind: str, first: str) -> str:
    tag = "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ23456789"), 6))
    return {"laptop": f"FAB-LT-{tag}", "phone": f"{first.title()}-Phone-{tag[:4]}",
            "tablet": f"FAB-TAB-{tag}"}[kind]


def build_people(cfg: RosterConfig, rng: np.random.Generator, prefixes: np.ndarray) -> list[Person]:
    """The whole roster, from one generator (shared by both sources, so ``a.b`` is one person)."""
    people: list[Person] = []
    seen: set[str] = set()
    office_w = np.array(vocab.OFFICE_WEIGHTS)
    office_ips = [ids.public_ips(rng, np.repeat(prefixes[3 * o][None], 2, 0)) for o in range(len(vocab.OFFICES))]
    for _ in range(cfg.users):
        first = vocab.FIRST[int(rng.integers(len(vocab.FIRST)))]
        last = vocab.LAST[int(rng.integers(len(vocab.LAST)))]
        name, k = f"{first}.{last}", 2
        while name in seen:
            name, k = f"{first}.{last}{k}", k + 1
        seen.add(name)
        office = int(rng.choice(len(vocab.OFFICES), p=office_w / office_w.sum()))
        volume = VOLUME_CLASSES[int(rng.choice(3, p=VOLUME_WEIGHTS))]
        rotating = volume == "regular" and rng.random() < 0.1
        start_h = float(np.clip(rng.normal(8.6, 0.9), 6.0, 11.5))
        len_h = float(rng.uniform(7.5, 10.0))
        late = 14.0 + float(rng.uniform(-0.5, 0.5))
        if rotating:
            start_h, len_h = 6.0 + float(rng.uniform(-0.5, 0.5)), 8.0
        weekend = 0.0 if rng.random() < 0.6 else float(rng.uniform(0.04, 0.15))
        extra_p = rng.dirichlet(SESSION_EXTRA_P * 30)
        mean_size = 1.0 + float((np.arange(7) * extra_p).sum())
        if volume == "heavy":
            events = float(rng.uniform(40, 120))
            len_h = float(rng.uniform(9.0, 11.0))
            weekend = float(rng.uniform(0.15, 0.5))
        else:
            events = float(np.clip(rng.lognormal(np.log(6.0), 0.45), 2.0, 15.0))
        sessions = events / mean_size if volume != "sparse" else float(rng.uniform(0.12, 0.7))
        if volume == "sparse":
            extra_p = np.array([0.65, 0.3, 0.05, 0, 0, 0, 0])
            weekend = 0.0
        # Usual cities: home, often the office, sometimes a third place (partner site, family).
        trio = [3 * office + i for i in range(3)]
        home = int(rng.choice(trio, p=[0.3, 0.35, 0.35]))
        cities = [home]
        if home != 3 * office and rng.random() < 0.75:
            cities.append(3 * office)
        if rng.random() < 0.25:
            cities.append(int(rng.choice([c for c in trio if c not in cities])))
        city_p = _shares(rng, len(cities), (0.5, 0.8), 0.08)
        home_ips = ids.public_ips(rng, np.repeat(prefixes[home][None], 2, 0))
        ip_change = int(rng.integers(0, cfg.total_days)) if rng.random() < 0.35 else NEVER
        other_ips = {c: ids.public_ips(rng, prefixes[c][None])[0] for c in cities[1:] if c != 3 * office}
        for c in cities[1:]:
            if c == 3 * office:
                other_ips[c] = office_ips[office][int(rng.integers(2))]
        # Devices: a laptop, a phone, sometimes a tablet (the phone is also the Duo auth device).
        laptop = int(LAPTOP_IDS[_pick(rng, vocab.LAPTOPS)[0]])
        phone = int(PHONE_IDS[_pick(rng, vocab.PHONES)[0]])
        devices = [laptop, phone]
        if volume != "heavy" and rng.random() < 0.2:
            devices.append(int(TABLET_IDS[_pick(rng, vocab.TABLETS)[0]]))
        if volume == "heavy":
            device_p = np.array([0.9, 0.1])
        else:
            device_p = _shares(rng, len(devices), (0.55, 0.85), 0.06)
        managed = []
        for d in devices:
            kind = ALL_DEVICES[d].kind
            if rng.random() < {"laptop": 0.85, "phone": 0.45, "tablet": 0.3}[kind]:
                trust = "Azure AD joined" if kind == "laptop" and rng.random() < 0.7 else (
                    "Hybrid Azure AD joined" if kind == "laptop" else "Azure AD registered")
                managed.append((_device_name(rng, kind, first), ids.uuids(rng, 1)[0], trust))
            else:
                managed.append((None, "", None))
        # Duo: one or two first factors, maybe a remembered-device habit.
        factor_pool = ["duo_push", "phone_call", "duo_mobile_passcode", "webauthn_security_key"]
        main = factor_pool[int(rng.choice(4, p=[0.62, 0.1, 0.16, 0.12]))]
        factors = [main]
        if rng.random() < 0.35:
            factors.append(str(rng.choice([f for f in factor_pool if f != main])))
        factor_p = _shares(rng, len(factors), (0.7, 0.92), 0.08)
        remember = float(rng.uniform(0.3, 0.8)) if rng.random() < 0.4 else 0.0
        n_duo = int(rng.integers(2, 5)) + (2 if volume == "heavy" else 0)
        duo_apps = _pick(rng, vocab.DUO_APPS, min(n_duo, len(vocab.DUO_APPS)))
        if volume == "heavy" and DUO_APP_ID["ServiceNow"] not in duo_apps:
            duo_apps[-1] = DUO_APP_ID["ServiceNow"]
        if ALL_DEVICES[laptop].os != "Windows":  # Windows Logon only on Windows machines
            others = [a for a in range(len(vocab.DUO_APPS)) if a not in duo_apps and a != DUO_APP_ID["Windows Logon"]]
            duo_apps = np.array([int(rng.choice(others)) if a == DUO_APP_ID["Windows Logon"] else a
                                 for a in duo_apps.tolist()])
        n_az = int(rng.integers(3, 7)) + (2 if volume == "heavy" else 0)
        azure_apps = _pick(rng, vocab.AZURE_APPS, min(n_az, len(vocab.AZURE_APPS)))
        clients = {int(a): str(rng.choice(vocab.AZURE_APPS[a].clients)) if rng.random() < 0.3
                   else vocab.AZURE_APPS[a].clients[0] for a in azure_apps.tolist()}
        fail_codes = list(vocab.AZURE_NORMAL_FAILS)
        fail_w = np.array(list(vocab.AZURE_NORMAL_FAILS.values()))
        n_codes = 1 if rng.random() < 0.6 else 2
        az_codes = [int(c) for c in rng.choice(fail_codes, size=n_codes, replace=False, p=fail_w / fail_w.sum())]
        person = Person(
            name=name, upn=f"{name}@{vocab.DOMAIN}", display=f"{first.title()} {last.title()}",
            duo_key=ids.duo_keys(rng, "DU", 1)[0], azure_id=ids.uuids(rng, 1)[0],
            office=office, volume=volume, rotating=rotating, start_h=start_h, len_h=len_h,
            late_start_h=late, rotation_phase=int(rng.integers(2)), weekend_rate=weekend,
            evening_share=float(rng.uniform(0.0, 0.06)), sessions_per_day=sessions, extra_p=extra_p,
            active_until=NEVER, cities=np.array(cities), city_p=city_p, home_ips=home_ips,
            ip_change_day=ip_change, other_ips=other_ips, devices=np.array(devices), device_p=device_p,
            upgrade_lag=int(rng.integers(0, 10)),
            phone_model=vocab.PHONE_MODELS[int(rng.integers(len(vocab.PHONE_MODELS)))],
            phone_number=_phone_number(rng, ALL_CITIES[home].country),
            security_key=vocab.SECURITY_KEYS[int(rng.integers(len(vocab.SECURITY_KEYS)))]
            if "webauthn_security_key" in factors else None,
            duo_factors=factors, duo_factor_p=factor_p, remember_share=remember,
            duo_apps=duo_apps.astype(np.int64), duo_app_p=_shares(rng, len(duo_apps), (0.35, 0.6), 0.06),
            duo_fail_rate=float(rng.uniform(0.01, 0.03)),
            azure_apps=azure_apps.astype(np.int64), azure_app_p=_shares(rng, len(azure_apps), (0.3, 0.55), 0.05),
            azure_clients=clients, azure_fail_codes=az_codes, azure_fail_rate=float(rng.uniform(0.02, 0.07)),
            noninteractive_share=float(rng.uniform(0.1, 0.45)), managed=managed,
        )
        if volume != "sparse" and rng.random() < 0.1:
            days = int(rng.integers(2, 5))
            pool = np.concatenate([TRAVEL_IDS, CUSTOMER_IDS])
            person.trips.append((int(rng.integers(1, max(2, cfg.train_days - days - 3))), days, int(rng.choice(pool))))
        people.append(person)
    # People whose activity stopped more than ten days before training ends (leave, a finished
    # project): a tenth of the roster, at least two, so small sets have dormant accounts too.
    regular = [u for u, p in enumerate(people) if p.volume == "regular" and not p.rotating]
    for u in rng.permutation(regular)[: max(2, round(DORMANT_SHARE * len(people)))].tolist():
        p = people[u]
        p.active_until = cfg.train_days - int(rng.integers(11, 17))
        p.trips = [t for t in p.trips if t[0] + t[1] <= p.active_until]
    return people
