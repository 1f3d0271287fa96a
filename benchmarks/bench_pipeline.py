"""End-to-end pipeline benchmark: raw JSON files -> detections file, on a warm Ray pipeline.

Prints, for a few data sizes (users x days): training wall time (payload, generic +
individual models, registered in the embedded sqlite MLflow) and inference throughput in
events/s end to end (glob expansion, JSON parsing, schema mapping, counters, scoring,
writing). Ray start-up is excluded (the pipeline is warm), as are data generation and the
first-load cache (the load cache is disabled so every run parses JSON).

Targets on the 2-core reference machine: inference >= 30,000 events/s; training of the
example-size Duo set (20 users, 29 days) in less than Morpheus's published 6.2 s (GPU).

    python benchmarks/bench_pipeline.py [--sizes 20x31,100x31,1000x31] [--source duo]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

MORPHEUS_GPU_TRAIN_S = {"duo": 6.2, "azure": 7.9}
MORPHEUS_GPU_INFER_S = {"duo": 0.9, "azure": 1.6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20x31,100x31,1000x31", help="users x days, comma-separated")
    ap.add_argument("--source", default="duo", choices=["duo", "azure"])
    ap.add_argument("--events-per-user-per-day", type=float, default=None)
    ap.add_argument("--set", action="append", dest="overrides", metavar="KEY=VALUE",
                    help="config override, e.g. --set autoencoder.precision=bf16 (repeatable)")
    ap.add_argument("--repeat-infer", type=int, default=3, help="inference repetitions (best is reported)")
    args = ap.parse_args()

    import ray

    from dfp_ray.config import load_config, overrides_from_strings
    from dfp_ray.datagen import DatagenConfig, generate
    from dfp_ray.runner import Pipeline, init_ray, run

    rows = []
    for size in args.sizes.split(","):
        users, days = (int(x) for x in size.lower().split("x"))
        work = Path(tempfile.mkdtemp(prefix="dfp_bench_"))
        # A fresh Ray session per size, so one size's leftovers never slow the next.
        t0 = time.perf_counter()
        init_ray(None)
        print(f"Ray start: {time.perf_counter() - t0:.1f} s (excluded)", flush=True)
        try:
            kw = {"out": str(work / "data"), "sources": [args.source], "users": users,
                  "train_days": days - 2, "infer_days": 2, "seed": 11}
            if args.events_per_user_per_day:
                kw["events_per_user_per_day"] = args.events_per_user_per_day
            generate(DatagenConfig(**kw), progress=False)
            cfg = load_config(None, {"source": args.source, "state_dir": str(work / "state"),
                                     "output.directory": str(work / "out"), "cache_loaded_files": False,
                                     **overrides_from_strings(args.overrides)})
            pipe = Pipeline(cfg)
            msgs = work / "data" / "control_messages"
            train = run(cfg, [str(msgs / f"{args.source}_payload_training.json")], pipeline=pipe, progress=False)
            best = None
            for _ in range(args.repeat_infer):
                infer = run(cfg, [str(msgs / f"{args.source}_payload_inference.json")], pipeline=pipe,
                            progress=False)
                if best is None or infer.seconds < best.seconds:
                    best = infer
            pipe.shutdown()
            rows.append({
                "users": users, "days": days, "train_rows": train.rows, "train_s": round(train.seconds, 2),
                "models": train.users_trained, "infer_events": best.rows_scored,
                "infer_s": round(best.seconds, 3), "events_per_s": round(best.rows_scored / best.seconds),
                "detections": best.detections,
            })
            print(json.dumps(rows[-1]), flush=True)
        finally:
            ray.shutdown()
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'users':>6} {'days':>5} {'train rows':>10} {'models':>7} {'train s':>8} "
          f"{'infer events':>12} {'infer s':>8} {'events/s':>9}")
    for r in rows:
        print(f"{r['users']:>6} {r['days']:>5} {r['train_rows']:>10} {r['models']:>7} {r['train_s']:>8} "
              f"{r['infer_events']:>12} {r['infer_s']:>8} {r['events_per_s']:>9}")
    ref = MORPHEUS_GPU_TRAIN_S[args.source]
    first = rows[0]
    print(f"\ntraining, {first['users']} users: {first['train_s']} s vs Morpheus GPU {ref} s "
          f"(ratio {ref / first['train_s']:.2f}x; target: < {ref} s)")
    print(f"inference, best size: {max(r['events_per_s'] for r in rows):,} events/s (target >= 30,000)")


if __name__ == "__main__":
    main()
