"""Registration cost into the embedded sqlite store, this tree against an older one, in one run.

What one ``ModelRegistry.register`` costs (run, params, metrics, logged model, artifacts,
version) with a Morpheus-sized Duo model and a ``--epochs``-long training curve, and how many
SQL statements and commits it makes. Two worker processes, each with its own fresh sqlite
store and warmed up (store opened, pyfunc template built, first registration not counted),
take turns round by round so that a load spike on the shared machine hits both alike:

- ``this``: the dfp_ray package of this tree;
- ``no-wal``: the same with ``ModelRegistry(..., sqlite_wal=False)`` (the rollback journal,
  as before): what WAL + ``synchronous=NORMAL`` buys, apart from the other changes;
- ``base``: the package as it was at ``--base`` (``git archive`` of ``dfp_ray/`` into a
  temporary folder, put first on the worker's ``PYTHONPATH``). Without git or that commit
  only ``this`` is measured.

Each round each worker registers one NEW user (a new registered model and experiment, as a
first training does) and one new version of an already registered user (a retraining).

    python benchmarks/bench_register.py [--rounds 40] [--epochs 40] [--base 457980a]

Prints p50/p95 per worker and kind, the median time the cross-process file lock is held
(registrations of all processes queue behind it), the ratio this/base, statements and
commits per registration, the store's journal mode and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BASE = "457980a"  # the last commit before registration got cheaper (issue 15)


def _worker(store: Path, epochs: int, wal: bool) -> int:
    """Read 'round' lines on stdin; register one new user and one retrain; print timings as JSON."""
    import datetime as dt

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    import dfp_ray
    from dfp_ray.registry import ModelRegistry

    sys.path.insert(0, str(HERE))
    from bench_registry_db import SOURCE, trained_model

    schema, model, report = trained_model()
    curve = [1.0 / (i + 1) for i in range(epochs)]
    report = report.model_copy(update={"train_loss": curve, "val_loss": curve[:-1] + [0.5],
                                       "epochs_run": epochs, "best_val_loss": min(curve)})
    uri = f"sqlite:///{store / 'mlflow.db'}"
    registry = ModelRegistry(uri) if wal else ModelRegistry(uri, sqlite_wal=False)
    when = dt.datetime(2022, 8, 30, tzinfo=dt.UTC)
    registry.warm_up(model, schema)
    counts = {"statements": 0, "commits": 0, "held": 0.0}
    from dfp_ray.registry import locking  # the cross-process lock: time it is held (what serialises writers)

    acquire, release = locking._ProcessFileLock._acquire, locking._ProcessFileLock._release

    def timed_acquire(self) -> None:
        acquire(self)
        counts["since"] = time.perf_counter()

    def timed_release(self) -> None:
        counts["held"] += time.perf_counter() - counts.pop("since")
        release(self)

    locking._ProcessFileLock._acquire, locking._ProcessFileLock._release = timed_acquire, timed_release
    event.listen(Engine, "before_cursor_execute", lambda *a: counts.__setitem__("statements", counts["statements"] + 1))
    event.listen(Engine, "commit", lambda *a: counts.__setitem__("commits", counts["commits"] + 1))

    def register(user: str) -> tuple[float, int, int, float]:
        before = dict(counts)
        started = time.perf_counter()
        registry.register(source=SOURCE, user=user, model=model, report=report, schema=schema,
                          first_event=when, last_event=when)
        return (time.perf_counter() - started, counts["statements"] - before["statements"],
                counts["commits"] - before["commits"], counts["held"] - before["held"])

    register("bench.retrain")  # the first registration of a process creates experiments etc.: not counted
    print(json.dumps({"ready": dfp_ray.__file__}), flush=True)
    n = 0
    for line in sys.stdin:
        if line.strip() != "round":
            break
        new = register(f"bench.new.{n}")
        again = register("bench.retrain")
        n += 1
        print(json.dumps({"new": new, "retrain": again}), flush=True)
    import sqlite3

    with sqlite3.connect(store / "mlflow.db") as conn:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    print(json.dumps({"journal_mode": mode}), flush=True)
    return 0


def _start(label: str, pythonpath: str, work: Path, epochs: int, wal: bool = True) -> subprocess.Popen:
    store = work / label
    store.mkdir()
    env = {**os.environ, "PYTHONPATH": pythonpath, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    cmd = [sys.executable, __file__, "--worker", str(store), "--epochs", str(epochs)] + ([] if wal else ["--no-wal"])
    proc = subprocess.Popen(cmd,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=work)
    ready = json.loads(proc.stdout.readline() or "{}")
    if "ready" not in ready:
        raise SystemExit(f"{label} worker failed to start")
    print(f"{label}: dfp_ray from {ready['ready']}", flush=True)
    return proc


def _base_tree(ref: str, dest: Path) -> Path | None:
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "dfp_ray"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"base {ref} not measured: {getattr(exc, 'stderr', b'') or exc}")
        return None
    dest.mkdir()
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=40, help="length of the training curves (default 40)")
    ap.add_argument("--base", default=BASE, help=f"git commit to compare with (default {BASE}); '' for none")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--no-wal", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(Path(args.worker), args.epochs, not args.no_wal)
    print(f"load average before: {open('/proc/loadavg').read().strip()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="dfp_bench_register_"))
    procs: dict[str, subprocess.Popen] = {}
    results: dict[str, dict[str, list]] = {}
    modes: dict[str, str] = {}
    try:
        procs["this"] = _start("this", str(ROOT), work, args.epochs)
        procs["no-wal"] = _start("no-wal", str(ROOT), work, args.epochs, wal=False)
        base = _base_tree(args.base, work / "base-src") if args.base else None
        if base is not None:
            procs["base"] = _start("base", str(base), work, args.epochs)
        results = {label: {"new": [], "retrain": []} for label in procs}
        for _ in range(args.rounds):
            for label, proc in procs.items():
                proc.stdin.write("round\n")
                proc.stdin.flush()
                got = json.loads(proc.stdout.readline())
                for kind in ("new", "retrain"):
                    results[label][kind].append(got[kind])
        for label, proc in procs.items():
            proc.stdin.write("end\n")
            proc.stdin.flush()
            modes[label] = json.loads(proc.stdout.readline())["journal_mode"]
            proc.wait(timeout=60)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nregister into embedded sqlite, {args.rounds} interleaved rounds, {args.epochs}-epoch curves "
          f"(base = {args.base or '-'}); ms")
    print(f"{'worker':<8}{'kind':<9}{'p50':>8}{'p95':>8}{'lock p50':>10}{'SQL stmts':>11}{'commits':>9}  journal")
    p50: dict[tuple[str, str], float] = {}
    for label, kinds in results.items():
        for kind, rows in kinds.items():
            ms = [1000 * r[0] for r in rows]
            p50[label, kind] = statistics.median(ms)
            print(f"{label:<8}{kind:<9}{p50[label, kind]:>8.1f}{_pct(ms, 95):>8.1f}"
                  f"{statistics.median(1000 * r[3] for r in rows):>10.1f}"
                  f"{statistics.median(r[1] for r in rows):>11.0f}{statistics.median(r[2] for r in rows):>9.0f}"
                  f"  {modes.get(label, '?')}")
    if "base" in results:
        for kind in ("new", "retrain"):
            print(f"p50 this/base, {kind}: {p50['this', kind] / p50['base', kind]:.2f}x; "
                  f"no-wal/base {p50['no-wal', kind] / p50['base', kind]:.2f}x")
    print(f"load average after: {open('/proc/loadavg').read().strip()} (2 cores: above 2, figures are noisy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
