"""The Serve application's configuration: one pydantic model, the one place for its defaults.

``configs/serve.yaml`` is an instance of :class:`ServeConfig`; ``dfp-ray serve`` flags and the
``args`` of a Serve config file (``configs/serve_app.yaml``) override it. Unknown keys are
errors. Route modules add their own sections here (the fingerprint service has
``fingerprint``; per-user DFP scoring has ``dfp``).

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


SOURCE_NAME = r"^[A-Za-z0-9_.-]+$"


class DfpSourceConfig(_Strict):
    """One log source scored at ``/dfp/{source}/...``: the pipeline configuration whose models,
    schema and detection rule it uses.

    The pipeline configuration is a ``dfp-ray run`` config (``configs/duo.yaml``): its
    ``schema``, registry (``state_dir``, ``mlflow.*``), ``detection`` rule and
    ``fallback_to_generic`` apply here exactly as in the batch pipeline, so Serve scores with the
    models ``dfp-ray run`` registered. ``pipeline`` keys are applied on top of the file, then
    ``schema`` / ``tracking_uri`` / ``registry_uri``. Without ``source`` in either, the source
    (the ``DFP-{source}-{user}`` model names) is this entry's name.
    """

    pipeline_config: str | None = Field(
        None, description="a `dfp-ray run` config YAML (e.g. configs/duo.yaml); in a serve config file, relative to "
        "that file's folder. Relative paths inside it (state_dir) are relative to the working directory, as for "
        "`dfp-ray run`"
    )
    pipeline: dict[str, Any] = Field(
        default_factory=dict, description="pipeline config keys given inline (nested, as in the file), applied on top "
        "of pipeline_config, e.g. {detection: {threshold: 3.0}}"
    )
    schema_: str | None = Field(
        None, alias="schema", description="built-in schema name (duo, azure) or a schema YAML path; default: the "
        "pipeline config's"
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI of the registry (sqlite:///..., http://host:5000); default: the "
        "pipeline config's (sqlite under its state_dir)"
    )
    registry_uri: str | None = Field(None, description="MLflow registry URI when it differs from tracking_uri")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def pipeline_dict(self, name: str) -> dict[str, Any]:
        """The pipeline config as one dict: file, inline keys, overrides, default source."""
        data = read_yaml(self.pipeline_config) if self.pipeline_config else {}
        data = merge(data, self.pipeline)
        if self.schema_ is not None:
            data["schema"] = self.schema_
        mlflow = dict(data.get("mlflow") or {})
        if self.tracking_uri is not None:
            mlflow["tracking_uri"] = self.tracking_uri
        if self.registry_uri is not None:
            mlflow["registry_uri"] = self.registry_uri
        if mlflow:
            data["mlflow"] = mlflow
        data.setdefault("source", name)
        return data

    def resolve(self, name: str) -> DfpSourceConfig:
        """A self-contained copy: the pipeline file read, validated and inlined with absolute paths
        (done where the application is built, so replicas read no file and errors appear at start)."""
        from dfp_ray.config import DFPConfig

        where = f"dfp.sources.{name}" + (f" (pipeline_config {self.pipeline_config})" if self.pipeline_config else "")
        data = self.pipeline_dict(name)
        base = Path(self.pipeline_config).resolve().parent if self.pipeline_config else Path.cwd()
        state_dir = data.get("state_dir")
        if isinstance(state_dir, str) and not Path(state_dir).expanduser().is_absolute():
            data["state_dir"] = str((Path.cwd() / state_dir).resolve())
        schema = data.get("schema")
        if isinstance(schema, str) and (Path(schema).suffix or Path(schema).exists()):
            for root in (Path.cwd(), base):  # a path: absolute, as the pipeline resolves it (cwd first)
                if (root / schema).exists():
                    data["schema"] = str((root / schema).resolve())
                    break
        cfg = validate_model(data, DFPConfig, where)
        from dfp_ray.schemas import load_schema

        try:
            load_schema(cfg.schema_ref)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{where}: schema {cfg.schema_ref!r}: {exc}") from None
        full = cfg.model_dump(mode="json", by_alias=True)
        full["mlflow"]["tracking_uri"] = cfg.tracking_uri
        return DfpSourceConfig(pipeline=full)


class DfpScorerDeployment(_Strict):
    """The scorer deployment (per-user models, multiplexed) that the ingress calls."""

    num_replicas: int = Field(1, ge=1, description="scorer replicas; users are spread over them by Serve's "
                              "model multiplexing (with 1, a request's users travel in one call)")
    max_ongoing_requests: int = Field(16, ge=1, description="scoring calls a scorer replica accepts at once")
    ray_actor_options: ActorOptions = Field(default_factory=ActorOptions)
    in_ingress: bool = Field(
        False, description="score in the ingress replica itself (no scorer deployment, no handle call per "
        "request; users held in that replica's LRU of max_models_per_replica); needs deployment.num_replicas 1 "
        "(a user's same-day history must live in one process). See docs/serve.md for when it pays")


class DfpServiceConfig(_Strict):
    """Per-user DFP scoring (``POST /dfp/{source}/score``, ``GET /dfp/{source}/models/{user}``)."""

    sources: dict[str, DfpSourceConfig] = Field(
        default_factory=dict, description="source name (the {source} of the URL) -> its pipeline config; none = "
        "the scoring routes answer 404"
    )
    max_models_per_replica: int = Field(
        256, ge=1, description="users held per scorer replica (Serve multiplexing, least recently used first out); "
        "each holds its own model or shares the generic one, and its same-day history"
    )
    refresh_s: float = Field(
        30.0, ge=0, description="how often a held user checks the registry for a newer version (or a model of its "
        "own); a new version scores requests at most this long after it was registered"
    )
    history_rows_per_user: int = Field(
        5000, ge=0, description="same-day records kept per held user for the per-day counters (logcount, "
        "locincrement, ...); beyond it the oldest are dropped"
    )
    max_records_per_request: int = Field(10_000, ge=1, description="records one request may carry (413 beyond)")
    max_body_bytes: int = Field(64 * MiB, ge=1024, description="largest request body (413 beyond)")
    max_batch_records: int = Field(
        20_000, ge=1, description="records of concurrent requests scored together in one call (requests that "
        "arrive while a call runs are coalesced into the next one)"
    )
    top_features: int = Field(3, ge=0, le=50, description="features named per record as the ones that drove its score")
    scorer: DfpScorerDeployment = Field(default_factory=DfpScorerDeployment)

    @model_validator(mode="after")
    def _names(self) -> DfpServiceConfig:
        import re

        bad = [n for n in self.sources if not re.fullmatch(SOURCE_NAME, n)]
        if bad:
            raise ValueError(f"source names {bad} may hold only letters, digits, '_', '.', '-' (they are URL paths)")
        return self

    def resolved(self) -> DfpServiceConfig:
        return self.model_copy(update={"sources": {n: s.resolve(n) for n, s in self.sources.items()}})


class DirectIngressConfig(_Strict):
    """Ray Serve's direct ingress: each ingress replica also answers HTTP on its own port,
    skipping the proxy actor hop (on a 2-core machine 5-10 ms less per single-record call and
    ~1.7x the batched records/s; docs/serve.md has the figures). The proxy on ``port`` keeps
    working. Ray reads these settings from its environment when it starts, so `dfp-ray serve`
    applies them only to the local Ray it starts; a cluster must be started with them (see
    :func:`environment`)."""

    enabled: bool = Field(False, description="ingress replicas listen on their own ports too (from min_port up)")
    min_port: int = Field(30000, ge=1, le=65535, description="first port a replica tries (the first replica gets it when free)")
    max_port: int = Field(31000, ge=1, le=65535, description="last port a replica may take")
    grpc_handles: bool = Field(False, description="the ingress calls the DFP scorer over gRPC instead of Ray actor calls "
                               "(a little faster; that gRPC server listens on every interface, without auth)")
    drain_s: float = Field(2.0, ge=0, description="a stopping replica keeps answering this long, so clients holding its "
                           "port move on (Ray's default, 30 s, is for external load balancers)")

    @model_validator(mode="after")
    def _ports(self) -> DirectIngressConfig:
        if self.max_port < self.min_port:
            raise ValueError(f"direct_ingress.max_port {self.max_port} is below min_port {self.min_port}")
        return self

    def environment(self) -> dict[str, str]:
        """The environment variables Ray Serve reads for this (empty when disabled): set in the
        process that starts Ray (`ray start`, or before a local `ray.init`)."""
        if not self.enabled:
            return {}
        return {
            "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(self.min_port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(self.max_port),
            "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1" if self.grpc_handles else "0",
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": f"{self.drain_s:g}",
        }

    def shell_prefix(self) -> str:
        """:meth:`environment` as the ``K=V ...`` words to put before ``ray start`` (messages, docs)."""
        return " ".join(f"{k}={v}" for k, v in self.environment().items())


class ServeConfig(_Strict):
    """Everything `dfp-ray serve` needs; every key is optional."""

    app_name: str = Field("dfp_ray", pattern=r"^[A-Za-z0-9_.-]+$", description="Serve application name")
    host: str = Field("127.0.0.1", description="address the HTTP proxy listens on (0.0.0.0 for every interface)")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    route_prefix: str = Field("/", pattern=r"^/", description="path the application is served under")
    ray_address: str | None = Field(None, description="Ray cluster to deploy to (auto, ray://...); default: a local Ray")
    direct_ingress: DirectIngressConfig = Field(default_factory=DirectIngressConfig)
    deployment: DeploymentConfig = Field(default_factory=DeploymentConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    fingerprint: FingerprintServiceConfig = Field(default_factory=FingerprintServiceConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    dfp: DfpServiceConfig = Field(default_factory=DfpServiceConfig)

    def url(self, port: int | None = None, host: str | None = None) -> str:
        """The URL clients use: the proxy's (``port``), or a direct-ingress replica's port."""
        host = host or ("127.0.0.1" if self.host in ("0.0.0.0", "") else self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        prefix = self.route_prefix.rstrip("/")
        return f"http://{host}:{self.port if port is None else port}{prefix}"


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _anchor_source_paths(data: dict[str, Any], base: Path) -> None:
    """Relative ``pipeline_config`` (and schema file) paths of DFP sources in a config file are
    relative to that file's folder, so `--config configs/serve.yaml` works from anywhere."""
    dfp = data.get("dfp")
    sources = dfp.get("sources") if isinstance(dfp, dict) else None
    if not isinstance(sources, dict):
        return
    for src in sources.values():
        if not isinstance(src, dict):
            continue
        for key in ("pipeline_config", "schema"):
            value = src.get(key)
            if isinstance(value, str) and (key == "pipeline_config" or Path(value).suffix in (".yaml", ".yml")):
                if not Path(value).expanduser().is_absolute():
                    src[key] = str(base / value)


def load_serve_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> ServeConfig:
    """Read ``path`` (YAML, optional) and apply ``overrides`` (nested dict); errors name file and field."""
    data = read_yaml(path) if path else {}
    if path:
        _anchor_source_paths(data, Path(path).resolve().parent)
    where = str(path) if path else "serve configuration"
    if overrides:
        data = merge(data, overrides)
    return validate_model(data, ServeConfig, where)


def resolved(cfg: ServeConfig) -> ServeConfig:
    """A copy with the secrets read from their environment variables and the DFP sources' pipeline
    configs inlined (done where the app is built). Raises ConfigError naming the source and field."""
    token = cfg.auth.resolve()
    key = cfg.fingerprint.resolve_key()
    return cfg.model_copy(
        update={
            "auth": cfg.auth.model_copy(update={"token": SecretStr(token) if token else None, "token_env": None}),
            "fingerprint": cfg.fingerprint.model_copy(
                update={"key": SecretStr(key.decode()) if key else None, "key_env": None}
            ),
            "dfp": cfg.dfp.resolved(),
        }
    )


__all__ = ["ConfigError", "ServeConfig", "load_serve_config", "resolved"]
