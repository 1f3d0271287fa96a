"""A real PostgreSQL server on loopback, in a temporary directory, for tests and benchmarks.

Usage (``tests/`` has no ``__init__.py``, so import it either way)::

    try:
        from tests.postgres_server import postgres_server, running_postgres
    except ImportError:
        from postgres_server import postgres_server, running_postgres

    pytestmark = pytest.mark.postgres

    def test_x(postgres_server):          # module-scoped fixture: one server per test module
        uri = postgres_server.create_database("mlflow")  # postgresql+psycopg2://dfp@127.0.0.1:<port>/mlflow

    with running_postgres() as pg:         # or a server of your own (benchmarks)
        ...

How it is run, and why:

- The binaries are PostgreSQL's own (``initdb``, ``pg_ctl``, ``postgres``) from
  ``$DFP_PG_BIN``, else the newest ``/usr/lib/postgresql/<major>/bin`` (Debian's layout),
  else ``pg_config --bindir``, else ``PATH``. None found: :class:`PostgresUnavailable`,
  which the fixture turns into a skip naming what to install (``apt-get install postgresql``).
- ``initdb`` refuses to run as root. As root, every PostgreSQL command runs as the ``postgres``
  system user (``runuser -u postgres``), which owns the temporary directory; as any other
  user, the commands run as that user.
- The server listens on 127.0.0.1 only, on a free port, with its Unix socket in the same
  temporary directory (never /var/run/postgresql, which may not exist or be writable).
  Authentication is ``trust`` for the one superuser ``dfp``: loopback, throw-away data.
- ``fsync=off`` and ``synchronous_commit=off``: a test database that is deleted afterwards
  needs no durability, and fsyncs on a shared 2-core machine cost seconds per test module.
  (Benchmarks pass ``durable=True`` to measure the production settings.)
- ``pg_ctl start -w`` waits (bounded) until the server accepts connections; the postmaster's
  PID is read from ``postmaster.pid``. Stopping is ``pg_ctl stop -m fast`` (bounded), then
  SIGKILL of that PID if it is still there; the directory is removed afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from tests.ports import free_port
except ImportError:
    from ports import free_port

__all__ = ["PostgresServer", "PostgresUnavailable", "find_pg_bin", "postgres_server", "running_postgres",
           "unavailable_reason"]

SUPERUSER = "dfp"
SERVICE_USER = "postgres"  # the system user PostgreSQL runs as when we are root
INSTALL_HINT = "install PostgreSQL (Debian: apt-get install -y postgresql) or set DFP_PG_BIN to its bin folder"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be run here (no binaries, no non-root user, no driver); says why."""


def _major(path: str) -> int:
    match = re.search(r"/postgresql/(\d+)/", path)
    return int(match.group(1)) if match else 0


def find_pg_bin() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl`` (see the module docstring for the order)."""
    candidates: list[str] = []
    if os.environ.get("DFP_PG_BIN"):
        candidates.append(os.environ["DFP_PG_BIN"])
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(out.stdout.strip())
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    raise PostgresUnavailable(f"no PostgreSQL initdb/pg_ctl found (looked in {candidates or 'nothing'}): "
                              f"{INSTALL_HINT}")


def _run_as() -> list[str]:
    """The command prefix that runs PostgreSQL as a non-root user (empty when we are not root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError as exc:
        raise PostgresUnavailable(
            f"running as root and there is no '{SERVICE_USER}' system user to run PostgreSQL as "
            f"(initdb refuses root): {INSTALL_HINT}, which creates it") from exc
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root without `runuser` (util-linux) to drop to the postgres user")
    return [runuser, "-u", SERVICE_USER, "--"]


def unavailable_reason() -> str | None:
    """Why the Postgres-backed tests cannot run here, or None when they can."""
    try:
        find_pg_bin()
        _run_as()
    except PostgresUnavailable as exc:
        return str(exc)
    try:
        import psycopg2  # noqa: F401  (MLflow's SQLAlchemy store needs it for postgresql://)
    except ImportError:
        return "psycopg2 is not installed (pip install -e '.[test]' brings psycopg2-binary)"
    return None


class PostgresServer:
    """One PostgreSQL server on ``127.0.0.1:<port>`` with its data in a temporary directory."""

    def __init__(self, *, port: int | None = None, durable: bool = False, start_timeout: float = 60.0):
        self.bin = find_pg_bin()
        self.prefix = _run_as()
        self.port = port or free_port()
        self.durable = durable
        self.start_timeout = start_timeout
        # Not pytest's tmp_path: that lives under a root-only folder the postgres user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="dfp-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.pid: int | None = None
        if self.prefix:
            entry = pwd.getpwnam(SERVICE_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    # ---------------------------------------------------------------- commands
    def _cmd(self, tool: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        command = [*self.prefix, str(self.bin / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              cwd=self.root)
        if done.returncode != 0:
            raise PostgresUnavailable(
                f"{tool} failed with exit {done.returncode}: {done.stderr.strip() or done.stdout.strip()}\n"
                f"{self.log_tail()}")
        return done

    def _options(self) -> str:
        opts = [f"-p {self.port}", f"-k {self.root}", "-c listen_addresses=127.0.0.1", "-c max_connections=100"]
        if not self.durable:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        return " ".join(opts)

    def start(self) -> PostgresServer:
        started = time.monotonic()
        self._cmd("initdb", "-D", str(self.data), "-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C")
        try:
            left = max(5, int(self.start_timeout - (time.monotonic() - started)))
            self._cmd("pg_ctl", "-D", str(self.data), "-o", self._options(), "-l", str(self.log_path),
                      "-w", "-t", str(left), "start", timeout=left + 10)
            self.pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except BaseException:
            self.stop()
            raise
        return self

    def create_database(self, name: str) -> str:
        """Create database ``name`` (owned by the superuser); returns its SQLAlchemy URI."""
        self._cmd("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name, timeout=30)
        return self.database_uri(name)

    def database_uri(self, name: str = "postgres") -> str:
        """``postgresql+psycopg2://dfp@127.0.0.1:<port>/<name>``: what MLflow's ``--backend-store-uri``
        takes. The driver is named: SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3."""
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{name}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no postgres log>"

    def stop(self, timeout: float = 20.0) -> None:
        """``pg_ctl stop -m fast`` (bounded), then SIGKILL of the postmaster's PID; removes the data."""
        try:
            if (self.data / "postmaster.pid").exists():
                with contextlib.suppress(PostgresUnavailable, subprocess.TimeoutExpired):
                    self._cmd("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", str(int(timeout)), "stop",
                              timeout=timeout + 10)
            if self.pid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(self.pid, 0)  # still there after pg_ctl: kill it
                    os.kill(self.pid, signal.SIGKILL)
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline:
                        os.kill(self.pid, 0)
                        time.sleep(0.1)
        finally:
            self.pid = None
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_postgres(*, durable: bool = False) -> Iterator[PostgresServer]:
    """Start a server on a free loopback port; yield it; stop it by PID and delete its data."""
    server = PostgresServer(durable=durable)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the test module; skipped, saying why, where PostgreSQL cannot run."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"PostgreSQL tests need a local PostgreSQL: {reason}")
    with running_postgres() as server:
        yield server
