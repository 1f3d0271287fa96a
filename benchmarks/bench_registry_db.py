"""Registry benchmark: registration and bulk lookup with 10,000 registered models, sqlite vs PostgreSQL.

The registry holds one registered model per user; at 10,000 users (and more) what matters is
how fast a model is registered when the store is already large, and how fast a user actor
resolves the latest versions of its users (``ModelRegistry.latest_many``: ``name IN (...)``,
100 names a query). Four ways to reach the store, side by side in one run:

- ``sqlite``: the embedded default (``sqlite:///<state_dir>/mlflow.db``, local artifacts);
- ``sqlite+server``: an ``mlflow server`` on that same sqlite file (HTTP, served artifacts);
- ``postgres+server``: an ``mlflow server`` backed by PostgreSQL, the production setup
  (docs/registry.md): every actor talks HTTP to the server, the server to the database;
- ``postgres``: the actors' MLflow client straight on the PostgreSQL database (no server,
  local artifacts), to separate the database's cost from the server's.

The stores are seeded with ``--models`` registered models, one version each with the tags a
real registration carries, through MLflow's own store API in-process (fast, and not what is
measured). Then, for each path: ``register`` (a full dfp_ray registration of a Morpheus-sized
model: run, params, metrics, logged model, artifacts, version; median of ``--registrations``),
``latest`` of one user, ``latest_many`` of 100 users (one inference call of one actor), and
``latest_many`` of every user (a cold pool resolving all its users). PostgreSQL runs with its
durable defaults (fsync on), on 127.0.0.1, as does sqlite (a commit is an fsync).

    python benchmarks/bench_registry_db.py [--models 10000] [--registrations 20] [--repeat 15]

Needs PostgreSQL binaries (``make bench`` installs them with apt when missing) and
psycopg2-binary (test extra); without PostgreSQL only the sqlite columns are measured.
Timings on a shared 2-core machine are noisy: compare the columns of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test fixtures that start PostgreSQL and mlflow server

SOURCE = "duo"


def user_name(i: int) -> str:
    return f"user{i:06d}@corp.example"  # dotted: the safe-name hash path, as real e-mail user names


def seed(db_uri: str, n: int, threads: int) -> float:
    """Register ``n`` models (one version each) straight through MLflow's store; returns models/s."""
    from mlflow import MlflowClient

    from dfp_ray.registry.names import registered_model_name, safe_user_name

    client = MlflowClient(tracking_uri=db_uri, registry_uri=db_uri)
    client.search_registered_models(max_results=1)  # creates the tables once, before the threads

    def one(i: int) -> None:
        user = user_name(i)
        name = registered_model_name(SOURCE, user)
        client.create_registered_model(name, tags={"source": SOURCE, "user": user})
        client.create_model_version(name, source=f"models:/m-seed{i:06d}", tags={
            "source": SOURCE, "user": user, "generic": "false", "safe_user": safe_user_name(user),
            "dfp_ray_version": "0.1.0", "rows": "300", "first_event": "2022-08-01T00:00:00+00:00",
            "last_event": "2022-08-29T23:59:59+00:00"})

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(n)))
    return n / (time.perf_counter() - started)


def trained_model():
    """A Morpheus-sized Duo model (encoder 512-500, decoder 512) fitted for one epoch."""
    import numpy as np
    import pandas as pd

    from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder
    from dfp_ray.schemas import load_schema

    schema = load_schema(SOURCE)
    f = schema.features
    rng = np.random.default_rng(0)
    rows = 300
    frame = pd.DataFrame({**{c: rng.choice(["a", "b", "c"], rows) for c in f.categorical},
                          **{c: rng.random(rows) < 0.5 for c in f.binary},
                          **{c: rng.random(rows) for c in f.numeric}})
    model = DFPAutoencoder(f.categorical, f.numeric, f.binary,
                           AutoencoderParams(epochs=1, device="cpu", num_threads=1, seed=0))
    report = model.fit(frame)
    return schema, model, report


def median_s(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(label: str, registry, n: int, trained, registrations: int, repeat: int) -> dict[str, float]:
    import datetime as dt

    schema, model, report = trained
    when = dt.datetime(2022, 8, 30, tzinfo=dt.UTC)
    registry.warm_up(model, schema)
    counter = itertools.count()

    def register() -> None:  # a new user each time: a new registered model, as a first training does
        registry.register(source=SOURCE, user=f"bench.{label}.{next(counter)}", model=model, report=report,
                          schema=schema, first_event=when, last_event=when)

    register()  # the first registration of a process opens experiments etc.: not counted
    users = [user_name(i) for i in range(n)]
    hundred = users[n // 2: n // 2 + 100]
    assert registry.latest(SOURCE, hundred[0]) is not None, "the store was not seeded"
    found = registry.latest_many(SOURCE, users)
    assert sum(v is not None for v in found.values()) == n, "bulk lookup missed seeded models"
    return {
        "register_s": median_s(register, registrations),
        "latest_ms": 1000 * median_s(lambda: registry.latest(SOURCE, hundred[1]), repeat),
        "latest_many_100_ms": 1000 * median_s(lambda: registry.latest_many(SOURCE, hundred), repeat),
        "latest_many_all_s": median_s(lambda: registry.latest_many(SOURCE, users), max(1, repeat // 5)),
    }


@contextlib.contextmanager
def server(workdir: Path, backend: str) -> Iterator[str]:
    from mlflow_server import MlflowServer

    with MlflowServer(workdir, backend_uri=backend, start_timeout=240) as srv:
        yield srv.uri


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=10_000, help="registered models in each store (default 10,000)")
    ap.add_argument("--registrations", type=int, default=20, help="registrations timed per path (median)")
    ap.add_argument("--repeat", type=int, default=15, help="repeats of each lookup (median)")
    ap.add_argument("--seed-threads", type=int, default=4, help="threads seeding PostgreSQL")
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from dfp_ray.registry import ModelRegistry
    from dfp_ray.registry.mlflow_env import quiet_mlflow

    quiet_mlflow()
    from postgres_server import running_postgres, unavailable_reason

    work = Path(tempfile.mkdtemp(prefix="dfp_bench_registry_"))
    results: dict[str, dict[str, float]] = {}
    seeded: dict[str, float] = {}
    trained = trained_model()
    try:
        sqlite_uri = f"sqlite:///{work / 'sqlite' / 'mlflow.db'}"
        (work / "sqlite").mkdir()
        seeded["sqlite"] = seed(sqlite_uri + "?timeout=60", args.models, threads=1)  # one writer at a time
        print(f"seeded sqlite with {args.models:,} models at {seeded['sqlite']:.0f} models/s", flush=True)
        results["sqlite"] = measure("sqlite", ModelRegistry(sqlite_uri), args.models, trained, args.registrations, args.repeat)
        print("sqlite", results["sqlite"], flush=True)
        with server(work / "sqlite-server", sqlite_uri) as uri:
            results["sqlite+server"] = measure("sqlite-server", ModelRegistry(uri), args.models, trained, args.registrations,
                                               args.repeat)
        print("sqlite+server", results["sqlite+server"], flush=True)

        reason = unavailable_reason()
        if reason:
            print(f"PostgreSQL columns skipped: {reason}")
        else:
            with running_postgres(durable=True) as pg:
                pg_uri = pg.create_database("mlflow")
                seeded["postgres"] = seed(pg_uri, args.models, threads=args.seed_threads)
                print(f"seeded PostgreSQL with {args.models:,} models at {seeded['postgres']:.0f} models/s",
                      flush=True)
                with server(work / "pg-server", pg_uri) as uri:
                    results["postgres+server"] = measure("pg-server", ModelRegistry(uri), args.models, trained,
                                                         args.registrations, args.repeat)
                print("postgres+server", results["postgres+server"], flush=True)
                direct = ModelRegistry(pg_uri, artifact_location=(work / "pg-artifacts").as_uri())
                results["postgres"] = measure("pg", direct, args.models, trained, args.registrations, args.repeat)
                print("postgres", results["postgres"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cols = list(results)
    rows = [("register (s, median)", "register_s", "{:.3f}"), ("latest, 1 user (ms)", "latest_ms", "{:.1f}"),
            ("latest_many, 100 users (ms)", "latest_many_100_ms", "{:.1f}"),
            (f"latest_many, all {args.models:,} users (s)", "latest_many_all_s", "{:.2f}")]
    ratio_col = "postgres+server" if "postgres+server" in results else None
    print(f"\nRegistry with {args.models:,} registered models (one version each), medians; "
          "lower is better")
    header = f"{'operation':<34}" + "".join(f"{c:>17}" for c in cols)
    if ratio_col:
        header += f"{'pg+server/sqlite':>18}"
    print(header)
    for label, key, fmt in rows:
        line = f"{label:<34}" + "".join(f"{fmt.format(results[c][key]):>17}" for c in cols)
        if ratio_col:
            line += f"{results[ratio_col][key] / results['sqlite'][key]:>17.2f}x"
        print(line)
    print("seeding (models/s, MLflow store API in-process): "
          + ", ".join(f"{k} {v:,.0f}" for k, v in seeded.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
