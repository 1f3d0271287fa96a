"""Start and stop a real ``mlflow server`` on loopback, for tests that need a tracking server.

Reusable by any test module (pytest puts ``tests/`` on ``sys.path``, it has no ``__init__.py``)::

    from mlflow_server import MlflowServer

    with MlflowServer(tmp_path) as server:                      # sqlite backend under tmp_path
        registry = ModelRegistry(server.uri)

    with MlflowServer(tmp_path, backend_uri=pg.database_uri("mlflow")) as server:  # PostgreSQL
        ...

Why it is done this way (measured on MLflow 3.17, see ENVIRONMENT.md):

- The server forks worker processes; it runs in its OWN process group
  (``start_new_session=True``) and is stopped by signalling that group, or the workers
  outlive the test as orphans.
- ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` keeps it from starting its background job
  runner (an extra process and extra start-up time we do not need); ``--workers 1`` keeps it
  to one worker on a 2-core machine.
- Start-up takes ~6-12 s; we poll ``/health`` (bounded) instead of sleeping a fixed time, and
  fail with the server's own log when it exits or never becomes healthy.
- The backend store is a sqlite file in ``workdir`` unless ``backend_uri`` names another
  database (``postgresql://...``, see ``postgres_server.py``); the server creates or migrates
  its tables there at start-up.
- Artifacts are *served* by the server (``--artifacts-destination``), so clients upload and
  download through HTTP exactly as they would against a remote server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

try:
    from tests.ports import free_port
except ImportError:
    from ports import free_port


class MlflowServerError(RuntimeError):
    """The server did not start (the message carries the tail of its log)."""


class MlflowServer:
    """A ``mlflow server`` process with served artifacts under ``workdir`` and a sqlite backend
    there, or the database ``backend_uri`` names."""

    def __init__(self, workdir: str | os.PathLike, *, port: int | None = None, start_timeout: float = 90.0,
                 backend_uri: str | None = None):
        self.workdir = Path(workdir)
        self.backend_uri = backend_uri or f"sqlite:///{self.workdir / 'server.db'}"
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "mlflow-server.log"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_uri,
            "--serve-artifacts",
            "--artifacts-destination", str(self.workdir / "served-artifacts"),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", "1",
        ]  # fmt: skip

    def start(self) -> MlflowServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
            MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
            PYTHONUNBUFFERED="1",
        )
        env.pop("MLFLOW_TRACKING_URI", None)  # the server must not inherit a client setting
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: stop() signals the whole group
            )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MlflowServerError(
                    f"mlflow server exited with code {self.proc.returncode} during start-up:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        raise MlflowServerError(
            f"mlflow server on {self.uri} not healthy after {self.start_timeout:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the server's process group, then SIGKILL it if it has not exited in time."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the leader's pid is the group id
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                # the leader is gone; make sure no worker of the group is left behind
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
            break
        if proc.poll() is None:
            proc.wait(timeout=5)

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
