"""The MLflow model registry for DFP models: naming, registration, lookup, loading and caching.

One registered model per (source, user), named ``DFP-{source}-{user}`` with a registry-safe
user name. :func:`registered_model_name` is the ONE function that makes that name, used both
when a model is registered and when it is looked up.

Every model version is an MLflow pyfunc "model from code" (:mod:`dfp_ray.registry.pyfunc`)
whose artifacts are the autoencoder's own save format (safetensors + JSON) and the source
schema as YAML: nothing is pickled, and
``mlflow.pyfunc.load_model("models:/DFP-duo-alice/latest").predict(raw_rows)`` scores raw log
records. Versions are written from a per-process copy of that directory
(:mod:`dfp_ray.registry.template`) and logged as MLflow 3 logged models through the client
API. The pipeline itself skips pyfunc and loads the autoencoder straight from the artifacts
(:meth:`ModelRegistry.load`), resolving many users' latest versions in one query
(:meth:`ModelRegistry.latest_many`, :meth:`ModelCache.prefetch`).

The package, one concept per module:

- :mod:`~dfp_ray.registry.names`: the name rule and :class:`ModelRef`;
- :mod:`~dfp_ray.registry.store`: :class:`ModelRegistry`, the MLflow calls;
- :mod:`~dfp_ray.registry.cache`: :class:`ModelCache`, the per-actor LRU;
- :mod:`~dfp_ray.registry.locking`: the cross-process lock for sqlite writers;
- :mod:`~dfp_ray.registry.mlflow_env`: MLflow's process globals and URIs;
- :mod:`~dfp_ray.registry.signature`, :mod:`~dfp_ray.registry.template`,
  :mod:`~dfp_ray.registry.pyfunc`: what a registered version contains.

MLflow is imported lazily, so ``import dfp_ray.registry`` (e.g. for :func:`safe_user_name`)
stays cheap. See docs/registry.md.
"""

from dfp_ray.registry.cache import ModelCache
from dfp_ray.registry.errors import ModelLoadError, RegistryError, RegistryUnavailableError
from dfp_ray.registry.names import ModelRef, registered_model_name, safe_user_name
from dfp_ray.registry.store import ModelRegistry

__all__ = [
    "ModelCache",
    "ModelLoadError",
    "ModelRef",
    "ModelRegistry",
    "RegistryError",
    "RegistryUnavailableError",
    "registered_model_name",
    "safe_user_name",
]
