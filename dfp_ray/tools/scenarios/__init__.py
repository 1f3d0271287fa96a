"""A second synthetic scenario family, ``habits``, written independently of `dfp-ray datagen`.

Other people (archetypes: office, night shift, Wednesday-to-Sunday, heavy, light, traveller),
other vocabularies, rare-but-normal behaviour in training and inference, and subtle attacks
that change one feature of a victim's habits. Used to judge detection quality on data the
default generator did not make (see docs/datagen.md and docs/scoring.md)::

    from dfp_ray.tools.scenarios import HabitsConfig, generate
    generate(HabitsConfig(out="data/habits"))
"""

from dfp_ray.tools.scenarios.config import HABITS_KINDS, HabitsConfig
from dfp_ray.tools.scenarios.generate import HabitsSummary, generate

__all__ = ["HABITS_KINDS", "HabitsConfig", "HabitsSummary", "generate"]
