"""Free loopback ports for the servers tests start (Serve, MLflow, Kafka, S3, PostgreSQL, Ray).

``tests/`` has no ``__init__.py``: import it as ``tests.ports`` or ``ports``.
"""

from __future__ import annotations

import socket
from pathlib import Path


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free port for a server a test starts (the server binds it later, in another process).

    Taken between Ray's worker ports (10002-19999 by default) and the kernel's ephemeral range: a
    port from ``bind(0)`` is ephemeral, and the processes Ray starts meanwhile (its agents and
    workers bind ephemeral ports) took one before the proxy bound it ("Address already in use").
    """
    import random

    low, high = 20000, _ephemeral_start() - 1
    rng = random.SystemRandom()
    for _ in range(50) if high > low else ():
        port = rng.randint(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
