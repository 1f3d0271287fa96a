"""Attacks of the ``habits`` family: mostly subtle, several changing ONE feature of the victim's habits.

| kind | what changes (everything else is the victim's usual device, city, app, factor, hours) |
| --- | --- |
| ``new_app_at_night`` | a hijacked session opens an application the victim never used, in the victim's quiet hours |
| ``new_location`` | one or two sign-ins from a country the victim never visited |
| ``new_browser`` | one or two sign-ins from a browser the victim never used (same OS family when possible) |
| ``off_hours`` | two or three sign-ins in the victim's quiet hours (12 h from the middle of their active period) |
| ``mfa_fatigue`` | from abroad, on the attacker's browser: a stream of denied push prompts, then one approval |

Containment, as in `dfp-ray datagen`: once an attack starts, the victim's own later events of
that UTC day are dropped (the account is locked), so no normal event carries counters that
the attacker raised.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dfp_ray.tools.scenarios import catalog
from dfp_ray.tools.scenarios.config import HabitsConfig
from dfp_ray.tools.scenarios.habits import (
    ALL_APPS,
    ALL_DEVICES,
    DAY_MS,
    FOREIGN_IDS,
    N_USER_DEVICES,
    SENSITIVE_IDS,
    Person,
)


def _local_to_utc_ms(day0_ms: int, day: int, local_hour: float, offset: float) -> int:
    """Epoch ms of ``local_hour`` on UTC day ``day``, folded into that UTC day."""
    utc_h = (local_hour - offset) % 24.0
    return day0_ms + day * DAY_MS + int(utc_h * 3_600_000)


def _attack_start(rng: np.random.Generator, p: Person, kind: str, day0_ms: int, day: int, span_ms: int) -> int:
    if kind in ("new_app_at_night", "off_hours"):
        hour = (p.quiet_hour() + rng.uniform(-1.5, 1.5)) % 24.0
    else:
        hour = (p.start_h + p.len_h * rng.uniform(0.3, 0.7)) % 24.0
    start = _local_to_utc_ms(day0_ms, day, hour, p.utc_offset)
    latest = day0_ms + (day + 1) * DAY_MS - span_ms - 60_000
    return int(min(max(start, day0_ms + day * DAY_MS + 60_000), latest))


def plan_attack(rng: np.random.Generator, cfg: HabitsConfig, p: Person, u: int, kind: str, day: int, day0_ms: int) -> pd.DataFrame:
    """The labelled events of one attack on user ``u`` on UTC day ``day``."""
    main_device = int(p.devices[int(np.argmax(p.device_p))])
    main_app = int(p.apps[int(np.argmax(p.app_p))])
    n = {"new_app_at_night": int(rng.integers(2, 5)), "new_location": int(rng.integers(1, 3)),
         "new_browser": int(rng.integers(1, 3)), "off_hours": int(rng.integers(2, 4)),
         "mfa_fatigue": int(rng.integers(6, 13))}[kind]
    gaps = rng.uniform(20, 240, n) * 1000
    gaps[0] = 0
    offsets = np.cumsum(gaps).astype(np.int64)
    start = _attack_start(rng, p, kind, day0_ms, day, int(offsets[-1]))
    city = np.full(n, p.home)
    device = np.full(n, main_device)
    app = np.full(n, main_app)
    result = np.ones(n, dtype=bool)
    reason = np.full(n, catalog.FACTORS[p.factor][1], dtype=object)
    factor = catalog.FACTORS[p.factor][0]
    if kind == "new_app_at_night":
        unused = [a for a in range(len(ALL_APPS)) if a not in set(p.apps.tolist())]
        sensitive = [a for a in SENSITIVE_IDS.tolist() if a in unused]
        pool = sensitive if sensitive and rng.random() < 0.5 else unused
        app[:] = int(rng.choice(pool))
    elif kind == "new_location":
        city[:] = int(rng.choice(FOREIGN_IDS))
    elif kind == "new_browser":
        os_name = ALL_DEVICES[main_device].os
        candidates = [i for i in range(N_USER_DEVICES, len(ALL_DEVICES)) if ALL_DEVICES[i].os == os_name]
        candidates = candidates or list(range(N_USER_DEVICES, len(ALL_DEVICES)))
        device[:] = int(rng.choice(candidates))
    elif kind == "mfa_fatigue":
        city[:] = int(rng.choice(FOREIGN_IDS))
        device[:] = int(rng.integers(N_USER_DEVICES, len(ALL_DEVICES)))
        factor = "duo_push"
        result[:-1] = False
        reason[:-1] = rng.choice(["user_denied", "no_response"], size=n - 1)
        reason[-1] = "user_approved"
    return pd.DataFrame(
        {"user": u, "ts": start + offsets, "city": city, "device": device, "version": None, "app": app,
         "factor": factor, "result": result, "reason": reason, "kind": kind, "note": ""}
    )


def plan_attacks(cfg: HabitsConfig, people: list[Person], rng: np.random.Generator, day0_ms: int) -> list[pd.DataFrame]:
    n = int(round(cfg.attack_fraction * len(people)))
    if cfg.attack_fraction > 0:
        n = max(n, min(len(cfg.attack_kinds), len(people) // 2))
    victims = rng.permutation(len(people))[:n]
    plans = []
    for i, u in enumerate(victims.tolist()):
        kind = cfg.attack_kinds[i % len(cfg.attack_kinds)]
        day = cfg.train_days + int(rng.integers(cfg.infer_days))
        plans.append(plan_attack(rng, cfg, people[u], u, kind, day, day0_ms))
    return plans
