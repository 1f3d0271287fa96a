"""Time `dfp-ray datagen` at scale: 1,000 users x 30 days (both sources) by default.

Prints wall time, records written, records/s, bytes written and the process's peak resident
memory (ru_maxrss), which must stay bounded: generation goes one UTC day at a time.

    .venv/bin/python benchmarks/bench_datagen.py
    .venv/bin/python benchmarks/bench_datagen.py --users 200 --days 10 --keep /tmp/big
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfp_ray.tools.datagen import DatagenConfig, generate  # noqa: E402


def _peak_rss_mib() -> float:
    # Linux reports kilobytes, macOS bytes.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def _folder_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1000, help="users per source (default 1000)")
    ap.add_argument("--days", type=int, default=30, help="total days; the last 2 are inference (default 30)")
    ap.add_argument("--events-per-user-per-day", type=float, default=5.0, help="default 5")
    ap.add_argument("--sources", default="duo,azure", help="default duo,azure")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--keep", default=None, help="write here and keep the data (default: a temporary folder)")
    ap.add_argument("--progress", action="store_true", help="show the progress bar")
    args = ap.parse_args(argv)

    out = args.keep or tempfile.mkdtemp(prefix="dfp-datagen-bench-")
    infer = min(2, args.days - 1)
    config = DatagenConfig(
        out=out,
        users=args.users,
        train_days=args.days - infer,
        infer_days=infer,
        events_per_user_per_day=args.events_per_user_per_day,
        sources=[s.strip() for s in args.sources.split(",") if s.strip()],
        seed=args.seed,
    )
    rss_before = _peak_rss_mib()
    t0 = time.perf_counter()
    try:
        summary = generate(config, overwrite=True, progress=args.progress)
        wall = time.perf_counter() - t0
        size = _folder_bytes(out)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    records = summary.total_records
    print(
        f"datagen {args.users} users x {args.days} days, sources={','.join(config.sources)}, "
        f"cpus={os.cpu_count()}\n"
        f"  wall {wall:.1f} s, {records:,} records, {records / wall:,.0f} records/s, "
        f"{size / 2**20:,.0f} MiB written\n"
        f"  peak RSS {_peak_rss_mib():,.0f} MiB (after imports: {rss_before:,.0f} MiB)"
    )
    for name, s in summary.sources.items():
        print(
            f"  {name}: {s.files['training'] + s.files['inference']} files, anomalous events {s.anomalous_events}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
