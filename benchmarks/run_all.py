"""Run every benchmark in this folder and print their figures (`make bench`).

Benchmarks are scripts, never timed tests: each prints its own table. The autoencoder
benchmark runs in `.venv-bench` (it needs dfencoder, which must not enter the main venv);
the others run with the interpreter that runs this script.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# (script, needs the dfencoder environment)
BENCHMARKS = [
    ("bench_autoencoder.py", True),
    ("bench_pipeline.py", False),
    ("bench_datagen.py", False),
    ("bench_fingerprint.py", False),
    ("bench_serve_fingerprint.py", False),
    ("bench_serve_dfp.py", False),
    ("bench_kafka.py", False),
    ("bench_quality.py", False),
    ("bench_retrain.py", False),
    ("bench_stream.py", False),
    ("bench_registry_db.py", False),
    ("bench_register.py", False),
    ("bench_pool_train.py", False),
]


def main(argv: list[str]) -> int:
    only = set(argv)
    failed = []
    for script, needs_bench_env in BENCHMARKS:
        if only and script.removesuffix(".py").removeprefix("bench_") not in only and script not in only:
            continue
        path = HERE / script
        if not path.exists():
            print(f"== {script}: not present, skipped")
            continue
        python = sys.executable
        if needs_bench_env:
            subprocess.run(["bash", str(HERE / "bench_env.sh")], check=True, cwd=ROOT)
            python = str(ROOT / ".venv-bench" / "bin" / "python")
        print(f"\n== {script} ({python})", flush=True)
        start = time.perf_counter()
        rc = subprocess.call([python, str(path)], cwd=ROOT)
        print(f"== {script}: exit {rc} in {time.perf_counter() - start:.0f} s", flush=True)
        if rc:
            failed.append(script)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
