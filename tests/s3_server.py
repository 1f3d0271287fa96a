"""A real S3-protocol server (moto_server) on loopback, for tests.

Usage (any test module; ``tests/`` has no ``__init__.py``, so import it either way)::

    try:
        from tests.s3_server import running_s3_server, s3_storage_options
    except ImportError:
        from s3_server import running_s3_server, s3_storage_options

    with running_s3_server() as endpoint:
        opts = s3_storage_options(endpoint)
        fs = s3fs.S3FileSystem(**opts)
        fs.mkdir("my-bucket")

The server runs as a subprocess in its own process group and is stopped by its PID when the
``with`` block ends, even on failure. Readiness is polled (bounded) over HTTP.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

try:
    from tests.ports import free_port
except ImportError:
    from ports import free_port

__all__ = ["moto_server_binary", "free_port", "running_s3_server", "s3_storage_options"]


def moto_server_binary() -> str | None:
    """The ``moto_server`` next to this interpreter (the venv), else on PATH, else None."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.exists():
        return str(beside)
    return shutil.which("moto_server")


def s3_storage_options(endpoint: str) -> dict:
    """fsspec/s3fs storage options for the test server (any key/secret is accepted)."""
    return {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint},
    }


def _ready(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1) as response:
            return response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


@contextlib.contextmanager
def running_s3_server(timeout: float = 30.0) -> Iterator[str]:
    """Start ``moto_server -H 127.0.0.1 -p <free port>``; yield its endpoint URL; stop it."""
    binary = moto_server_binary()
    if binary is None:
        raise RuntimeError("moto_server not found: pip install 'moto[server]' into the venv")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    # The server logs every request to stderr. A pipe nobody reads fills up after a few
    # hundred requests and then blocks the server, so the log goes to a temporary file.
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not _ready(endpoint):
            if process.poll() is not None:
                log.seek(0)
                err = log.read().decode(errors="replace")
                raise RuntimeError(f"moto_server exited with code {process.returncode}: {err[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto_server not ready at {endpoint} after {timeout:.0f} s")
            time.sleep(0.1)
        yield endpoint
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        log.close()
