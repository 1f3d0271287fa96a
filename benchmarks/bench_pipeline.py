"""End-to-end pipeline benchmark: raw JSON files -> detections file, on a warm Ray pipeline.

Two parts, each on generated data (`dfp-ray datagen`; the growth table also on `--family habits` or
`roster`, whose users vary from a few rows to over a thousand) and the embedded sqlite MLflow:

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
                                        [--compare rows:autoencoder.width_rule=rows]
                                        [--source duo] [--set autoencoder.precision=bf16]
                                        [--family habits]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

from dfp_ray.config import overrides_from_strings
from dfp_ray.tools.families import FAMILIES, generate_family

MORPHEUS_GPU_TRAIN_S = {"duo": 6.2, "azure": 7.9}
MORPHEUS_GPU_INFER_S = {"duo": 0.9, "azure": 1.6}
TARGET_EVENTS_PER_S = 30_000


def _run_size(args, work: Path, *, users: int, train_days: int, infer_days: int, events: float | None,
              extra: dict, repeat: int) -> dict:
    from dfp_ray.config import load_config, overrides_from_strings
    from dfp_ray.runner import Pipeline, run

    kw = {"out": str(work / "data"), "sources": [args.source], "users": users,
          "train_days": train_days, "infer_days": infer_days, "seed": 11}
    if events:
        kw["events_per_user_per_day"] = events
    family = "default" if events else args.family  # the throughput set's volume is the default generator's option
    generate_family(family, **kw)
    cfg = load_config(None, {"source": args.source, "state_dir": str(work / "state"),
                             "output.directory": str(work / "out"), "cache_loaded_files": False,
                             "input.data_roots": [str(work)], **overrides_from_strings(args.overrides), **extra})
    pipe = Pipeline(cfg)
    msgs = work / "data" / "control_messages"
    try:
        train = run(cfg, [str(msgs / f"{args.source}_payload_training.json")], pipeline=pipe, progress=False)
        peak_rss_mb = _actor_peak_rss_mb()
        runs = [run(cfg, [str(msgs / f"{args.source}_payload_inference.json")], pipeline=pipe, progress=False)
                for _ in range(repeat)]
    finally:
        pipe.shutdown()
    for summary in (train, *runs):  # a figure of a rejected message would be a figure of nothing
        if not summary.ok:
            raise SystemExit(f"bench_pipeline: a message was rejected: {summary.rejections}")
    cold, best = runs[0], min(runs, key=lambda r: r.seconds)
    stages = best.messages_detail[0].stage_seconds
    trained = [t for m in train.messages_detail for t in m.trained]
    per_user = [t for t in trained if not t.generic]
    fit_ms = sorted(1000 * t.fit_seconds for t in per_user if t.fit_seconds is not None)
    reg_ms = sorted(1000 * t.register_seconds for t in trained if t.register_seconds is not None)
    generic = [t.fit_seconds for t in trained if t.generic and t.fit_seconds is not None]
    return {
        "fit_ms_p50": _round(_pct(fit_ms, 50)), "fit_ms_p95": _round(_pct(fit_ms, 95)),
        "register_ms_p50": _round(_pct(reg_ms, 50)), "generic_s": round(generic[0], 2) if generic else None,
        "peak_rss_mb": peak_rss_mb,
        "users": users, "days": train_days + infer_days, "train_rows": train.rows,
        "train_s": round(train.seconds, 2), "models": train.users_trained,
        "train_load_s": round(train.messages_detail[0].stage_seconds.load, 2),
        "infer_events": best.rows_scored, "infer_cold_s": round(cold.seconds, 3),
        "infer_s": round(best.seconds, 3), "events_per_s": round(best.rows_scored / best.seconds),
        "cold_events_per_s": round(cold.rows_scored / cold.seconds),
        "infer_load_s": round(stages.load, 3), "infer_score_s": round(stages.infer, 3),
        "detections": best.detections,
    }


def _round(value: float) -> int | None:
    """None where nothing was measured (e.g. no per-user fits with train_users=generic)."""
    return None if math.isnan(value) else round(value)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def _actor_peak_rss_mb() -> dict[str, int]:
    """Peak resident memory (VmHWM, MB) of this machine's Ray actor processes, by actor class
    (their process titles are ``ray::<Class>`` or ``ray::<Class>.<method>``; Linux only)."""
    out: dict[str, int] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if not title.startswith("ray::"):
                continue
            status = (proc / "status").read_text()
        except OSError:
            continue
        name = title[5:].split(".")[0].split()[0]
        kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
        out[name] = max(out.get(name, 0), kb // 1024)
    return out


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
    ap.add_argument("--family", default="default", choices=FAMILIES,
                    help="generator of the growth table's data: dfp-ray datagen (default; users alike in "
                    "volume), --family habits or --family roster (heavy-tailed volume: users from a few "
                    "to over a thousand rows). The throughput set always uses the default generator")
    ap.add_argument("--set", action="append", dest="overrides", metavar="KEY=VALUE",
                    help="config override, e.g. --set autoencoder.precision=bf16 (repeatable)")
    ap.add_argument("--repeat-infer", type=int, default=3, help="inference repetitions (best is reported)")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                    help="also run the growth table with these overrides, side by side with the defaults, e.g. "
                    "--compare rows:autoencoder.width_rule=rows (repeatable; applied after --set, so a "
                    "profile's own value wins)")
    args = ap.parse_args()

    profiles: list[tuple[str, dict]] = [("defaults", {})]
    for spec in args.compare:
        name, _, pairs = spec.partition(":")
        profiles.append((name, overrides_from_strings(pairs.split(","))))
    rows = []
    for size in filter(None, args.sizes.split(",")):
        users, days = (int(x) for x in size.lower().split("x"))
        for name, extra in profiles:
            row = _fresh_session(lambda work, u=users, d=days, e=extra: _run_size(
                args, work, users=u, train_days=d - 2, infer_days=2, events=None, extra=e,
                repeat=args.repeat_infer))
            rows.append({"profile": name, **row})
    tput = None
    if args.throughput:
        users, infer_days, events = args.throughput.lower().split("x")
        tput = _fresh_session(lambda work: _run_size(
            args, work, users=int(users), train_days=7, infer_days=int(infer_days), events=float(events),
            extra={"autoencoder.epochs": 2}, repeat=args.repeat_infer))

    if rows:
        print(f"\n{'profile':>9} {'users':>6} {'days':>5} {'train rows':>10} {'models':>7} {'train s':>8} "
              f"{'(load s)':>9} {'fit ms p50/p95':>15} {'reg ms':>7} {'generic s':>9} {'infer events':>12} "
              f"{'infer s':>8} {'events/s':>9}  peak RSS MB per actor class")
        for r in rows:
            fit = f"{r['fit_ms_p50']}/{r['fit_ms_p95']}"
            print(f"{r['profile']:>9} {r['users']:>6} {r['days']:>5} {r['train_rows']:>10} {r['models']:>7} "
                  f"{r['train_s']:>8} {r['train_load_s']:>9} {fit:>15} {r['register_ms_p50']:>7} "
                  f"{r['generic_s']!s:>9} {r['infer_events']:>12} {r['infer_s']:>8} {r['events_per_s']:>9}  "
                  f"{r['peak_rss_mb']}")
        base = {(r["users"], r["days"]): r for r in rows if r["profile"] == "defaults"}
        for r in rows:
            ref = base.get((r["users"], r["days"]))
            if r["profile"] != "defaults" and ref:
                print(f"{r['profile']} vs defaults at {r['users']} users: training {ref['train_s'] / r['train_s']:.2f}x "
                      f"faster ({r['train_s']} s vs {ref['train_s']} s)")
        first = rows[0]  # the defaults at the first size
        if args.family == "default":  # Morpheus's figures are for its example data, like datagen's
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
