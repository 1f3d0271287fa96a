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
real registration carries (one made through MLflow's API, its table rows copied: fast, and
not what is measured). Then, in ``--rounds`` rounds that visit every path in turn (so a load
spike on a shared machine hits all paths alike), each path times once: ``register`` (a full
dfp_ray registration of a Morpheus-sized model into a new registered model: run, params,
metrics, logged model, artifacts, version), ``latest`` of one user, ``latest_many`` of 100
users (one inference call of one actor), ``latest_many`` of every user (a cold pool resolving
all its users), and ``load`` of one model (what a model-cache miss costs: artifacts read in
place, or downloaded through the server). Medians are printed. PostgreSQL runs with its
durable defaults (fsync on) on 127.0.0.1; sqlite commits are fsyncs too.

    python benchmarks/bench_registry_db.py [--models 10000] [--rounds 9]

Needs PostgreSQL binaries (``make bench`` installs them with apt when missing) and
psycopg2-binary (test extra); without PostgreSQL only the sqlite columns are measured.
Timings on a shared 2-core machine are noisy (the load average is printed): compare the
columns of one run.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test fixtures that start PostgreSQL and mlflow server

SOURCE = "duo"


def user_name(i: int) -> str:
    return f"user{i:06d}@corp.example"  # dotted: the safe-name hash path, as real e-mail user names


TEMPLATE_USER = "seed.template"
SEED_TABLES = ("registered_models", "registered_model_tags", "model_versions", "model_version_tags")


def seed(db_uri: str, n: int) -> float:
    """Fill the store with ``n`` registered models of one version each; returns models/s.

    One model is registered through MLflow's API (so every column, tag and default is MLflow's
    own), then its rows in MLflow's tables are copied ``n`` times under the seeded users' names
    in one transaction: seconds instead of the hours ``n`` API registrations would take on a
    busy 2-core machine. The lookups measured afterwards see exactly what API-made models give."""
    import sqlalchemy
    from mlflow import MlflowClient

    from dfp_ray.registry.names import registered_model_name, safe_user_name

    client = MlflowClient(tracking_uri=db_uri, registry_uri=db_uri)
    template = registered_model_name(SOURCE, TEMPLATE_USER)
    client.create_registered_model(template, tags={"source": SOURCE, "user": TEMPLATE_USER})
    client.create_model_version(template, source="s3://dfp-bench-seed/models/template", tags={
        "source": SOURCE, "user": TEMPLATE_USER, "generic": "false", "safe_user": safe_user_name(TEMPLATE_USER),
        "dfp_ray_version": "0.1.0", "rows": "300", "first_event": "2022-08-01T00:00:00+00:00",
        "last_event": "2022-08-29T23:59:59+00:00"})
    started = time.perf_counter()
    engine = sqlalchemy.create_engine(db_uri)
    meta = sqlalchemy.MetaData()
    try:
        with engine.begin() as conn:
            for table_name in SEED_TABLES:
                table = sqlalchemy.Table(table_name, meta, autoload_with=conn)
                rows = conn.execute(sqlalchemy.select(table).where(table.c.name == template)).mappings().all()
                assert rows, f"the template model has no rows in {table_name}"
                batch: list[dict] = []
                for i in range(n):
                    user = user_name(i)
                    values = {"user": user, "safe_user": safe_user_name(user)}
                    for row in rows:
                        copy = dict(row, name=registered_model_name(SOURCE, user))
                        if "key" in copy and copy["key"] in values:
                            copy["value"] = values[copy["key"]]
                        batch.append(copy)
                    if len(batch) >= 5000:
                        conn.execute(table.insert(), batch)
                        batch = []
                if batch:
                    conn.execute(table.insert(), batch)
    finally:
        engine.dispose()
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


def model_bytes(model) -> int:
    """Bytes of one model's weights as saved (what each cached model roughly holds in memory)."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "m")
        return sum(p.stat().st_size for p in (Path(tmp) / "m").rglob("*") if p.is_file())


OPS = ("register_s", "latest_ms", "latest_many_100_ms", "latest_many_all_s", "load_ms")


class Path_:
    """One way to reach a store, warmed up, with its own timed operations."""

    def __init__(self, label: str, registry, n: int, trained) -> None:
        import datetime as dt

        self.label, self.registry = label, registry
        self.schema, self.model, self.report = trained
        self.when = dt.datetime(2022, 8, 30, tzinfo=dt.UTC)
        self.counter = itertools.count()
        registry.warm_up(self.model, self.schema)
        self.register()  # the first registration of a process creates experiments etc.: not counted
        self.loaded = registry.latest(SOURCE, f"bench.{label}.0")
        self.users = [user_name(i) for i in range(n)]
        self.hundred = self.users[n // 2: n // 2 + 100]
        found = registry.latest_many(SOURCE, self.users)
        assert sum(v is not None for v in found.values()) == n, f"{label}: bulk lookup missed seeded models"
        self.times: dict[str, list[float]] = {op: [] for op in OPS}

    def register(self) -> None:  # a new user each time: a new registered model, as a first training makes
        self.registry.register(source=SOURCE, user=f"bench.{self.label}.{next(self.counter)}", model=self.model,
                               report=self.report, schema=self.schema, first_event=self.when, last_event=self.when)

    def _time(self, op: str, fn: Callable[[], object], scale: float = 1.0) -> None:
        started = time.perf_counter()
        fn()
        self.times[op].append(scale * (time.perf_counter() - started))

    def one_round(self) -> None:
        self._time("register_s", self.register)
        self._time("latest_ms", lambda: self.registry.latest(SOURCE, self.hundred[1]), 1000)
        self._time("latest_many_100_ms", lambda: self.registry.latest_many(SOURCE, self.hundred), 1000)
        self._time("latest_many_all_s", lambda: self.registry.latest_many(SOURCE, self.users))
        self._time("load_ms", lambda: self.registry.load(self.loaded, device="cpu"), 1000)

    def medians(self) -> dict[str, float]:
        return {op: statistics.median(t) for op, t in self.times.items()}


def rows_in_store(db_uri: str) -> int:
    """Rows in all of MLflow's tables (how fast a registry database grows per registration)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(db_uri)
    try:
        with engine.connect() as conn:
            tables = sqlalchemy.inspect(conn).get_table_names()
            return sum(conn.execute(sqlalchemy.text(f'SELECT count(*) FROM "{t}"')).scalar() for t in tables)
    finally:
        engine.dispose()


@contextlib.contextmanager
def server(workdir: Path, backend: str) -> Iterator[str]:
    from mlflow_server import MlflowServer

    with MlflowServer(workdir, backend_uri=backend, start_timeout=240) as srv:
        yield srv.uri


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=10_000, help="registered models in each store (default 10,000)")
    ap.add_argument("--rounds", type=int, default=9, help="rounds; each times every operation once on every path")
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no "View run ..." line per registration
    from dfp_ray.registry import ModelRegistry
    from dfp_ray.registry.mlflow_env import quiet_mlflow

    quiet_mlflow()
    from postgres_server import running_postgres, unavailable_reason

    work = Path(tempfile.mkdtemp(prefix="dfp_bench_registry_"))
    seeded: dict[str, float] = {}
    growth: dict[str, float] = {}
    trained = trained_model()
    paths: list[Path_] = []
    try:
        with contextlib.ExitStack() as stack:
            sqlite_uri = f"sqlite:///{work / 'sqlite' / 'mlflow.db'}"
            (work / "sqlite").mkdir()
            seeded["sqlite"] = seed(sqlite_uri + "?timeout=60", args.models)
            paths.append(Path_("sqlite", ModelRegistry(sqlite_uri), args.models, trained))
            uri = stack.enter_context(server(work / "sqlite-server", sqlite_uri))
            paths.append(Path_("sqlite+server", ModelRegistry(uri), args.models, trained))
            reason = unavailable_reason()
            pg_uri = ""
            if reason:
                print(f"PostgreSQL columns skipped: {reason}")
            else:
                pg = stack.enter_context(running_postgres(durable=True))
                pg_uri = pg.create_database("mlflow")
                seeded["postgres"] = seed(pg_uri, args.models)
                uri = stack.enter_context(server(work / "pg-server", pg_uri))
                paths.append(Path_("postgres+server", ModelRegistry(uri), args.models, trained))
                direct = ModelRegistry(pg_uri, artifact_location=(work / "pg-artifacts").as_uri())
                paths.append(Path_("postgres", direct, args.models, trained))
            print(f"seeded {args.models:,} models per store; timing {args.rounds} interleaved rounds", flush=True)
            stores = {"sqlite": sqlite_uri, **({"postgres": pg_uri} if not reason else {})}
            before = {name: rows_in_store(uri) for name, uri in stores.items()}
            for r in range(args.rounds):  # interleaved: a load spike on the shared machine hits every path
                for path in paths:
                    path.one_round()
                print(f"  round {r + 1}/{args.rounds} done", flush=True)
            # two paths register into each store, one registration per round each
            growth = {name: (rows_in_store(uri) - before[name]) / (2 * args.rounds) for name, uri in stores.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results = {p.label: p.medians() for p in paths}
    cols = list(results)
    rows = [("register (s)", "register_s", "{:.3f}"), ("latest, 1 user (ms)", "latest_ms", "{:.1f}"),
            ("latest_many, 100 users (ms)", "latest_many_100_ms", "{:.1f}"),
            (f"latest_many, all {args.models:,} users (s)", "latest_many_all_s", "{:.2f}"),
            ("load one model (ms)", "load_ms", "{:.1f}")]
    ratio_col = "postgres+server" if "postgres+server" in results else None
    print(f"\nRegistry with {args.models:,} registered models (one version each); medians of "
          f"{args.rounds} interleaved rounds; lower is better")
    header = f"{'operation':<34}" + "".join(f"{c:>17}" for c in cols)
    if ratio_col:
        header += f"{'pg+server/sqlite':>18}"
    print(header)
    for label, key, fmt in rows:
        line = f"{label:<34}" + "".join(f"{fmt.format(results[c][key]):>17}" for c in cols)
        if ratio_col:
            line += f"{results[ratio_col][key] / results['sqlite'][key]:>17.2f}x"
        print(line)
    size = model_bytes(trained[1])
    print(f"one model: {size / 1e6:.2f} MB on disk (safetensors + json); "
          f"{args.models:,} models: {size * args.models / 1e9:.1f} GB")
    print("rows added to the store per registration: " + ", ".join(f"{k} {v:,.0f}" for k, v in growth.items()))
    print("seeding (models/s, rows copied in MLflow's tables): "
          + ", ".join(f"{k} {v:,.0f}" for k, v in seeded.items()))
    try:
        print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (2 cores: above 2, figures are noisy)")
    except OSError:  # pragma: no cover
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
