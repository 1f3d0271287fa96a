"""The MLflow model registry for DFP models: naming, registration, lookup, loading and caching.

One registered model per (source, user), named ``DFP-{source}-{user}`` with a registry-safe
user name. :func:`registered_model_name` is the ONE function that makes that name, used both
when a model is registered and when it is looked up: Morpheus derives the two differently, so
users with dots in their names are registered under one name, looked up under another, and
silently scored with the generic model. Here they cannot diverge.

Every model version is an MLflow pyfunc "model from code" (``dfp_ray/registry_pyfunc.py``)
whose artifacts are the autoencoder's own save format (safetensors + JSON) and the source
schema as YAML: nothing is pickled, and
``mlflow.pyfunc.load_model("models:/DFP-duo-alice/latest").predict(raw_rows)`` scores raw log
records. Versions are written from a per-process copy of that directory
(:mod:`dfp_ray.registry_template`) and logged as MLflow 3 logged models through the client
API. The pipeline itself skips pyfunc and loads the autoencoder straight from the artifacts
(:meth:`ModelRegistry.load`), resolving many users' latest versions in one query
(:meth:`ModelRegistry.latest_many`, :meth:`ModelCache.prefetch`).

MLflow is imported lazily, so ``import dfp_ray.registry`` (e.g. for :func:`safe_user_name`)
stays cheap. See docs/registry.md.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd
import yaml

from dfp_ray.registry_template import YAML_LOADER, PyfuncTemplate
from dfp_ray.schema import SourceSchema, dump_schema, frame_from_records

if TYPE_CHECKING:  # pragma: no cover
    from dfp_ray.autoencoder import DFPAutoencoder, TrainingReport
    from dfp_ray.config import DFPConfig

log = logging.getLogger(__name__)

DEFAULT_NAME_TEMPLATE = "DFP-{source}-{user}"
DEFAULT_EXPERIMENT_TEMPLATE = "dfp/{source}/training/{model}"
PYFUNC_CODE_PATH = Path(__file__).with_name("registry_pyfunc.py")
MODEL_ARTIFACT = "model_dir"  # pyfunc artifact names (context.artifacts[...])
SCHEMA_ARTIFACT = "schema"
MODEL_NAME_IN_RUN = "model"  # the logged model's name inside its run
SQLITE_TIMEOUT_S = 60  # sqlite busy timeout added to sqlite:// URIs (see _normalise_uri)

T = TypeVar("T")


# --------------------------------------------------------------------------------------- naming
_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_-]")
HASH_SEPARATOR = "--"
HASH_CHARS = 10
MAX_READABLE = 100


def safe_user_name(user: str) -> str:
    """A registry-safe, deterministic, collision-free form of a user (or source) name.

    The rule (documented in docs/registry.md):

    1. A name made only of ``A-Z a-z 0-9 _ -``, not containing ``--`` and at most 100
       characters long is used unchanged (``alice``, ``generic_user``, ``bob-smith``).
    2. Any other name becomes ``<readable>--<hash>``: ``readable`` is the name with accents
       removed (``José`` -> ``Jose``), every remaining character outside ``A-Z a-z 0-9 _ -``
       replaced by ``_`` and cut to 100 characters; ``hash`` is the first 10 hex digits of the SHA-256
       of the ORIGINAL name (UTF-8). ``alice.smith@corp.com`` ->
       ``alice_smith_corp_com--<10 hex>``.

    Unchanged names never contain ``--`` and changed names always do, so the two kinds never
    collide; two changed names collide only if their SHA-256 prefixes do (40 bits). Hence
    ``a.b`` and ``a_b`` get different models. Case is preserved (MLflow's own stores treat
    ``Alice`` and ``alice`` as different names).
    """
    if not isinstance(user, str) or user == "":
        raise ValueError(f"a user name must be a non-empty string, got {user!r}")
    if _SAFE.fullmatch(user) and HASH_SEPARATOR not in user and len(user) <= MAX_READABLE:
        return user
    folded = "".join(c for c in unicodedata.normalize("NFKD", user) if not unicodedata.combining(c))
    readable = _UNSAFE_CHAR.sub("_", folded)[:MAX_READABLE] or "user"
    digest = hashlib.sha256(user.encode("utf-8")).hexdigest()[:HASH_CHARS]
    return f"{readable}{HASH_SEPARATOR}{digest}"


def registered_model_name(source: str, user: str, template: str = DEFAULT_NAME_TEMPLATE) -> str:
    """THE registered-model name of ``user``'s model for ``source``; used to register AND to look up."""
    if "{user}" not in template:
        raise ValueError(f"model name template {template!r} must contain {{user}} (one model per user)")
    return template.format(source=safe_user_name(source), user=safe_user_name(user))


@dataclass(frozen=True)
class ModelRef:
    """One registered model version."""

    name: str
    version: str
    run_id: str | None = None

    @property
    def label(self) -> str:
        """``name:version``: the ``model_version`` column of detections."""
        return f"{self.name}:{self.version}"

    @property
    def version_number(self) -> int:
        return int(self.version)


# --------------------------------------------------------------------------------------- errors
class RegistryError(RuntimeError):
    """A registry operation failed; the message says where and what to check."""


class RegistryUnavailableError(RegistryError):
    """The tracking/registry store cannot be reached or opened."""


class ModelLoadError(RegistryError):
    """A registered model version's artifacts could not be loaded (message names ``name:version``)."""


# --------------------------------------------------------------------------------------- MLflow setup
def quiet_mlflow() -> None:
    """Keep MLflow from flooding pipeline logs, without overriding explicit user choices.

    - ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false`` (unless set): no tqdm bar per download.
    - the ``mlflow`` logger goes to WARNING unless ``MLFLOW_LOGGING_LEVEL`` is set (MLflow logs
      several INFO lines per registered model).
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not os.environ.get("MLFLOW_LOGGING_LEVEL"):
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(max(logging.getLogger("alembic").level, logging.WARNING))


def _normalise_uri(uri: str) -> str:
    """Add a sqlite busy timeout so concurrent writers wait instead of failing "database is locked"."""
    if uri.startswith("sqlite:///") and "timeout=" not in uri:
        return f"{uri}{'&' if '?' in uri else '?'}timeout={SQLITE_TIMEOUT_S}"
    return uri


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _is_locked_error(exc: BaseException) -> bool:
    return "database is locked" in str(exc) or "database table is locked" in str(exc)


def _check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with advice, when an HTTP tracking server is not there.

    MLflow's own client retries a refused connection for minutes before giving up; one probe
    of ``/health`` tells the user at once. Any HTTP answer (even 401/404 from a proxy) counts
    as reachable: only "nobody answered" is an error here.
    """
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryUnavailableError(
            f"MLflow tracking server {uri} is unreachable ({reason}). Check that `mlflow server` is "
            "running and listening at that address (host, port, http vs https), that no firewall or "
            "proxy blocks it, and the mlflow.tracking_uri setting of the config."
        ) from exc


class _ProcessFileLock:
    """An exclusive lock shared by all processes on one machine (POSIX ``flock`` on a file),
    re-entrant within a process.

    flock locks belong to an open file description, so taking the same lock again through a
    second ``open()`` in the same process would wait for itself forever; a process-wide RLock
    plus a hold count makes nested use (open the store inside a registration) safe.
    """

    _registry: dict[Path, _ProcessFileLock] = {}
    _registry_lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self._rlock = threading.RLock()
        self._depth = 0
        self._handle: Any = None

    @classmethod
    def for_path(cls, path: Path) -> _ProcessFileLock:
        key = path.resolve()
        with cls._registry_lock:
            if key not in cls._registry:
                cls._registry[key] = cls(key)
            return cls._registry[key]

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._rlock:
            if self._depth == 0:
                self._acquire()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._release()

    def _acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: in-process lock only
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a+b")  # held open while locked
        fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX)

    def _release(self) -> None:
        if self._handle is not None:
            import fcntl

            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _file_lock(path: Path | None) -> contextlib.AbstractContextManager:
    """Exclusive across processes for ``path`` (re-entrant in-process); a no-op for ``None``."""
    return contextlib.nullcontext() if path is None else _ProcessFileLock.for_path(path).hold()


_GLOBALS_LOCK = threading.RLock()  # guards MLflow's process-global tracking/registry URI


_URI_ENV_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def _mlflow_uris(tracking_uri: str, registry_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at our store for one operation, then restore the caller's URIs.

    ``mlflow.pyfunc.log_model``, ``mlflow.start_run`` and parts of MLflow's stores only use
    the process-global URIs (which ``set_*_uri`` also mirror into environment variables); a
    process may hold several registries and use MLflow itself, hence lock, set, and restore
    both the globals and the environment exactly.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils

    with _GLOBALS_LOCK:
        env_before = {k: os.environ.get(k) for k in _URI_ENV_VARS}
        old_tracking = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
        old_registry = getattr(registry_utils, "_registry_uri", None)
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(registry_uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(old_tracking)
            mlflow.set_registry_uri(old_registry)
            for key, value in env_before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


# --------------------------------------------------------------------------------------- scoring
def score_raw_frame(
    model: DFPAutoencoder, schema: SourceSchema, records: pd.DataFrame | list[dict]
) -> pd.DataFrame:
    """Raw-schema rows -> mapped rows + scores; what the pyfunc flavour's ``predict`` returns.

    ``records`` may be raw records (dicts, or a frame with nested dict columns), flattened raw
    columns (``user.name``) or already-mapped columns (``username``): :func:`frame_from_records`
    accepts all three. Malformed records are dropped (and logged) by the mapping, as in the
    pipeline. The result has the mapped columns (in time order) followed by the scores.
    """
    mapped, _report = frame_from_records(records, schema)
    scores = model.score(mapped)
    return pd.concat([mapped, scores.set_axis(mapped.index)], axis=1)


def _example_value(spec: Any, when: datetime) -> Any:
    if spec.type == "datetime":
        if spec.time_format == "epoch_s":
            return int(when.timestamp())
        if spec.time_format == "epoch_ms":
            return int(when.timestamp() * 1000)
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    if spec.type in ("float", "int"):
        return 1
    if spec.type == "bool":
        return (spec.true_values or spec.false_values)[0]
    return f"example-{spec.name}"


def example_raw_frame(schema: SourceSchema, *, user: str, when: datetime) -> pd.DataFrame:
    """A one-row frame of flattened raw columns that the schema maps without loss.

    Used as the signature's input example when the caller has no real rows at hand.
    """
    row: dict[str, Any] = {}
    for spec in schema.fields:
        if spec.join is not None:
            for path in spec.join:
                row[path] = f"example-{path.rsplit('.', 1)[-1]}"
        else:
            row[spec.path or spec.name] = _example_value(spec, when)
    user_spec = next(f for f in schema.fields if f.name == schema.user_column)
    if user_spec.path:
        row[user_spec.path] = user
    return pd.DataFrame([row])


def _input_column_names(schema: SourceSchema, example: pd.DataFrame) -> list[str]:
    """Every column a raw-schema frame may use: raw paths, their parents (nested dict columns),
    the mapped names, and the example's own columns. All optional in the signature."""
    names: list[str] = []
    for spec in schema.fields:
        for path in spec.join or [spec.path or spec.name]:
            parts = path.split(".")
            names.extend(".".join(parts[: i + 1]) for i in range(len(parts)))
        names.append(spec.name)
    names.extend(str(c) for c in example.columns)
    names.append("_source_file")
    return list(dict.fromkeys(names))


def _as_utc(when: datetime | pd.Timestamp) -> datetime:
    ts = pd.Timestamp(when)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


_METRIC_SAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def _metric_key(*parts: str) -> str:
    return "/".join(_METRIC_SAFE.sub("_", p) for p in parts)


@functools.lru_cache(maxsize=1)
def _pip_requirements() -> tuple[str, ...]:
    """Explicit requirements for the logged model: MLflow's inference of them costs ~8 s per log."""
    from importlib import metadata

    reqs = []
    for dist in ("dfp-ray", "mlflow", "torch", "pandas", "numpy", "safetensors", "pydantic", "pyyaml"):
        try:
            version = metadata.version(dist).split("+", 1)[0]
            reqs.append(f"{dist}=={version}")
        except metadata.PackageNotFoundError:
            reqs.append(dist)
    return tuple(reqs)


@functools.lru_cache(maxsize=1)
def _dfp_ray_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("dfp-ray")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


# --------------------------------------------------------------------------------------- registry
class ModelRegistry:
    """Register, look up and load DFP models in an MLflow tracking/registry store.

    ``tracking_uri`` is any MLflow URI: ``sqlite:///path/mlflow.db`` (embedded, the default of
    :class:`~dfp_ray.config.DFPConfig`), ``http://host:5000`` (a tracking server),
    ``databricks``. ``artifact_location`` is the artifact root for the experiments it
    creates; for sqlite it defaults to ``mlartifacts/`` next to the database file, for a
    server to the server's own artifact store. Create one registry per process (after any
    fork): it holds database connections. Methods are thread-safe.
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        registry_uri: str | None = None,
        artifact_location: str | None = None,
        name_template: str = DEFAULT_NAME_TEMPLATE,
        experiment_template: str = DEFAULT_EXPERIMENT_TEMPLATE,
    ) -> None:
        if not tracking_uri:
            raise ValueError(
                "tracking_uri is empty: give an MLflow URI (sqlite:///..., http://host:port, ...)"
            )
        if tracking_uri.startswith("file:") or (
            "://" not in tracking_uri
            and tracking_uri not in ("databricks",)
            and not tracking_uri.startswith("databricks")
        ):
            raise ValueError(
                f"tracking_uri {tracking_uri!r}: use sqlite:///<path>.db (embedded), http(s)://host:port "
                "(tracking server) or databricks; MLflow 3's file store (file:/ or a bare path) is deprecated"
            )
        registered_model_name("x", "y", name_template)  # validates the template
        self.tracking_uri = _normalise_uri(tracking_uri)
        self.registry_uri = _normalise_uri(registry_uri) if registry_uri else self.tracking_uri
        db = _sqlite_path(self.tracking_uri)
        if artifact_location is None and db is not None:
            # next to the database, not MLflow's default ./mlruns under whatever the cwd is
            artifact_location = (db.parent.resolve() / "mlartifacts").as_uri()
        self.artifact_location = artifact_location.rstrip("/") if artifact_location else None
        self.name_template = name_template
        self.experiment_template = experiment_template
        self._lock = threading.RLock()
        self._client: Any = None
        self._experiments: dict[str, str] = {}
        self._known_models: set[str] = set()
        self._signatures: dict[tuple, Any] = {}
        self._templates: dict[tuple, PyfuncTemplate] = {}
        self._lock_path = db.with_name(db.name + ".dfp-lock") if db is not None else None
        quiet_mlflow()

    @classmethod
    def from_config(cls, cfg: DFPConfig) -> ModelRegistry:
        """The registry a :class:`~dfp_ray.config.DFPConfig` describes.

        With the embedded default (sqlite under ``state_dir``) artifacts go to
        ``state_dir/mlartifacts``; with a server or Databricks URI and no explicit
        ``mlflow.artifact_location``, the server's own artifact store is used.
        """
        tracking = cfg.tracking_uri
        artifacts = cfg.mlflow.artifact_location
        if artifacts is None and tracking.startswith("sqlite:"):
            artifacts = cfg.artifact_location
        return cls(
            tracking,
            registry_uri=cfg.mlflow.registry_uri,
            artifact_location=artifacts,
            name_template=cfg.mlflow.model_name_template,
            experiment_template=cfg.mlflow.experiment_template,
        )

    def __repr__(self) -> str:
        return f"ModelRegistry({self.tracking_uri!r})"

    # ---------------------------------------------------------------- plumbing
    def model_name(self, source: str, user: str) -> str:
        return registered_model_name(source, user, self.name_template)

    @property
    def client(self) -> Any:
        """The MlflowClient, created (and the store opened/migrated) on first use."""
        with self._lock:
            if self._client is None:
                self._client = self._open()
            return self._client

    def _open(self) -> Any:
        from mlflow import MlflowClient

        for uri in dict.fromkeys((self.tracking_uri, self.registry_uri)):
            if _is_http(uri):
                _check_reachable(uri)
        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        try:
            # the first use of a new sqlite file creates its tables: one process at a time
            with _file_lock(self._lock_path):
                client.search_experiments(max_results=1)
                client.search_registered_models(max_results=1)
        except Exception as exc:
            raise RegistryUnavailableError(
                f"cannot open the MLflow store at {self.tracking_uri} (registry {self.registry_uri}): {exc}. "
                "Check the URI in mlflow.tracking_uri, that the directory is writable (sqlite), or that "
                "the server is healthy and its version is compatible with MLflow "
                f"{_mlflow_version()}."
            ) from exc
        return client

    def _retry(self, what: str, fn: Callable[[], T], attempts: int = 6) -> T:
        """Run ``fn``; on sqlite "database is locked" retry with exponential backoff (bounded)."""
        delay = 0.1
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except Exception as exc:
                if not _is_locked_error(exc) or attempt == attempts:
                    raise
                log.warning(
                    "%s: sqlite database busy, retry %d/%d in %.1f s", what, attempt, attempts - 1, delay
                )
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def _globals(self) -> Iterator[None]:
        """MLflow's fluent API (and parts of its stores) read the process-global URIs and emit
        warnings we do not want in pipeline logs: set ours, silence those, restore afterwards."""
        with _mlflow_uris(self.tracking_uri, self.registry_uri), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example.*", category=UserWarning)
            yield

    def _write_lock(self) -> contextlib.AbstractContextManager:
        """Registrations against one sqlite file are serialised across processes (flock)."""
        return _file_lock(self._lock_path)

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        if name in self._experiments:
            return self._experiments[name]
        client = self.client
        exp = client.get_experiment_by_name(name)
        if exp is None:
            location = None
            if self.artifact_location:
                location = f"{self.artifact_location}/{_UNSAFE_CHAR.sub('_', name.replace('/', '__'))}"
            try:
                exp_id = client.create_experiment(name, artifact_location=location)
            except MlflowException:  # created meanwhile by another process
                exp = client.get_experiment_by_name(name)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp_id)
        self._experiments[name] = exp_id
        return exp_id

    def _ensure_registered_model(self, name: str, tags: dict[str, str]) -> None:
        from mlflow.exceptions import MlflowException

        if name in self._known_models:
            return
        try:
            self.client.create_registered_model(
                name, tags=tags, description="DFP autoencoder (dfp_ray): one per log source and user."
            )
        except MlflowException as exc:
            if "ALREADY_EXISTS" not in str(exc.error_code) and "already exists" not in str(exc).lower():
                raise
        self._known_models.add(name)

    def warm_up(self, model: DFPAutoencoder, schema: SourceSchema) -> None:
        """Do the first registration's one-time work now: open the store (MLflow's SQLAlchemy
        store imports in ~1.5 s), build the model signature for this schema (cached per schema
        and feature lists; ``model`` may be any model with those features) and the schema's
        pyfunc template (:mod:`dfp_ray.registry_template`; MLflow scans the installed packages
        against the pinned requirements then, 1.6 s once per process)."""
        self.client  # noqa: B018 - opens the store
        key = _signature_key(model, schema)
        if key not in self._signatures:
            example = example_raw_frame(schema, user="warm-up", when=datetime(2022, 8, 1))
            self._signatures[key] = _signature(model, schema, example)
        self._template(schema, self._signatures[key])

    def _template(self, schema: SourceSchema, signature: Any) -> PyfuncTemplate:
        """The pyfunc template for ``schema`` (built on first use; the signature is per version)."""
        key = (schema.fingerprint(), _pip_requirements())
        with self._lock:
            template = self._templates.get(key)
            if template is None:
                with self._globals():
                    template = PyfuncTemplate(
                        code_path=PYFUNC_CODE_PATH, model_artifact=MODEL_ARTIFACT, schema_artifact=SCHEMA_ARTIFACT,
                        schema_yaml=dump_schema(schema), signature=signature, pip_requirements=list(key[1]),
                    )  # fmt: skip
                self._templates[key] = template
            return template

    # ---------------------------------------------------------------- register
    def register(
        self,
        *,
        source: str,
        user: str,
        model: DFPAutoencoder,
        report: TrainingReport,
        schema: SourceSchema,
        first_event: datetime,
        last_event: datetime,
        tags: dict[str, str] | None = None,
        input_example: pd.DataFrame | list[dict] | None = None,
    ) -> ModelRef:
        """Log ``model`` as a new version of ``DFP-{source}-{user}``; returns its :class:`ModelRef`.

        One MLflow run per registration (experiment ``dfp/{source}/training/{model}``) with the
        hyper-parameters, event-time range and row counts as params, the final per-feature
        train/validation losses (and the epoch curves, as stepped metrics) as metrics, and the
        model as a pickle-free pyfunc. ``input_example``: a few raw rows of this user (optional;
        without it an example is synthesised from the schema) used for the signature.
        """
        try:
            return self._register(
                source=source, user=user, model=model, report=report, schema=schema,
                first_event=first_event, last_event=last_event, tags=tags, input_example=input_example,
            )  # fmt: skip
        except RegistryError:
            raise
        except Exception as exc:
            name = self.model_name(source, user)
            raise RegistryError(
                f"registering a new version of {name} at {self.registry_uri} failed: {exc}"
            ) from exc

    def _register(
        self,
        *,
        source: str,
        user: str,
        model: DFPAutoencoder,
        report: TrainingReport,
        schema: SourceSchema,
        first_event: datetime,
        last_event: datetime,
        tags: dict[str, str] | None,
        input_example: pd.DataFrame | list[dict] | None,
    ) -> ModelRef:
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param
        from mlflow.entities import RunTag as Tag

        started = time.perf_counter()
        name = self.model_name(source, user)
        experiment = self.experiment_template.format(source=source, model=name)
        first, last = _as_utc(first_event), _as_utc(last_event)
        if isinstance(input_example, list):
            input_example = pd.json_normalize(input_example, sep=".")
        if input_example is not None and len(input_example):
            signature = _signature(model, schema, input_example.head(5).reset_index(drop=True))
        else:
            # the synthesised example's signature depends only on schema + features: reuse it
            key = _signature_key(model, schema)
            signature = self._signatures.get(key)
            if signature is None:
                example = example_raw_frame(schema, user=user, when=last)
                signature = self._signatures[key] = _signature(model, schema, example)

        common_tags = {
            "source": source,
            "user": user,
            "safe_user": safe_user_name(user),
            "dfp_ray_version": _dfp_ray_version(),
        }
        common_tags.update({str(k): str(v) for k, v in (tags or {}).items()})
        version_tags = {
            **common_tags,
            "rows": str(report.rows),
            "first_event": first.isoformat(),
            "last_event": last.isoformat(),
        }
        params = {k: _param_value(v) for k, v in model.params.model_dump(mode="json").items()}
        params.update(
            first_event=first.isoformat(),
            last_event=last.isoformat(),
            row_count=str(report.rows),
            train_rows=str(report.train_rows),
            val_rows=str(report.val_rows),
            schema=schema.name,
            schema_fingerprint=schema.fingerprint(),
            categorical_features=",".join(model.categorical),
            numeric_features=",".join(model.numeric),
            binary_features=",".join(model.binary),
        )
        metrics = _training_metrics(report)

        template = self._template(schema, signature)
        with tempfile.TemporaryDirectory(prefix="dfp-register-") as tmp:
            # the version's files, before taking the store's lock: only MLmodel needs the ids
            model_dir = template.materialise(Path(tmp) / MODEL_NAME_IN_RUN, model)
            with self._lock, self._write_lock(), self._globals():
                client = self.client
                exp_id = self._retry("experiment", lambda: self._experiment_id(experiment))
                self._ensure_registered_model(name, {"source": source, "user": user})
                run = client.create_run(
                    exp_id,
                    run_name=f"{name}@{last:%Y%m%dT%H%M%S}",
                    tags={**common_tags, "registered_model": name},
                )
                run_id = run.info.run_id
                now = int(time.time() * 1000)
                client.log_batch(
                    run_id,
                    params=[Param(k, v) for k, v in params.items()],
                    tags=[Tag("mlflow.source.name", "dfp_ray"), Tag("mlflow.source.type", "JOB")],
                    metrics=[Metric(k, float(v), now, step) for k, v, step in metrics],
                )
                # An MLflow 3 logged model, as mlflow.pyfunc.log_model makes one: PENDING, linked
                # to the run as its output, artifacts uploaded, then READY (FAILED on an error).
                logged = client.create_logged_model(
                    exp_id, name=MODEL_NAME_IN_RUN, source_run_id=run_id, tags=common_tags, params=params
                )
                try:
                    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
                    template.write_mlmodel(
                        model_dir, model_id=logged.model_id, run_id=run_id,
                        artifact_path=logged.artifact_location, signature=signature,
                    )  # fmt: skip
                    client.log_model_artifacts(logged.model_id, str(model_dir))
                except BaseException:
                    with contextlib.suppress(Exception):
                        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
                    raise
                client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
                version = client.create_model_version(
                    name,
                    source=f"models:/{logged.model_id}",
                    run_id=run_id,
                    tags=version_tags,
                    model_id=logged.model_id,
                    description=f"{report.rows} rows, events {first.isoformat()} .. {last.isoformat()}",
                    await_creation_for=60,
                )
        ref = ModelRef(name=name, version=str(version.version), run_id=run_id)
        log.info("registered %s in %.2f s", ref.label, time.perf_counter() - started)
        return ref

    # ---------------------------------------------------------------- lookup
    def latest(self, source: str, user: str) -> ModelRef | None:
        """The highest-numbered version of the user's model (by the SAME safe name), or None."""
        name = self.model_name(source, user)
        try:
            versions = self._retry(
                f"latest {name}",
                lambda: self.client.search_model_versions(
                    f"name = '{name}'", max_results=1, order_by=["version_number DESC"]
                ),
            )
        except RegistryError:
            raise
        except Exception as exc:
            raise RegistryError(
                f"looking up the latest version of {name} at {self.registry_uri} failed: {exc}"
            ) from exc
        if not versions:
            return None
        mv = versions[0]
        return ModelRef(name=mv.name, version=str(mv.version), run_id=mv.run_id or None)

    def latest_many(self, source: str, users: list[str], chunk: int = 100) -> dict[str, ModelRef | None]:
        """:meth:`latest` for many users in a few queries (``name IN (...)``, ``chunk`` names
        each, paged): a cold actor resolving hundreds of users pays one round trip per chunk,
        not per user. Users whose model name holds a quote are looked up one by one."""
        names = {self.model_name(source, u): u for u in dict.fromkeys(users)}
        found: dict[str, ModelRef | None] = {u: None for u in names.values()}
        bulk = [n for n in names if "'" not in n]
        for n in names:
            if "'" in n:
                found[names[n]] = self.latest(source, names[n])
        for start in range(0, len(bulk), chunk):
            part = bulk[start : start + chunk]
            where = "name IN (" + ", ".join(f"'{n}'" for n in part) + ")"
            token: str | None = None
            for _ in range(10_000):  # bounded paging: 1,000 versions a page
                try:
                    page = self._retry(
                        f"latest of {len(part)} models",
                        lambda t=token, w=where: self.client.search_model_versions(w, max_results=1000, page_token=t),
                    )
                except Exception as exc:
                    raise RegistryError(
                        f"looking up the latest versions of {len(part)} models ({part[0]}, ...) at "
                        f"{self.registry_uri} failed: {exc}"
                    ) from exc
                for mv in page:
                    user = names.get(mv.name)
                    ref = ModelRef(name=mv.name, version=str(mv.version), run_id=mv.run_id or None)
                    if user is not None and (found[user] is None or ref.version_number > found[user].version_number):
                        found[user] = ref
                token = page.token
                if not token:
                    break
        return found

    def versions(self, source: str, user: str) -> list[ModelRef]:
        """All versions of the user's model, oldest first."""
        name = self.model_name(source, user)
        found = self._retry(f"versions {name}", lambda: self.client.search_model_versions(f"name = '{name}'"))
        refs = [ModelRef(name=m.name, version=str(m.version), run_id=m.run_id or None) for m in found]
        return sorted(refs, key=lambda r: r.version_number)

    # ---------------------------------------------------------------- load
    def load(self, ref: ModelRef, *, device: str = "auto") -> DFPAutoencoder:
        """The autoencoder of ``ref``, read straight from its artifacts (no pyfunc wrapper).

        A local artifact store (the embedded default) is read in place; a remote one (a
        tracking server's ``mlflow-artifacts:``, S3, ...) is downloaded to a temporary directory.
        """
        from dfp_ray.autoencoder import DFPAutoencoder

        location = "?"
        try:
            location = self.client.get_model_version_download_uri(ref.name, ref.version)
            local = _local_path(location)
            if local is not None:
                return DFPAutoencoder.load(local / _artifact_subpath(local / "MLmodel"), device=device)
            from mlflow.artifacts import download_artifacts

            with tempfile.TemporaryDirectory(prefix="dfp-load-") as tmp:
                mlmodel = download_artifacts(
                    artifact_uri=f"{location}/MLmodel", dst_path=tmp, tracking_uri=self.tracking_uri
                )
                sub = _artifact_subpath(Path(mlmodel))
                model_dir = download_artifacts(
                    artifact_uri=f"{location}/{sub}", dst_path=tmp, tracking_uri=self.tracking_uri
                )
                return DFPAutoencoder.load(model_dir, device=device)
        except Exception as exc:
            raise ModelLoadError(
                f"model {ref.label} could not be loaded from {location}: {type(exc).__name__}: {exc}. "
                "Check that its artifacts exist and are readable there, and that it was written by a "
                "compatible dfp_ray version."
            ) from exc


def _mlflow_version() -> str:
    try:
        import mlflow

        return mlflow.__version__
    except Exception:  # pragma: no cover
        return "?"


def _local_path(uri: str) -> Path | None:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


def _artifact_subpath(mlmodel: Path) -> str:
    """Where the pyfunc stored the autoencoder inside the model (from MLmodel, not assumed)."""
    spec = yaml.load(mlmodel.read_text(), Loader=YAML_LOADER)  # libyaml: ~5 ms less per model load
    artifacts = spec.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    if MODEL_ARTIFACT not in artifacts:
        raise ValueError(
            f"{mlmodel.name} has no '{MODEL_ARTIFACT}' artifact: this model version was not registered by dfp_ray"
        )
    return str(artifacts[MODEL_ARTIFACT]["path"])


def _param_value(value: Any) -> str:
    return "None" if value is None else str(value)


def _training_metrics(report: TrainingReport) -> list[tuple[str, float, int]]:
    """(key, value, step): final and per-feature losses at step 0, epoch curves at steps 1..n."""
    out: list[tuple[str, float, int]] = []
    if report.train_loss:
        out.append(("train_loss", report.train_loss[-1], 0))
    if report.val_loss:
        out.append(("val_loss", report.val_loss[-1], 0))
    if report.best_val_loss is not None:
        out.append(("best_val_loss", report.best_val_loss, 0))
    out += [("epochs_run", report.epochs_run, 0), ("train_seconds", report.seconds, 0)]
    out += [(_metric_key("train_loss", f), v, 0) for f, v in report.train_feature_loss.items()]
    out += [(_metric_key("val_loss", f), v, 0) for f, v in report.val_feature_loss.items()]
    out += [("epoch_train_loss", v, i) for i, v in enumerate(report.train_loss, start=1)]
    out += [("epoch_val_loss", v, i) for i, v in enumerate(report.val_loss, start=1)]
    return out


def _signature_key(model: DFPAutoencoder, schema: SourceSchema) -> tuple:
    """What a synthesised example's signature depends on: the schema and the feature lists."""
    return (schema.fingerprint(), tuple(model.categorical), tuple(model.numeric), tuple(model.binary))


def _signature(model: DFPAutoencoder, schema: SourceSchema, example: pd.DataFrame) -> Any:
    """Input: every raw/mapped column name, optional and untyped (raw logs vary: epoch or ISO
    times, nested or flattened); output: inferred from scoring the example."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema
    from mlflow.types.utils import _infer_schema

    inputs = Schema(
        [ColSpec(AnyType(), name, required=False) for name in _input_column_names(schema, example)]
    )
    outputs = None
    scored = score_raw_frame(model, schema, example)
    if len(scored):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                outputs = _infer_schema(scored)
            except Exception as exc:  # the output schema is documentation only
                log.debug("no output schema: %s", exc)
    return ModelSignature(inputs=inputs, outputs=outputs)


# --------------------------------------------------------------------------------------- cache
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

    def _key(self, source: str, user: str) -> tuple[str, str]:
        return (source, self.registry.model_name(source, user))

    def __len__(self) -> int:
        return sum(1 for e in self._entries.values() if e.model is not None)

    def get(self, source: str, user: str) -> tuple[DFPAutoencoder, ModelRef] | None:
        key = self._key(source, user)
        with self._lock:
            entry = self._entries.get(key)
            now = self._clock()
            if entry is not None and now - entry.checked < self.refresh_seconds:
                self._entries.move_to_end(key)
                return (entry.model, entry.ref) if entry.model is not None and entry.ref is not None else None
            try:
                latest = self.registry.latest(source, user)
            except RegistryError as exc:
                if entry is not None and entry.model is not None and entry.ref is not None:
                    log.warning("registry lookup failed, serving cached %s: %s", entry.ref.label, exc)
                    entry.checked = now
                    return entry.model, entry.ref
                raise
            return self._update(key, entry, latest, now)

    def prefetch(self, source: str, users: list[str]) -> int:
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
            try:
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

    def put(self, source: str, user: str, model: DFPAutoencoder, ref: ModelRef) -> None:
        """Cache a model this actor just trained and registered (no reload from the registry)."""
        with self._lock:
            self._store(self._key(source, user), _Entry(model, ref, self._clock()))

    def invalidate(self, source: str, user: str) -> None:
        with self._lock:
            self._entries.pop(self._key(source, user), None)

    def _store(self, key: tuple[str, str], entry: _Entry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_models:
            self._entries.popitem(last=False)


__all__ = [
    "ModelCache",
    "ModelLoadError",
    "ModelRef",
    "ModelRegistry",
    "RegistryError",
    "RegistryUnavailableError",
    "registered_model_name",
    "safe_user_name",
    "score_raw_frame",
]
