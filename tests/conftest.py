"""Fixtures shared by test modules.

``ray_session``: a local Ray for the module that asks for it (2 CPUs, no dashboard), one
session per module as the guide asks, shut down by ``ray.shutdown()`` at the module's end
(never ``ray stop``, which would also stop a cluster the developer runs).
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
