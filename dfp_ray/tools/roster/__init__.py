"""A third synthetic scenario family, ``roster``: a distributed workforce, written independently.

Why a third family: a detector tuned to one generator learns that generator's habits. The
roster's people work local hours in six time zones (some on rotating shifts), sign in in
sessions, have heavy-tailed volumes (help-desk accounts, sparse users, dormant accounts) and
several devices each; rare-but-normal events (DST, new phones, conference trips, weekend
on-call, password-reset failures) and attacks that change one or two features (impossible
travel, token replay, credential stuffing, new device enrolment, dormant account wake-up)
are in the inference window. Same layout as the other families (docs/datagen.md)::

    from dfp_ray.tools.roster import RosterConfig, generate
    generate(RosterConfig(out="data/roster", users=72, attack_fraction=0.5))
"""

from dfp_ray.tools.roster.config import RARE_KINDS, ROSTER_KINDS, RosterConfig
from dfp_ray.tools.roster.generate import RosterSummary, generate

__all__ = ["RARE_KINDS", "ROSTER_KINDS", "RosterConfig", "RosterSummary", "generate"]
