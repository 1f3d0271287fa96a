"""Repository-wide pytest hooks (at the root, so they also cover the doctests).

Why pytest's exit status is written to a file: CI once printed ``595 passed, 2 skipped`` and
then the interpreter died with a segmentation fault while it finalised, after pytest had
returned its status. The crash is in native teardown (Ray's core worker, gRPC and torch threads
all live in the test process) and is intermittent; it turned a passing run into ``make`` error
139. When ``DFP_TEST_STATUS_FILE`` is set, the final status of the session is written there
as soon as pytest knows it, and ``make test`` uses it when the process was killed by a signal
after that point (and says so in the log). A failing test still fails the run, the crash is
still printed (``make test`` runs python with ``-X faulthandler``), and a crash before the
session ended leaves no file, so it fails the run as before.
"""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("DFP_TEST_STATUS_FILE")
    if path and getattr(session.config, "workerinput", None) is None:
        with open(path, "w", encoding="ascii") as fh:
            fh.write(f"{int(exitstatus)}\n")
