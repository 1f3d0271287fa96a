"""End-to-end pipeline benchmark: raw JSON files -> detections file, on a warm Ray pipeline.

Two parts, each on data from `dfp-ray datagen` and the embedded sqlite MLflow:

1. Growth table, for a few sizes (users x days; the last 2 days are inference): training wall
   time (payload, generic + individual models, registered) and inference events/s. The first
   size is Morpheus's example size, compared with its published GPU figures (training 6.2 s,
   inference 0.9 s for Duo).
2. Inference throughput on a larger inference set (users x inference days x events per user
   per day), where per-message fixed costs do not dominate. Its models are trained with
   ``autoencoder.epochs=2`` to keep the run short: scoring cost does not depend on epochs.
   Reported cold (first run: every model is read from MLflow) and warm (best of the repeats:
   models cached in the actors, the state a long-running pipeline is in).

Ray start-up and data generation are excluded (the pipeline is warm); the load cache is
disabled, so every run reads and parses the JSON files. Per-stage seconds come from the
router (load = read + parse + map; infer = split, score, detections written and fsync'd).

    python benchmarks/bench_pipeline.py [--sizes 20x31,100x31,1000x31] [--throughput 100x30x20]
                                        [--source duo] [--set autoencoder.precision=bf16]
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
TARGET_EVENTS_PER_S = 30_000


def _run_size(args, work: Path, *, users: int, train_days: int, infer_days: int, events: float | None,
              extra: dict, repeat: int) -> dict:
    from dfp_ray.config import load_config, overrides_from_strings
    from dfp_ray.runner import Pipeline, run
    from dfp_ray.tools.datagen import DatagenConfig, generate

    kw = {"out": str(work / "data"), "sources": [args.source], "users": users,
          "train_days": train_days, "infer_days": infer_days, "seed": 11}
    if events:
        kw["events_per_user_per_day"] = events
    generate(DatagenConfig(**kw), progress=False)
    cfg = load_config(None, {"source": args.source, "state_dir": str(work / "state"),
                             "output.directory": str(work / "out"), "cache_loaded_files": False,
                             "input.data_roots": [str(work)], **extra, **overrides_from_strings(args.overrides)})
    pipe = Pipeline(cfg)
    msgs = work / "data" / "control_messages"
    try:
        train = run(cfg, [str(msgs / f"{args.source}_payload_training.json")], pipeline=pipe, progress=False)
        runs = [run(cfg, [str(msgs / f"{args.source}_payload_inference.json")], pipeline=pipe, progress=False)
                for _ in range(repeat)]
    finally:
        pipe.shutdown()
    for summary in (train, *runs):  # a figure of a rejected message would be a figure of nothing
        if not summary.ok:
            raise SystemExit(f"bench_pipeline: a message was rejected: {summary.rejections}")
    cold, best = runs[0], min(runs, key=lambda r: r.seconds)
    stages = best.messages_detail[0].stage_seconds
    return {
        "users": users, "days": train_days + infer_days, "train_rows": train.rows,
        "train_s": round(train.seconds, 2), "models": train.users_trained,
        "train_load_s": round(train.messages_detail[0].stage_seconds.load, 2),
        "infer_events": best.rows_scored, "infer_cold_s": round(cold.seconds, 3),
        "infer_s": round(best.seconds, 3), "events_per_s": round(best.rows_scored / best.seconds),
        "cold_events_per_s": round(cold.rows_scored / cold.seconds),
        "infer_load_s": round(stages.load, 3), "infer_score_s": round(stages.infer, 3),
        "detections": best.detections,
    }


def _fresh_session(fn):
    """A fresh Ray session per size, so one size's leftovers never slow the next."""
    import ray

    from dfp_ray.runner import init_ray

    work = Path(tempfile.mkdtemp(prefix="dfp_bench_"))
    t0 = time.perf_counter()
    init_ray(None)
    print(f"Ray start: {time.perf_counter() - t0:.1f} s (excluded)", flush=True)
    try:
        row = fn(work)
        print(json.dumps(row), flush=True)
        return row
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20x31,100x31,1000x31",
                    help="growth table: users x days (last 2 days inference), comma-separated; '' skips it")
    ap.add_argument("--throughput", default="100x30x20",
                    help="throughput set: users x inference days x events per user per day; '' skips it")
    ap.add_argument("--source", default="duo", choices=["duo", "azure"])
    ap.add_argument("--set", action="append", dest="overrides", metavar="KEY=VALUE",
                    help="config override, e.g. --set autoencoder.precision=bf16 (repeatable)")
    ap.add_argument("--repeat-infer", type=int, default=3, help="inference repetitions (best is reported)")
    args = ap.parse_args()

    rows = []
    for size in filter(None, args.sizes.split(",")):
        users, days = (int(x) for x in size.lower().split("x"))
        rows.append(_fresh_session(lambda work, u=users, d=days: _run_size(
            args, work, users=u, train_days=d - 2, infer_days=2, events=None, extra={},
            repeat=args.repeat_infer)))
    tput = None
    if args.throughput:
        users, infer_days, events = args.throughput.lower().split("x")
        tput = _fresh_session(lambda work: _run_size(
            args, work, users=int(users), train_days=7, infer_days=int(infer_days), events=float(events),
            extra={"autoencoder.epochs": 2}, repeat=args.repeat_infer))

    if rows:
        print(f"\n{'users':>6} {'days':>5} {'train rows':>10} {'models':>7} {'train s':>8} {'(load s)':>9} "
              f"{'infer events':>12} {'infer s':>8} {'events/s':>9}")
        for r in rows:
            print(f"{r['users']:>6} {r['days']:>5} {r['train_rows']:>10} {r['models']:>7} {r['train_s']:>8} "
                  f"{r['train_load_s']:>9} {r['infer_events']:>12} {r['infer_s']:>8} {r['events_per_s']:>9}")
        first = rows[0]
        ref_t, ref_i = MORPHEUS_GPU_TRAIN_S[args.source], MORPHEUS_GPU_INFER_S[args.source]
        print(f"\ntraining, {first['users']} users: {first['train_s']} s vs Morpheus GPU {ref_t} s "
              f"(ratio {ref_t / first['train_s']:.2f}x; target: < {ref_t} s)")
        print(f"inference, {first['users']} users: {first['infer_s']} s vs Morpheus GPU {ref_i} s "
              f"(ratio {ref_i / first['infer_s']:.2f}x)")
    if tput:
        print(f"\nthroughput set: {tput['users']} users, {tput['infer_events']:,} inference events, "
              f"{tput['models']} models")
        print(f"  warm: {tput['infer_s']} s = {tput['events_per_s']:,} events/s "
              f"(load {tput['infer_load_s']} s, score + write {tput['infer_score_s']} s); "
              f"target >= {TARGET_EVENTS_PER_S:,} ({tput['events_per_s'] / TARGET_EVENTS_PER_S:.2f}x of it)")
        print(f"  cold (models read from MLflow): {tput['infer_cold_s']} s = {tput['cold_events_per_s']:,} events/s")


if __name__ == "__main__":
    main()
