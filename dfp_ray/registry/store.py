"""ModelRegistry: register, look up and load DFP models in an MLflow tracking/registry store.

Why over ~400 lines: one class whose methods share the store's connection, lock and retry
policy; splitting it would scatter one transaction protocol over several files.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd
import yaml

if TYPE_CHECKING:  # pragma: no cover
    from dfp_ray.autoencoder import DFPAutoencoder, TrainingReport
    from dfp_ray.config import DFPConfig

from dfp_ray.registry.errors import ModelLoadError, RegistryError, RegistryUnavailableError
from dfp_ray.registry.locking import file_lock
from dfp_ray.registry.mlflow_env import (
    check_reachable,
    is_http,
    is_locked_error,
    mlflow_uris,
    normalise_uri,
    quiet_mlflow,
    sqlite_path,
    tune_sqlite_engines,
    use_wal,
)
from dfp_ray.registry.names import (
    DEFAULT_EXPERIMENT_TEMPLATE,
    DEFAULT_NAME_TEMPLATE,
    GENERIC_SLOT,
    UNSAFE_CHAR,
    ModelRef,
    registered_model_name,
    safe_user_name,
    user_label,
)
from dfp_ray.registry.population import POPULATION_TAG, Population
from dfp_ray.registry.signature import example_raw_frame, signature_for, signature_key
from dfp_ray.registry.template import YAML_LOADER, PyfuncTemplate
from dfp_ray.schemas import SourceSchema, dump_schema

log = logging.getLogger(__name__)

PYFUNC_CODE_PATH = Path(__file__).with_name("pyfunc.py")
MODEL_ARTIFACT = "model_dir"  # pyfunc artifact names (context.artifacts[...])
SCHEMA_ARTIFACT = "schema"
MODEL_NAME_IN_RUN = "model"  # the logged model's name inside its run
CURVES_ARTIFACT = "training_curves.json"  # per-epoch losses, in the version's model directory

T = TypeVar("T")

def _as_utc(when: datetime | pd.Timestamp) -> datetime:
    ts = pd.Timestamp(when)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


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



class ModelRegistry:
    """Register, look up and load DFP models in an MLflow tracking/registry store.

    ``tracking_uri`` is any MLflow URI: ``sqlite:///path/mlflow.db`` (embedded, the default of
    :class:`~dfp_ray.config.DFPConfig`), ``http://host:5000`` (a tracking server),
    ``databricks``. ``artifact_location`` is the artifact root for the experiments it
    creates; for sqlite it defaults to ``mlartifacts/`` next to the database file, for a
    server to the server's own artifact store. ``sqlite_wal``: put a sqlite store in WAL mode
    with ``synchronous=NORMAL`` (docs/registry.md, "Concurrency"); ``False`` leaves the file's
    journal mode as it is (a store on a network file system, where WAL does not work). Create one registry per process (after any
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
        sqlite_wal: bool = True,
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
        self.tracking_uri = normalise_uri(tracking_uri)
        self.registry_uri = normalise_uri(registry_uri) if registry_uri else self.tracking_uri
        db = sqlite_path(self.tracking_uri)
        if artifact_location is None and db is not None:
            # next to the database, not MLflow's default ./mlruns under whatever the cwd is
            artifact_location = (db.parent.resolve() / "mlartifacts").as_uri()
        self.artifact_location = artifact_location.rstrip("/") if artifact_location else None
        self.name_template = name_template
        self.experiment_template = experiment_template
        self.sqlite_wal = sqlite_wal
        self._lock = threading.RLock()
        self._client: Any = None
        self._experiments: dict[str, str] = {}
        # experiments this process has just created and not registered into yet: they hold no
        # run, so the first registration skips the search for abandoned ones (_end_abandoned_runs)
        self._own_experiments: set[str] = set()
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
            sqlite_wal=cfg.mlflow.sqlite_wal,
        )

    def __repr__(self) -> str:
        return f"ModelRegistry({self.tracking_uri!r})"

    # ---------------------------------------------------------------- plumbing
    def model_name(self, source: str, user: str | None) -> str:
        """The registered name of ``user``'s model (``None``: the generic model)."""
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
            if is_http(uri):
                check_reachable(uri)
        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        try:
            # the first use of a new sqlite file creates its tables: one process at a time
            with file_lock(self._lock_path):
                for uri in dict.fromkeys((self.tracking_uri, self.registry_uri)):
                    db = sqlite_path(uri)
                    if db is not None and self.sqlite_wal:
                        use_wal(db)  # before MLflow's first connection (creates the file when new)
                client.search_experiments(max_results=1)
                client.search_registered_models(max_results=1)
            if self.sqlite_wal:
                tune_sqlite_engines(client)
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
                if not is_locked_error(exc) or attempt == attempts:
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
        with mlflow_uris(self.tracking_uri, self.registry_uri), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example.*", category=UserWarning)
            yield

    def _write_lock(self) -> contextlib.AbstractContextManager:
        """Registrations against one sqlite file are serialised across processes (flock)."""
        return file_lock(self._lock_path)

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        if name in self._experiments:
            return self._experiments[name]
        client = self.client
        exp = client.get_experiment_by_name(name)
        if exp is None:
            location = None
            if self.artifact_location:
                location = f"{self.artifact_location}/{UNSAFE_CHAR.sub('_', name.replace('/', '__'))}"
            try:
                exp_id = client.create_experiment(name, artifact_location=location)
                self._own_experiments.add(exp_id)
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
        key = signature_key(model, schema)
        if key not in self._signatures:
            example = example_raw_frame(schema, user="warm-up", when=datetime(2022, 8, 1))
            self._signatures[key] = signature_for(model, schema, example)
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
        user: str | None,
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
        hyper-parameters, event-time range and row counts as params, the final and per-feature
        train/validation losses as metrics, and the model as a pickle-free pyfunc with the
        epoch curves beside it (``training_curves.json``, see :meth:`training_curves`). ``input_example``: a few raw rows of this user (optional;
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
        user: str | None,
        model: DFPAutoencoder,
        report: TrainingReport,
        schema: SourceSchema,
        first_event: datetime,
        last_event: datetime,
        tags: dict[str, str] | None,
        input_example: pd.DataFrame | list[dict] | None,
    ) -> ModelRef:
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param

        started = time.perf_counter()
        name = self.model_name(source, user)
        experiment = self.experiment_template.format(source=source, model=name)
        first, last = _as_utc(first_event), _as_utc(last_event)
        if isinstance(input_example, list):
            input_example = pd.json_normalize(input_example, sep=".")
        if input_example is not None and len(input_example):
            signature = signature_for(model, schema, input_example.head(5).reset_index(drop=True))
        else:
            # the synthesised example's signature depends only on schema + features: reuse it
            key = signature_key(model, schema)
            signature = self._signatures.get(key)
            if signature is None:
                example = example_raw_frame(schema, user=user_label(user), when=last)
                signature = self._signatures[key] = signature_for(model, schema, example)

        common_tags = {
            "source": source,
            "user": user_label(user),
            "generic": str(user is None).lower(),
            "safe_user": GENERIC_SLOT if user is None else safe_user_name(user),
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
        data_params = dict(
            first_event=first.isoformat(),
            last_event=last.isoformat(),
            row_count=str(report.rows),
            precision_used=report.precision,
            warm_started=str(report.warm_started).lower(),
            train_rows=str(report.train_rows),
            val_rows=str(report.val_rows),
            schema=schema.name,
            schema_fingerprint=schema.fingerprint(),
        )
        params.update(
            data_params,
            categorical_features=",".join(model.categorical),
            numeric_features=",".join(model.numeric),
            binary_features=",".join(model.binary),
        )
        metrics = _training_metrics(report)
        curves = json.dumps(_training_curves(report), separators=(",", ":"))

        template = self._template(schema, signature)
        with tempfile.TemporaryDirectory(prefix="dfp-register-") as tmp:
            # Two holds of the store's file lock, for the database writes; the version's files
            # (written in place on a local artifact store, else written here and uploaded) go
            # between them, outside it, so registrations of all processes queue behind the lock
            # for database work only.
            with self._lock, self._globals():
                client = self.client
                with self._write_lock():
                    exp_id = self._retry("experiment", lambda: self._experiment_id(experiment))
                    self._ensure_registered_model(name, {"source": source, "user": user_label(user)})
                    if exp_id in self._own_experiments:  # just created here: no run in it yet
                        self._own_experiments.discard(exp_id)
                    else:
                        _end_abandoned_runs(client, exp_id)
                    run = client.create_run(
                        exp_id,
                        run_name=f"{name}@{last:%Y%m%dT%H%M%S}",
                        tags={**common_tags, "registered_model": name,
                              "mlflow.source.name": "dfp_ray", "mlflow.source.type": "JOB"},
                    )  # fmt: skip
                    run_id = run.info.run_id
                    try:
                        now = int(time.time() * 1000)
                        client.log_batch(
                            run_id,
                            params=[Param(k, v) for k, v in params.items()],
                            metrics=[Metric(k, float(v), now, step) for k, v, step in metrics],
                        )
                        # An MLflow 3 logged model, as mlflow.pyfunc.log_model makes one: PENDING,
                        # linked to the run as its output, artifacts uploaded, then READY (FAILED
                        # on an error).
                        # the logged model carries what identifies its data (rows, event range,
                        # schema); the hyper-parameters are on its run (a second copy of all ~45
                        # was ~10% of a registration)
                        logged = client.create_logged_model(
                            exp_id, name=MODEL_NAME_IN_RUN, source_run_id=run_id, tags=common_tags,
                            params=data_params,
                        )
                        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
                    except BaseException:
                        _abandon(client, run_id)
                        raise
                try:
                    # a local store gets the files where MLflow's upload would copy them (one
                    # write instead of a write and a copy); any other store gets an upload
                    local = _local_path(logged.artifact_location)
                    model_dir = template.materialise(local or Path(tmp) / MODEL_NAME_IN_RUN, model)
                    (model_dir / CURVES_ARTIFACT).write_text(curves)
                    template.write_mlmodel(
                        model_dir, model_id=logged.model_id, run_id=run_id,
                        artifact_path=logged.artifact_location, signature=signature,
                    )  # fmt: skip
                    if local is None:
                        client.log_model_artifacts(logged.model_id, str(model_dir))
                except BaseException:
                    with self._write_lock():
                        _abandon(client, run_id, logged.model_id)
                    raise
                with self._write_lock():
                    try:
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
                    except BaseException:
                        _abandon(client, run_id)
                        raise
                    client.set_terminated(run_id, "FINISHED")  # a run left RUNNING looks like a crash
        ref = ModelRef(name=name, version=str(version.version), run_id=run_id)
        log.info("registered %s in %.2f s", ref.label, time.perf_counter() - started)
        return ref

    # ---------------------------------------------------------------- lookup
    def latest(self, source: str, user: str | None) -> ModelRef | None:
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

    def latest_many(
        self, source: str, users: list[str | None], chunk: int = 100
    ) -> dict[str | None, ModelRef | None]:
        """:meth:`latest` for many users in a few queries (``name IN (...)``, ``chunk`` names
        each, paged): a cold actor resolving hundreds of users pays one round trip per chunk,
        not per user. Users whose model name holds a quote are looked up one by one."""
        names = {self.model_name(source, u): u for u in dict.fromkeys(users)}
        found: dict[str | None, ModelRef | None] = {u: None for u in names.values()}
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
                    if mv.name not in names:
                        continue
                    user = names[mv.name]  # None: the generic model
                    ref = ModelRef(name=mv.name, version=str(mv.version), run_id=mv.run_id or None)
                    if found[user] is None or ref.version_number > found[user].version_number:
                        found[user] = ref
                token = page.token
                if not token:
                    break
        return found

    def version_with_tag(self, source: str, user: str | None, key: str, value: str) -> ModelRef | None:
        """The newest version of ``user``'s model tagged ``key=value``, or None.

        How a retried training finds out that the model was already registered before its actor
        died (versions carry the ``dfp_work`` tag of the run and message that trained them)."""
        name = self.model_name(source, user)
        if "'" in name or "'" in value:
            return None
        where = f"name = '{name}' and tags.{key} = '{value}'"
        found = self._retry(f"version of {name} tagged {key}", lambda: self.client.search_model_versions(where))
        refs = [ModelRef(name=mv.name, version=str(mv.version), run_id=mv.run_id or None) for mv in found]
        ref = max(refs, key=lambda r: r.version_number, default=None)
        if ref is not None and ref.run_id:
            # an actor killed between creating the version and ending its run left the run
            # RUNNING; the version exists, so that registration did finish: say so
            with self._lock, self._globals(), self._write_lock():
                _finish_if_running(self.client, ref.run_id)
        return ref

    # ---------------------------------------------------------------- population
    def population(self, source: str) -> Population | None:
        """The source's pooled user-model held-out scores (see :mod:`.population`), or None
        before any user model was trained."""
        from mlflow.exceptions import MlflowException

        name = self.model_name(source, None)
        try:
            model = self._retry(f"population of {name}", lambda: self.client.get_registered_model(name))
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
                return None
            raise RegistryError(f"reading the population of {source} at {self.registry_uri} failed: {exc}") from exc
        except RegistryError:
            raise
        except Exception as exc:
            raise RegistryError(f"reading the population of {source} at {self.registry_uri} failed: {exc}") from exc
        raw = (model.tags or {}).get(POPULATION_TAG)
        if not raw:
            return None
        try:
            return Population.decode(raw)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the unreadable %s tag of %s: %s", POPULATION_TAG, name, exc)
            return None

    def set_population(self, source: str, population: Population) -> None:
        """Store the source's population on its generic registered model (created without a
        version when the source has no generic model)."""
        name = self.model_name(source, None)
        with self._write_lock():
            self._ensure_registered_model(name, {})
            self._retry(f"population of {name}",
                        lambda: self.client.set_registered_model_tag(name, POPULATION_TAG, population.encode()))

    def versions(self, source: str, user: str | None) -> list[ModelRef]:
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

    def training_curves(self, ref: ModelRef) -> dict[str, Any] | None:
        """The per-epoch losses of the training that made ``ref``: ``{"epoch": [1, ..., n],
        "train_loss": [...], "val_loss": [...] (empty without validation rows), "best_epoch",
        "best_val_loss", "train_feature_loss": {feature: loss}, "val_feature_loss": {...}}``
        (the final model's mean loss per feature on its training and validation rows), read from
        the version's ``training_curves.json``. Versions registered before the per-feature
        losses moved into that file have no ``*_feature_loss`` keys (their run holds them as
        metrics ``train_loss/<feature>``, ``val_loss/<feature>``); versions registered before
        the file existed are read from their stepped metrics ``epoch_train_loss``/
        ``epoch_val_loss`` (the first five keys, best_* None); None when neither exists."""
        try:
            location = self.client.get_model_version_download_uri(ref.name, ref.version)
            local = _local_path(location)
            with contextlib.suppress(Exception):  # missing: a version older than the file
                if local is not None:
                    return json.loads((local / CURVES_ARTIFACT).read_text())
                from mlflow.artifacts import download_artifacts

                with tempfile.TemporaryDirectory(prefix="dfp-curves-") as tmp:
                    path = download_artifacts(
                        artifact_uri=f"{location}/{CURVES_ARTIFACT}", dst_path=tmp, tracking_uri=self.tracking_uri
                    )
                    return json.loads(Path(path).read_text())
            if not ref.run_id:
                return None
            history = {
                key: sorted(self.client.get_metric_history(ref.run_id, f"epoch_{key}"), key=lambda m: m.step)
                for key in ("train_loss", "val_loss")
            }
        except Exception as exc:
            raise RegistryError(f"reading the training curves of {ref.label} failed: {exc}") from exc
        if not history["train_loss"]:
            return None
        return {
            "epoch": [m.step for m in history["train_loss"]],
            "train_loss": [m.value for m in history["train_loss"]],
            "val_loss": [m.value for m in history["val_loss"]],
            "best_epoch": None,
            "best_val_loss": None,
        }


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


def _training_curves(report: TrainingReport) -> dict[str, Any]:
    """The per-epoch losses and the final per-feature losses as :data:`CURVES_ARTIFACT` holds
    them (one small JSON file instead of one metric row per epoch and curve, and two per
    feature: those rows were the largest part of a registration's database work)."""
    return {
        "epoch": list(range(1, len(report.train_loss) + 1)),
        "train_loss": [float(v) for v in report.train_loss],
        "val_loss": [float(v) for v in report.val_loss],
        "best_epoch": report.best_epoch,
        "best_val_loss": report.best_val_loss,
        "train_feature_loss": {str(f): float(v) for f, v in report.train_feature_loss.items()},
        "val_feature_loss": {str(f): float(v) for f, v in report.val_feature_loss.items()},
    }


def _end_abandoned_runs(client: Any, exp_id: str) -> None:
    """Mark KILLED the runs of this model's experiment still RUNNING: registrations whose
    process died part-way (an actor killed mid-registration never reaches its own handler).
    The model's user is trained by one actor at a time, so a RUNNING run here is such a
    leftover; were it a live registration of another pipeline, its own end (FINISHED) would
    overwrite this. One indexed query per registration; errors are ignored."""
    with contextlib.suppress(Exception):
        for run in client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'", max_results=50):
            client.set_terminated(run.info.run_id, "KILLED")


def _finish_if_running(client: Any, run_id: str) -> None:
    """End as FINISHED a run whose model version was created but which is still RUNNING (its
    registration's process died on the last step); errors are ignored."""
    with contextlib.suppress(Exception):
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "FINISHED")


def _abandon(client: Any, run_id: str, model_id: str | None = None) -> None:
    """Mark a registration that failed part-way: its logged model (when made) and its run FAILED,
    so neither looks pending or crashed; errors doing so are ignored (the original one is raised)."""
    from mlflow.entities import LoggedModelStatus

    if model_id is not None:
        with contextlib.suppress(Exception):
            client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
    with contextlib.suppress(Exception):
        client.set_terminated(run_id, "FAILED")


def _training_metrics(report: TrainingReport) -> list[tuple[str, float, int]]:
    """(key, value, step): the final losses, all at step 0 (the epoch curves and the per-feature
    losses are in :data:`CURVES_ARTIFACT`)."""
    out: list[tuple[str, float, int]] = []
    if report.train_loss:
        out.append(("train_loss", report.train_loss[-1], 0))
    if report.val_loss:
        out.append(("val_loss", report.val_loss[-1], 0))
    if report.best_val_loss is not None:
        out.append(("best_val_loss", report.best_val_loss, 0))
    out += [("epochs_run", report.epochs_run, 0), ("train_seconds", report.seconds, 0)]
    return out

