"""The FastAPI application: shared plumbing plus one router module per service.

:func:`create_app` builds a fresh app from a :class:`ServeConfig`: error handlers (one JSON
error shape, see :mod:`.errors`), bearer auth, ``GET /healthz``, and then every module in
:data:`ROUTE_MODULES`. A route module exposes ``register(app, state)``; it adds its routes
and may register job kinds with ``state.jobs``. Adding a service (per-user DFP scoring, for
one) means writing such a module and listing it here; nothing else changes.

The app is plain FastAPI: Serve runs it in each replica (:mod:`.deployment`), and it also
runs under any ASGI server for debugging (``uvicorn --factory``), with the same behaviour.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from .auth import BearerAuth
from .config import ServeConfig
from .errors import install_error_handlers
from .jobs import JobRunner
from .uploads import UploadStore

ROUTE_MODULES: tuple[str, ...] = (
    "dfp_ray.serve.jobs_routes",
    "dfp_ray.serve.fingerprint_routes",
)
"""Modules whose ``register(app, state)`` adds routes; order is the order in /docs."""


@dataclass
class AppState:
    """Per-replica state shared by the route modules."""

    cfg: ServeConfig
    replica_id: str
    uploads: UploadStore
    jobs: JobRunner
    services: dict[str, Any] = field(default_factory=dict)


class Health(BaseModel):
    status: str
    version: str
    app: str
    replica: str
    job_watcher_alive: bool


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dfp-ray")
    except Exception:
        return "0+unknown"


def create_app(cfg: ServeConfig, *, replica_id: str | None = None) -> FastAPI:
    """A FastAPI app for ``cfg`` (secrets already resolved; see :func:`dfp_ray.serve.config.resolved`)."""
    replica = replica_id or uuid.uuid4().hex[:12]
    limits = cfg.limits
    state = AppState(
        cfg=cfg,
        replica_id=replica,
        uploads=UploadStore(
            limits.upload_path(),
            max_request_bytes=limits.max_upload_bytes,
            max_total_bytes=limits.upload_dir_max_bytes,
            max_field_bytes=limits.max_field_bytes,
        ),
        jobs=JobRunner(cfg.jobs, replica),
    )
    Path(cfg.jobs.dir).mkdir(parents=True, exist_ok=True)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.jobs.start()
        try:
            yield
        finally:
            state.jobs.stop()

    app = FastAPI(
        title="dfp_ray",
        version=_version(),
        description=(
            "Model fingerprinting (out-of-distribution detection for trained models, compatible with the NeuralFP "
            "service's client) and, as they are added, the other dfp_ray services. Every error is a JSON body "
            "`{detail, field, code}`; see docs/serve.md."
        ),
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.dfp = state
    install_error_handlers(app)
    token = cfg.auth.resolve()
    if token:
        app.add_middleware(BearerAuth, token=token)

    @app.get("/healthz", response_model=Health, tags=["service"], summary="liveness (never needs a token)")
    async def healthz() -> Health:
        return Health(status="ok", version=_version(), app=cfg.app_name, replica=replica,
                      job_watcher_alive=state.jobs.alive())

    for name in ROUTE_MODULES:
        importlib.import_module(name).register(app, state)
    return app


def app_from_env() -> FastAPI:
    """``uvicorn --factory dfp_ray.serve.app:app_from_env``: config from ``DFP_RAY_SERVE_CONFIG`` (a YAML path)."""
    import os

    from .config import load_serve_config, resolved

    return create_app(resolved(load_serve_config(os.environ.get("DFP_RAY_SERVE_CONFIG"))))
