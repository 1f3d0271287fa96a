"""The Ray Serve side: one ingress deployment running the FastAPI app, and how to deploy it.

* :class:`ApiIngress` is the deployment: each replica builds its own app from the config
  (``__serve_build_asgi_app__``, Serve's late-bound ingress), so nothing but the config
  crosses from the driver to the replicas. Its health check fails when the job watcher
  thread died, so Serve replaces such a replica.
* :func:`application` turns a :class:`ServeConfig` into a bound application, with replicas,
  resources and request limits from ``cfg.deployment``.
* :func:`build_app` is the builder named in ``configs/serve_app.yaml`` (``serve run`` /
  ``serve deploy``): its ``args`` are ``config`` (a YAML path) and/or any config keys.
* :func:`deploy` starts Serve's HTTP proxy on ``cfg.host:cfg.port`` and runs the app; it is
  what ``dfp-ray serve`` calls. :func:`direct_urls` lists the ingress replicas' own URLs when
  Ray runs with direct ingress (``cfg.direct_ingress``).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any

from ray import serve
from ray.serve import Application

from .config import ServeConfig, load_serve_config, resolved

log = logging.getLogger(__name__)


@serve.deployment(name="dfp_ray_api")
@serve.ingress()
class ApiIngress:
    """The HTTP ingress of every dfp_ray service (see :mod:`dfp_ray.serve.app`)."""

    def __init__(self, config: ServeConfig | dict[str, Any], dfp_scorer: Any = None) -> None:
        self.cfg = config if isinstance(config, ServeConfig) else ServeConfig.model_validate(config)
        self.handles = {"dfp_scorer": dfp_scorer} if dfp_scorer is not None else {}
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside a replica (tests of the class itself)
            self.replica_id = uuid.uuid4().hex[:12]
        self._app: Any = None

    def __serve_build_asgi_app__(self) -> Any:
        from .app import create_app

        self._app = create_app(self.cfg, replica_id=self.replica_id, handles=self.handles)
        return self._app

    def check_health(self) -> None:
        if self._app is not None and not self._app.state.dfp.jobs.alive():
            raise RuntimeError("the job watcher thread stopped; this replica cannot heartbeat its jobs")


def _actor_options(opts: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"num_cpus": opts.num_cpus, "num_gpus": opts.num_gpus}
    if opts.memory is not None:
        out["memory"] = opts.memory
    return out


def application(cfg: ServeConfig) -> Application:
    """The bound Serve application for ``cfg`` (secrets and DFP sources resolved here, where it is
    built). With DFP sources configured, the scorer deployment (per-user models, multiplexed)
    is bound too and the ingress gets its handle; with ``dfp.scorer.in_ingress`` the ingress
    scores in its own process instead (no scorer deployment)."""
    d = cfg.deployment
    cfg = resolved(cfg)
    scorer = None
    if cfg.dfp.sources and cfg.dfp.scorer.in_ingress:  # the ingress scores itself (LocalBackend)
        if d.num_replicas != 1:
            raise ValueError(f"dfp.scorer.in_ingress needs deployment.num_replicas 1 (got {d.num_replicas}): each "
                             "ingress replica would hold its own same-day history of a user")
    elif cfg.dfp.sources:
        from .dfp_deployment import DfpScorer

        sd = cfg.dfp.scorer
        scorer = DfpScorer.options(
            num_replicas=sd.num_replicas,
            max_ongoing_requests=sd.max_ongoing_requests,
            ray_actor_options=_actor_options(sd.ray_actor_options),
            health_check_period_s=d.health_check_period_s,
            health_check_timeout_s=d.health_check_timeout_s,
            graceful_shutdown_timeout_s=d.graceful_shutdown_timeout_s,
        ).bind(cfg.dfp)
    return ApiIngress.options(
        num_replicas=d.num_replicas,
        max_ongoing_requests=d.max_ongoing_requests,
        ray_actor_options=_actor_options(d.ray_actor_options),
        health_check_period_s=d.health_check_period_s,
        health_check_timeout_s=d.health_check_timeout_s,
        graceful_shutdown_timeout_s=d.graceful_shutdown_timeout_s,
    ).bind(cfg, scorer)


def build_app(args: dict[str, Any]) -> Application:
    """Serve application builder: ``args`` = ``{"config": "configs/serve.yaml", <overrides>...}``."""
    overrides = dict(args)
    path = overrides.pop("config", None)
    cfg = load_serve_config(path, overrides)
    if cfg.direct_ingress.enabled and os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") != "1":
        # the builder runs in a process of the cluster, so it sees the environment Ray was started with
        log.warning("direct_ingress.enabled is set but this Ray cluster was started without direct ingress: "
                       "the replicas answer only through the proxy. Start every node with `%s ray start ...` "
                       "(docs/serve.md, \"Direct ingress\")", cfg.direct_ingress.shell_prefix())
    return application(cfg)


def deploy(cfg: ServeConfig) -> str:
    """Start Serve's proxy on ``cfg.host:cfg.port`` (on the Ray already initialised) and run the app; returns its URL."""
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(application(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
    return cfg.url()


def direct_urls(cfg: ServeConfig, wait_s: float = 30.0) -> list[str]:
    """The URLs of the app's ingress replicas when Ray Serve runs with direct ingress (each
    replica answers HTTP on its own port, see :class:`~dfp_ray.serve.config.DirectIngressConfig`);
    empty when it does not. Read from the controller's target groups (the same data the
    dashboard's Serve API shows), waiting up to ``wait_s`` for the replicas to report their ports.
    """
    from ray.serve.context import _get_global_client

    local_host = cfg.host in ("127.0.0.1", "localhost", "::1")
    deadline = time.monotonic() + wait_s
    while True:
        details = _get_global_client().get_serve_details()
        urls = []
        for group in details.get("target_groups") or []:
            if group.get("app_name") != cfg.app_name or group.get("protocol") != "HTTP":  # a str enum or its value
                continue
            for target in group.get("targets") or []:
                if target.get("port") != cfg.port:  # the proxy's own target when no replica is up yet
                    urls.append(cfg.url(port=int(target["port"]), host=None if local_host else target.get("ip")))
        if urls or time.monotonic() >= deadline:
            return sorted(urls)
        time.sleep(0.5)
