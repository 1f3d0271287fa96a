"""The dfp_ray HTTP application on Ray Serve: model fingerprinting today, per-user scoring next.

Modules, from the outside in:

* :mod:`.deployment` - the Serve deployment, the ``serve run``/``serve deploy`` builder, ``deploy()``;
* :mod:`.app` - the FastAPI app factory and :data:`~.app.ROUTE_MODULES` (one module per service);
* :mod:`.fingerprint_routes` / :mod:`.fingerprint_service` - the fingerprint endpoints and their work;
* :mod:`.jobs_routes` / :mod:`.jobs` - ``?async=true`` jobs that survive a replica restart;
* :mod:`.form_endpoints`, :mod:`.uploads` - multipart uploads streamed to bounded storage;
* :mod:`.auth`, :mod:`.errors`, :mod:`.config` - bearer auth, one error shape, the config model.

Start it with ``dfp-ray serve --config configs/serve.yaml`` (or ``python -m dfp_ray.serve``);
see ``docs/serve.md``.
"""

import os

# Before torch is imported in a replica: spinning OpenMP threads make small models 10-30x
# slower when cores are shared (measured; see dfp_ray/cli.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
