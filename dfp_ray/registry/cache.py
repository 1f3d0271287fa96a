"""ModelCache: a per-actor LRU of loaded models that notices newer registered versions."""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from dfp_ray.autoencoder import DFPAutoencoder

from dfp_ray import metrics
from dfp_ray.registry.errors import ModelLoadError, RegistryError
from dfp_ray.registry.names import ModelRef
from dfp_ray.registry.population import Population
from dfp_ray.registry.store import ModelRegistry

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    model: DFPAutoencoder | None
    ref: ModelRef | None
    checked: float


class ModelCache:
    """A per-actor LRU of loaded models that notices newer registered versions.

    ``get`` asks the registry for the latest version at most every ``refresh_seconds`` per
    user (0: every call) and reloads only when the version number went up. Users without a
    model are remembered for ``refresh_seconds`` too, so a user scored with the generic
    model does not cost a registry query per batch. When the registry is unreachable, or a
    newer version fails to load, the cached model keeps serving (with a warning) rather than
    failing inference; the newer version is tried again after ``refresh_seconds``.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        max_models: int = 256,
        refresh_seconds: float = 30.0,
        *,
        device: str = "auto",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_models < 1:
            raise ValueError(f"max_models must be >= 1, got {max_models}")
        self.registry = registry
        self.max_models = max_models
        self.refresh_seconds = refresh_seconds
        self.device = device
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0  # models loaded from the registry (for tests and metrics)
        self._populations: dict[str, tuple[Population | None, float]] = {}

    def _key(self, source: str, user: str | None) -> tuple[str, str]:
        return (source, self.registry.model_name(source, user))

    def __len__(self) -> int:
        return sum(1 for e in self._entries.values() if e.model is not None)

    def get(self, source: str, user: str | None) -> tuple[DFPAutoencoder, ModelRef] | None:
        key = self._key(source, user)
        with self._lock:
            entry = self._entries.get(key)
            now = self._clock()
            if entry is not None and now - entry.checked < self.refresh_seconds:
                self._entries.move_to_end(key)
                metrics.cache_lookup(hit=True)
                return (entry.model, entry.ref) if entry.model is not None and entry.ref is not None else None
            metrics.cache_lookup(hit=False)
            try:
                with metrics.registry_call("latest"):
                    latest = self.registry.latest(source, user)
            except RegistryError as exc:
                if entry is not None and entry.model is not None and entry.ref is not None:
                    log.warning("registry lookup failed, serving cached %s: %s", entry.ref.label, exc)
                    entry.checked = now
                    return entry.model, entry.ref
                raise
            return self._update(key, entry, latest, now)

    def prefetch(self, source: str, users: list[str | None]) -> int:
        """Bring the users' entries up to date with one bulk registry lookup
        (:meth:`ModelRegistry.latest_many`) and load the models that are new or newer, so
        the :meth:`get` calls that follow are cache hits. Returns how many users were looked
        up. Errors are left to :meth:`get`, which reports them for the user concerned."""
        with self._lock:
            now = self._clock()
            todo: dict[str, tuple[tuple[str, str], _Entry | None]] = {}
            for user in dict.fromkeys(users):
                key = self._key(source, user)
                entry = self._entries.get(key)
                if entry is None or now - entry.checked >= self.refresh_seconds:
                    todo[user] = (key, entry)
            if len(todo) < 2:  # nothing to gain over get()
                return 0
            metrics.cache_lookup(hit=False, n=len(todo))
            try:
                with metrics.registry_call("latest_many"):
                    latest = self.registry.latest_many(source, list(todo))
            except RegistryError as exc:
                log.debug("bulk model lookup failed, resolving users one by one: %s", exc)
                return 0
            for user, (key, entry) in todo.items():
                with contextlib.suppress(ModelLoadError):  # get() raises it, for this user only
                    self._update(key, entry, latest.get(user), now)
            return len(todo)

    def _update(
        self, key: tuple[str, str], entry: _Entry | None, latest: ModelRef | None, now: float
    ) -> tuple[DFPAutoencoder, ModelRef] | None:
        """Reconcile the cached entry with the registry's ``latest`` version (None: no model)."""
        with self._lock:
            if latest is None:
                if entry is not None and entry.model is not None and entry.ref is not None:
                    entry.checked = now  # e.g. put() after training; keep what we have
                    return entry.model, entry.ref
                self._store(key, _Entry(None, None, now))
                return None
            if entry is not None and entry.ref is not None and entry.model is not None:
                if latest.version_number <= entry.ref.version_number:
                    entry.checked = now
                    self._entries.move_to_end(key)
                    return entry.model, entry.ref
            try:
                with metrics.registry_call("load"):
                    model = self.registry.load(latest, device=self.device)
            except ModelLoadError as exc:
                if entry is not None and entry.model is not None and entry.ref is not None:
                    log.warning("keeping %s: newer %s does not load: %s", entry.ref.label, latest.label, exc)
                    entry.checked = now
                    return entry.model, entry.ref
                raise
            self.loads += 1
            self._store(key, _Entry(model, latest, now))
            return model, latest

    def put(self, source: str, user: str | None, model: DFPAutoencoder, ref: ModelRef) -> None:
        """Cache a model this actor just trained and registered (no reload from the registry)."""
        with self._lock:
            self._store(self._key(source, user), _Entry(model, ref, self._clock()))

    def invalidate(self, source: str, user: str | None) -> None:
        with self._lock:
            self._entries.pop(self._key(source, user), None)
            if user is None:  # a new generic version: its population may have changed too
                self._populations.pop(source, None)

    def population(self, source: str) -> Population | None:
        """The source's population (:mod:`.population`), read from the registry at most every
        ``refresh_seconds``; the last one read keeps serving while the registry is down."""
        now = self._clock()
        with self._lock:
            held = self._populations.get(source)
            if held is not None and now - held[1] < self.refresh_seconds:
                return held[0]
        try:
            found = self.registry.population(source)
        except RegistryError as exc:
            log.warning("population of %s unavailable (%s); using the last one read", source, exc)
            found = held[0] if held is not None else None
        with self._lock:
            self._populations[source] = (found, now)
        return found

    def _store(self, key: tuple[str, str], entry: _Entry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_models:
            self._entries.popitem(last=False)

