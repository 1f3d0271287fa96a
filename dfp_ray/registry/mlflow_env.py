"""MLflow process settings: quiet logging, URI normalisation, reachability, and the global URIs.

MLflow keeps its tracking/registry URI in process globals; a process may hold several
registries, so every fluent-API call goes through :func:`mlflow_uris`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    pass

from dfp_ray.registry.errors import RegistryUnavailableError

log = logging.getLogger(__name__)

SQLITE_TIMEOUT_S = 60  # sqlite busy timeout added to sqlite:// URIs (see normalise_uri)

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


def normalise_uri(uri: str) -> str:
    """Add a sqlite busy timeout so concurrent writers wait instead of failing "database is locked"."""
    if uri.startswith("sqlite:///") and "timeout=" not in uri:
        return f"{uri}{'&' if '?' in uri else '?'}timeout={SQLITE_TIMEOUT_S}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def use_wal(db: Path) -> str:
    """Put the sqlite file ``db`` in WAL mode (created empty when missing); returns its journal mode.

    WAL is a property of the database file: set once, every later connection of every
    process (MLflow's, ``mlflow ui``, an older dfp_ray) uses it. Readers then never block the
    writer nor the other way round, and a commit appends to ``<db>-wal`` instead of rewriting a
    rollback journal (one fsync fewer per commit; none with ``synchronous=NORMAL``, see
    :func:`tune_sqlite_engines`). Called under the registry's file lock before MLflow opens the
    file. A file that cannot be switched (a reader holds it, a read-only directory) keeps
    its mode: everything works as before, only slower.
    """
    import sqlite3

    db.parent.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=SQLITE_TIMEOUT_S)) as conn:
            mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            if mode != "wal":
                mode = str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
    except sqlite3.Error as exc:
        log.info("sqlite store %s stays in its journal mode: %s", db, exc)
        return "?"
    return mode


def _synchronous_normal_in_wal(dbapi_conn, _record) -> None:  # noqa: ANN001 - SQLAlchemy pool event
    cursor = dbapi_conn.cursor()
    try:
        if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
            cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def tune_sqlite_engines(client) -> int:  # noqa: ANN001 - an MlflowClient
    """Make every sqlite connection of ``client``'s stores use ``synchronous=NORMAL`` when the
    file is in WAL mode (a per-connection setting, not stored in the file).

    In WAL mode NORMAL syncs the log only at checkpoints, not at each commit: the database
    stays consistent after a crash or power loss, and the last commits before a power loss
    (not a process crash) may be lost; a lost registration is a model trained again.
    Rollback-journal files keep MLflow's FULL. Returns the number of engines tuned (0 when
    MLflow's internals moved: then commits only cost what they did)."""
    from sqlalchemy import event

    engines = []
    with contextlib.suppress(Exception):
        engines.append(client._tracking_client.store.engine)
    with contextlib.suppress(Exception):
        engines.append(client._get_registry_client().store.engine)
    tuned = 0
    for engine in {id(e): e for e in engines}.values():
        if getattr(getattr(engine, "dialect", None), "name", None) != "sqlite":
            continue
        if not event.contains(engine, "connect", _synchronous_normal_in_wal):
            event.listen(engine, "connect", _synchronous_normal_in_wal)
            engine.dispose()  # pooled connections opened before the listener: reopen with it
        tuned += 1
    return tuned


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def is_locked_error(exc: BaseException) -> bool:
    return "database is locked" in str(exc) or "database table is locked" in str(exc)


def check_reachable(uri: str, timeout: float = 5.0) -> None:
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



_GLOBALS_LOCK = threading.RLock()  # guards MLflow's process-global tracking/registry URI


_URI_ENV_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def mlflow_uris(tracking_uri: str, registry_uri: str) -> Iterator[None]:
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


