"""A source's population: the pooled held-out scores of its user models, kept in the registry.

A user model's alert threshold blends its own held-out tail with the population's (see
:mod:`dfp_ray.autoencoder.calibration`). The population must be the same for a user whoever
else is scored beside it (another actor count, a stream's small batches, a Serve request of
one record), so it is not pooled from the models of one scoring call but computed when
models are trained and stored with the source's generic registered model as the tag
``dfp_population``: every actor, the Serve scorer and a later run read the same one.

After a training message, the new user models' held-out scores are pooled with the stored
population, whose weight shrinks by the share of its models the message replaced (retraining
every user replaces it; a stream retraining a few users nudges it).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from pydantic import BaseModel, Field

from dfp_ray.autoencoder.calibration import Calibration, pool

POPULATION_TAG = "dfp_population"
"""Tag of the generic registered model (``DFP-<source>-generic_user--all``) that holds it."""


class Population(BaseModel):
    """Pooled held-out scores of a source's user models."""

    calibration: Calibration = Field(description="The pooled distribution (<= 512 quantiles).")
    models: int = Field(ge=0, description="User models pooled (approximately, after replacements).")
    updated: str = Field("", description="UTC time of the last update (ISO 8601).")

    def encode(self) -> str:
        """The tag value: compact JSON (a registry tag holds up to 100,000 characters)."""
        cal = self.calibration
        body = {"models": self.models, "updated": self.updated, "score": cal.score,
                "holdout_rows": cal.holdout_rows, "holdout": [float(f"{x:.6g}") for x in cal.holdout]}
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Population:
        body = json.loads(text)
        cal = Calibration(score=body.get("score", "mean_abs_z"), holdout=body["holdout"],
                          holdout_rows=body["holdout_rows"])
        return cls(calibration=cal, models=body["models"], updated=body.get("updated", ""))


def merge_population(previous: Population | None, new: list[Calibration]) -> Population | None:
    """``previous`` with ``new`` user models' held-out scores added; the previous pool's weight
    shrinks by the share of its models the new ones may have replaced.

    >>> a = Calibration(holdout=[1.0, 2.0], holdout_rows=2)
    >>> p = merge_population(None, [a, a])
    >>> (p.models, p.calibration.holdout_rows)
    (2, 4)
    >>> merge_population(p, [a, a]).calibration.holdout_rows  # both replaced: only the new ones
    4
    """
    new = [c for c in new if c is not None and c.holdout]
    if not new:
        return previous
    parts = list(new)
    models = len(new)
    if previous is not None and previous.models > 0:
        keep = max(previous.models - len(new), 0) / previous.models
        rows = int(round(previous.calibration.holdout_rows * keep))
        if rows > 0:
            parts.append(previous.calibration.model_copy(update={"holdout_rows": rows}))
            models += int(round(previous.models * keep))
    pooled = pool(parts)
    if pooled is None:
        return previous
    return Population(calibration=pooled, models=models,
                      updated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
