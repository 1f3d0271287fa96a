"""The DFP scorer as a Ray Serve deployment, with users held by Serve's model multiplexing.

Each user is a multiplexed "model" (id ``dfp:<source>:<user>``, see :func:`.dfp_scorer.model_id`):
the ingress calls ``handle.options(multiplexed_model_id=...)``, Serve routes the call to a
replica that already holds the user when there is one, and each replica holds at most
``dfp.max_models_per_replica`` users (least recently used first out; an unloaded user's own
model and same-day history go with it). A held user is a :class:`~.dfp_scoring.UserSlot`:
its resolved model (own, else generic) and its same-day history.

The bound comes from the config, so the ``@serve.multiplexed`` loader is wrapped when the
replica starts rather than at class definition (Serve detects loaders wired at init time).
"""

from __future__ import annotations

import uuid
from typing import Any

import pandas as pd
from ray import serve

from .config import DfpServiceConfig
from .dfp_fast import MappedRows
from .dfp_scorer import Scorer, freeze_heap
from .dfp_scoring import UserSlot

DEPLOYMENT_NAME = "dfp_scorer"


@serve.deployment(name=DEPLOYMENT_NAME)
class DfpScorer:
    """Scores DFP records of the users it holds (see the module docstring)."""

    def __init__(self, service: DfpServiceConfig | dict[str, Any]) -> None:
        cfg = service if isinstance(service, DfpServiceConfig) else DfpServiceConfig.model_validate(service)
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside a replica
            replica = uuid.uuid4().hex[:12]
        self.scorer = _ServeScorer(cfg, replica)
        loader = self.scorer.load_slot

        async def load_user(mid: str) -> UserSlot:
            return await loader(mid)

        self.scorer.multiplexed = serve.multiplexed(max_num_models_per_replica=cfg.max_models_per_replica)(load_user)
        self._get_user = self.scorer.multiplexed  # an instance attribute Serve recognises as multiplexed
        for source in cfg.sources:  # schemas, registries, MLflow and the generic models now, not on a request
            self.scorer.runtime(source).warm_up()
        freeze_heap()

    async def score(self, source: str, mapped: pd.DataFrame | MappedRows) -> pd.DataFrame | list[dict[str, Any]]:
        """A frame (the pandas path) gives a frame; MappedRows (the fast path) give array parts."""
        return await self.scorer.score(source, mapped)

    async def describe(self, source: str, user: str) -> dict[str, Any]:
        return await self.scorer.describe(source, user)

    async def stats(self, source: str) -> dict[str, Any]:
        return await self.scorer.stats(source)


class _ServeScorer(Scorer):
    multiplexed: Any = None

    async def get_slot(self, mid: str) -> UserSlot:
        return await self.multiplexed(mid)
