"""The Serve application's configuration: one pydantic model, the one place for its defaults.

``configs/serve.yaml`` is an instance of :class:`ServeConfig`; ``dfp-ray serve`` flags and the
``args`` of a Serve config file (``configs/serve_app.yaml``) override it. Unknown keys are
errors. Route modules add their own sections here (the fingerprint service has
``fingerprint``; per-user DFP scoring adds its own).

Secrets (the bearer token, the fingerprint HMAC key) are read from environment variables
named here, or given inline (discouraged: config files get copied around). They are
resolved once, where the application is built (the ``dfp-ray serve`` process, or the
process that runs the builder of ``serve run`` / ``serve deploy``), and travel to the
replicas as deployment arguments.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from dfp_ray.yaml_config import ConfigError, read_yaml, validate_model

DEFAULT_TOKEN_ENV = "DFP_RAY_SERVE_TOKEN"
DEFAULT_KEY_ENV = "DFP_RAY_FINGERPRINT_KEY"
MiB = 1024**2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActorOptions(_Strict):
    """Resources of each replica (Ray actor options)."""

    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica; torch uses this many threads")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (fractions share one); fingerprints use CUDA when > 0")
    memory: int | None = Field(None, ge=0, description="bytes of memory reserved per replica (scheduling only)")


class DeploymentConfig(_Strict):
    """How many replicas run the application and how much each may take on."""

    num_replicas: int = Field(1, ge=1, description="replicas of the ingress deployment")
    max_ongoing_requests: int = Field(
        4, ge=1, description="requests a replica handles at once; more wait in Serve's queue (bounds upload storage too)"
    )
    ray_actor_options: ActorOptions = Field(default_factory=ActorOptions)
    health_check_period_s: float = Field(10.0, gt=0, description="how often Serve checks a replica")
    health_check_timeout_s: float = Field(30.0, gt=0, description="a replica that does not answer a check in time is replaced")
    graceful_shutdown_timeout_s: float = Field(20.0, ge=0, description="time given to running requests on shutdown")


class AuthConfig(_Strict):
    """Optional bearer-token auth: when a token is set, every endpoint but /healthz requires it."""

    token: SecretStr | None = Field(None, description="the token itself (prefer token_env)")
    token_env: str | None = Field(
        DEFAULT_TOKEN_ENV, description="environment variable holding the token; unset or empty = no auth"
    )

    def resolve(self) -> str | None:
        if self.token is not None and self.token.get_secret_value():
            return self.token.get_secret_value()
        if self.token_env:
            return os.environ.get(self.token_env) or None
        return None


class LimitsConfig(_Strict):
    """Bounds on what one request may send and store."""

    max_upload_bytes: int = Field(512 * MiB, ge=1024, description="largest request body; larger ones get 413")
    max_field_bytes: int = Field(64 * 1024, ge=64, description="largest non-file form field")
    upload_dir: str | None = Field(
        None, description="where uploads are streamed (one folder per request, deleted afterwards); default: "
        "<system temp>/dfp_ray_uploads"
    )
    upload_dir_max_bytes: int = Field(
        2 * 1024 * MiB, ge=1024, description="all uploads in progress on a replica together; beyond it requests get 503"
    )

    def upload_path(self) -> Path:
        return Path(self.upload_dir) if self.upload_dir else Path(tempfile.gettempdir()) / "dfp_ray_uploads"


class FingerprintServiceConfig(_Strict):
    """The model-fingerprint endpoints (/generate_fingerprint, /outlier_detection)."""

    allow_model_code: bool = Field(
        False, description="execute uploaded PyTorch model_def files (Python code!); otherwise they get 403"
    )
    key: SecretStr | None = Field(None, description="HMAC key for fingerprint archives (prefer key_env)")
    key_env: str | None = Field(
        DEFAULT_KEY_ENV,
        description="environment variable holding the HMAC key; when set, generated fingerprints are signed and "
        "only signed ones are scored",
    )
    device: str = Field("auto", description="auto (CUDA when the replica has a GPU), cpu or cuda[:N]")
    epochs: int = Field(30, ge=1, description="default autoencoder epochs when a request gives none")
    max_epochs: int = Field(500, ge=1, description="largest epochs a request may ask for")
    default_percentile: float = Field(95.0, gt=0, lt=100, description="percentile stored in generated fingerprints")
    model_cache_size: int = Field(
        4, ge=0, description="loaded models kept per replica (by content hash) for repeated outlier_detection calls"
    )
    max_archive_bytes: int = Field(1024 * MiB, ge=1024, description="largest fingerprint zip accepted for scoring")
    max_dataset_bytes: int = Field(4 * 1024 * MiB, ge=1024, description="largest decompressed dataset array")

    def resolve_key(self) -> bytes | None:
        if self.key is not None and self.key.get_secret_value():
            return self.key.get_secret_value().encode()
        if self.key_env:
            value = os.environ.get(self.key_env, "")
            return value.encode() if value else None
        return None

    @model_validator(mode="after")
    def _check(self) -> FingerprintServiceConfig:
        if self.epochs > self.max_epochs:
            raise ValueError(f"epochs ({self.epochs}) is over max_epochs ({self.max_epochs})")
        return self


class JobsConfig(_Strict):
    """Asynchronous jobs (``?async=true``): where they live and how a lost one is noticed."""

    dir: str = Field(".dfp_ray/serve_jobs", description="one folder per job (inputs, state, result); shared by replicas, "
                     "so it must be on a filesystem every replica sees")
    workers: int = Field(1, ge=1, description="jobs a replica runs at once")
    heartbeat_s: float = Field(2.0, gt=0, description="how often a replica marks its jobs alive")
    stale_after_s: float = Field(
        20.0, gt=0, description="a queued/running job whose heartbeat is older is taken over by another replica"
    )
    max_attempts: int = Field(2, ge=1, description="runs of one job (a replica restart costs one); then it is lost")
    keep_s: float = Field(86_400.0, gt=0, description="finished jobs (and their results) are deleted after this")

    @model_validator(mode="after")
    def _check(self) -> JobsConfig:
        if self.stale_after_s <= 2 * self.heartbeat_s:
            raise ValueError("stale_after_s must be more than twice heartbeat_s, or live jobs look lost")
        return self


class ServeConfig(_Strict):
    """Everything `dfp-ray serve` needs; every key is optional."""

    app_name: str = Field("dfp_ray", pattern=r"^[A-Za-z0-9_.-]+$", description="Serve application name")
    host: str = Field("127.0.0.1", description="address the HTTP proxy listens on (0.0.0.0 for every interface)")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    route_prefix: str = Field("/", pattern=r"^/", description="path the application is served under")
    ray_address: str | None = Field(None, description="Ray cluster to deploy to (auto, ray://...); default: a local Ray")
    deployment: DeploymentConfig = Field(default_factory=DeploymentConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    fingerprint: FingerprintServiceConfig = Field(default_factory=FingerprintServiceConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)

    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        prefix = self.route_prefix.rstrip("/")
        return f"http://{host}:{self.port}{prefix}"


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_serve_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> ServeConfig:
    """Read ``path`` (YAML, optional) and apply ``overrides`` (nested dict); errors name file and field."""
    data = read_yaml(path) if path else {}
    where = str(path) if path else "serve configuration"
    if overrides:
        data = merge(data, overrides)
    return validate_model(data, ServeConfig, where)


def resolved(cfg: ServeConfig) -> ServeConfig:
    """A copy with the secrets read from their environment variables (done where the app is built)."""
    token = cfg.auth.resolve()
    key = cfg.fingerprint.resolve_key()
    return cfg.model_copy(
        update={
            "auth": cfg.auth.model_copy(update={"token": SecretStr(token) if token else None, "token_env": None}),
            "fingerprint": cfg.fingerprint.model_copy(
                update={"key": SecretStr(key.decode()) if key else None, "key_env": None}
            ),
        }
    )


__all__ = ["ConfigError", "ServeConfig", "load_serve_config", "resolved"]
