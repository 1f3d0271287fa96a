"""Benchmark: per-user DFP scoring over HTTP (Ray Serve on 127.0.0.1) vs the same library in-process.

Setup: `dfp-ray datagen` Duo logs, a real `dfp-ray run` training (generic + one small model per
user) into a sqlite registry, then Serve with the ``duo`` source on that registry (ingress and
scorer deployments, one CPU each). Records are the inference day's raw Duo records; each pass
over them is moved to a new day, so users' same-day histories stay the size of one day.

Figures, side by side in one run (same machine, same records, same code):

* single-record requests with 1, 8 and 32 concurrent clients: p50 / p99 latency, requests/s;
* 100-record requests with 1, 8 and 32 concurrent clients: records/s (and p50 latency);
* for HTTP through Serve's proxy (``POST /dfp/duo/score``, aiohttp clients in this process),
  for HTTP straight to the ingress replica's own port (Ray Serve's direct ingress,
  ``serve.direct_ingress``: no proxy hop; the same Ray, the same replicas) and
  for the library in-process (``DfpIngress(..., LocalBackend)``: the same mapping, coalescing,
  scoring and answer building, without HTTP, Serve or a second process);
* where the time goes: CPU seconds per scoring call by stage (mapping, data prep + inference,
  answer), in-process, for 1, 100 and 3,200 records.

Targets on a 2-core machine: p50 < 20 ms single record, >= 20,000 records/s batched. Every
loop is bounded (requests and seconds); repeats (``--repeats``) give ranges, because a shared
machine moves single figures a lot. Run: ``python benchmarks/bench_serve_dfp.py [--repeats 2]
[--seconds 4] [--users 8] [--json out.json] [--in-ingress] [--no-direct]``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from serve_helpers import app_config, free_port, start_apps, train_dfp_registry  # noqa: E402

CONCURRENCY = (1, 8, 32)
DAY = 86_400


class Records:
    """An endless, bounded-by-callers supply of the inference day's records, one new day per pass."""

    def __init__(self, base: list[dict]) -> None:
        self.base = base
        self.i = 0
        self.passes = 0

    def take(self, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            if self.i == len(self.base):
                self.i, self.passes = 0, self.passes + 1
            rec = copy.deepcopy(self.base[self.i])
            rec["timestamp"] += (self.passes + 1) * 10 * DAY
            rec["txid"] = f"{rec['txid']}-{self.passes}"
            out.append(rec)
            self.i += 1
        return out


RATE_CAP = 40_000  # records/s the pre-built bodies of one figure can feed for its ``seconds`` (2x the target)


async def drive(call, records: Records, size: int, clients: int, seconds: float, max_requests: int,
                encode=None) -> dict:
    """``clients`` loops, each sending ``size``-record requests back to back, for ``seconds`` (bounded).

    The bodies are built before the clock starts (copied records on a new day, then ``encode``d,
    e.g. to JSON bytes), as a log shipper holds its batches ready: the two shared cores then
    measure the server, not the benchmark's own copying and encoding. At most ``max_requests``
    and ``RATE_CAP`` records/s of bodies exist, so the loop is bounded by both."""
    n = min(max_requests, int(np.ceil(seconds * RATE_CAP / size)) + clients)
    bodies = [records.take(size) for _ in range(n)]
    if encode is not None:
        bodies = [encode(b) for b in bodies]
    bodies.reverse()  # popped from the end: time order
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline and bodies:
            body = bodies.pop()
            t = time.perf_counter()
            await call(body)
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - start
    lat = sorted(latencies)
    return {"requests": len(lat), "seconds": wall, "rps": len(lat) / wall, "records_per_s": len(lat) * size / wall,
            "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))]}


def stage_profile(service, base: list[dict]) -> dict[str, dict[int, dict[str, float]]]:
    """CPU seconds per scoring call by stage, in-process (where the time goes), for the pandas
    path (every step on frames) and the fast path (dfp_ray/serve/dfp_fast.py) side by side, and
    the fast path without the population check (``detection.population_share: 0``: what the
    generic model's second opinion costs)."""
    from dfp_ray.serve.dfp_scorer import LocalScorer, model_id
    from dfp_ray.serve.dfp_scoring import result_records

    out: dict[str, dict[int, dict[str, float]]] = {}
    for path in ("pandas", "fast", "fast, no check"):
        scorer = LocalScorer(service)
        rt = scorer.runtime("duo")
        rt.use_fast = path != "pandas"
        if path == "fast, no check":
            rt.cfg = rt.cfg.model_copy(update={"detection": rt.cfg.detection.model_copy(update={"population_share": 0.0})})
        recs = Records(base)

        async def slots(users, _scorer=scorer):
            return {u: await _scorer.get_slot(model_id("duo", u)) for u in users}

        held = asyncio.run(slots(sorted({r["user"]["name"] for r in base})))
        out[path] = {}
        for size in (1, 100, 3200):
            reps = max(3, min(30, 3000 // size))
            cpu = {"map": 0.0, "prep+inference": 0.0, "answer": 0.0}
            for rep in range(reps + 1):
                batch = recs.take(size)
                c0 = time.process_time()
                mapped, errors = rt.map_records(batch)
                c1 = time.process_time()
                with rt.lock:
                    if isinstance(mapped, pd.DataFrame):
                        res = rt.score(mapped, held)
                    else:
                        fast = rt.score_fast(mapped, held)
                        res = [fast.cols]
                c2 = time.process_time()
                result_records(res, errors, len(batch))
                c3 = time.process_time()
                if rep:  # the first is a warm-up
                    cpu["map"] += c1 - c0
                    cpu["prep+inference"] += c2 - c1
                    cpu["answer"] += c3 - c2
            out[path][size] = {k: 1000 * v / reps for k, v in cpu.items()}
    return out


def run_library(service, base: list[dict], seconds: float, max_requests: int) -> dict:
    from dfp_ray.serve.dfp_ingress import DfpIngress, LocalBackend

    ingress = DfpIngress(service, LocalBackend(service))
    recs = Records(base)

    async def call(body):
        answer = await ingress.score_request("duo", body)
        assert answer["errors"] == 0, answer["results"][0]

    async def all_figures():
        await drive(call, recs, 100, 1, 2.0, 50)  # warm-up: load every user
        return {(size, c): await drive(call, recs, size, c, seconds, max_requests)
                for size in (1, 100) for c in CONCURRENCY}

    return asyncio.run(all_figures())


def run_http(urls: list[str], base: list[dict], seconds: float, max_requests: int) -> dict:
    """HTTP figures; requests go round-robin over ``urls`` (one URL, or each ingress replica's own
    port with direct ingress and several ingress replicas)."""
    import itertools

    import aiohttp
    import orjson

    recs = Records(base)
    turn = itertools.cycle(urls)
    url = urls[0]  # the GET /healthz floor is timed on the first

    async def all_figures():
        conn = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=conn) as session:
            async def call(body):
                async with session.post(f"{next(turn)}/dfp/duo/score", data=body,
                                        headers={"Content-Type": "application/json"},
                                        timeout=aiohttp.ClientTimeout(total=120)) as r:
                    answer = orjson.loads(await r.read())
                    assert r.status == 200 and answer["errors"] == 0, (r.status, str(answer)[:300])

            await drive(call, recs, 100, 1, 2.0, 50, encode=orjson.dumps)
            figures = {(size, c): await drive(call, recs, size, c, seconds, max_requests, encode=orjson.dumps)
                       for size in (1, 100) for c in CONCURRENCY}
            # the floor of the HTTP path: proxy -> ingress -> answer, no scorer call
            times = []
            for _ in range(200):
                t = time.perf_counter()
                async with session.get(f"{url}/healthz") as r:
                    await r.read()
                    assert r.status == 200
                times.append(1000 * (time.perf_counter() - t))
            figures["healthz_p50_ms"] = float(np.median(times))
            return figures

    return asyncio.run(all_figures())


def spread(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(min(values), fmt)}-{format(max(values), fmt)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2, help="runs of every figure (ranges are printed)")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per figure (bounded also by --max-requests)")
    p.add_argument("--max-requests", type=int, default=3000)
    p.add_argument("--users", type=int, default=8, help="users in the generated data (each gets a model)")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--in-ingress", action="store_true",
                   help="deploy with dfp.scorer.in_ingress (the ingress scores itself: no scorer deployment)")
    p.add_argument("--no-direct", action="store_true",
                   help="start Ray without direct ingress (only the proxy path is measured)")
    p.add_argument("--ingress-replicas", type=int, default=1,
                   help="deployment.num_replicas (stateless with the scorer deployment; direct-ingress requests "
                   "go round-robin over their ports)")
    p.add_argument("--scorer-replicas", type=int, default=1,
                   help="dfp.scorer.num_replicas (users spread over them by Serve's model multiplexing)")
    p.add_argument("--grpc-handles", action="store_true",
                   help="direct_ingress.grpc_handles: the ingress calls the scorer over gRPC")
    args = p.parse_args(argv)

    import ray
    from ray import serve

    from dfp_ray.serve.config import DirectIngressConfig

    direct_cfg = {"enabled": not args.no_direct, "grpc_handles": args.grpc_handles}
    if not args.no_direct:
        low = free_port()
        direct_cfg.update(min_port=low, max_port=low + 20)
    os.environ.update(DirectIngressConfig(**direct_cfg).environment())  # read by the processes Ray starts
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    cpus = int(ray.cluster_resources().get("CPU", 2))
    results: dict = {"cpus": cpus, "load_avg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-serve-dfp-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        reg = train_dfp_registry(root, users=args.users, train_days=3, events=12)
        print(f"registry: {args.users} users + generic trained by dfp-ray run in {time.perf_counter() - t:.0f} s; "
              f"{len(reg.inference_records)} inference records", flush=True)
        cfg = app_config(root, "bench", {
            "direct_ingress": direct_cfg,
            "deployment": {"max_ongoing_requests": 64, "num_replicas": args.ingress_replicas,
                           "ray_actor_options": {"num_cpus": min(1.0, cpus / 2) / args.ingress_replicas}},
            "dfp": {"sources": {"duo": {"pipeline": {"state_dir": reg.cfg.state_dir}}}, "refresh_s": 30.0,
                    "scorer": {"max_ongoing_requests": 64, "num_replicas": args.scorer_replicas, "ray_actor_options": {"num_cpus": min(1.0, cpus / 2)},
                               "in_ingress": args.in_ingress}},
        })
        from dfp_ray.serve.config import resolved

        service = resolved(cfg).dfp
        from dfp_ray.serve.dfp_scorer import freeze_heap

        freeze_heap()  # as the replicas do when they start (see its docstring)
        profile = stage_profile(service, reg.inference_records)
        results["stage_cpu_ms"] = profile
        print("\nwhere the time goes (in-process, CPU ms per scoring call; pandas path | fast path | fast path "
              "without the population check):")
        print(f"  {'records':>8} " + " | ".join(f"{'map':>8} {'prep+inference':>15} {'answer':>8} {'per record':>11}"
                                                  for _ in range(3)))
        for size in profile["pandas"]:
            cells = []
            for path in ("pandas", "fast", "fast, no check"):
                st = profile[path][size]
                cells.append(f"{st['map']:>8.1f} {st['prep+inference']:>15.1f} {st['answer']:>8.1f} "
                             f"{sum(st.values()) / size:>10.2f}")
            print(f"  {size:>8} " + " | ".join(cells), flush=True)

        port = free_port()
        app = start_apps(port, {"bench": (cfg, "/")})["bench"]
        paths = {"proxy": [app.url]}
        if not args.no_direct:
            from dfp_ray.serve.deployment import direct_urls

            urls = direct_urls(app.cfg, wait_s=60)
            if not urls:
                raise SystemExit("direct ingress: no replica reported its own port (see docs/serve.md)")
            paths["direct"] = urls
            print(f"direct ingress: the ingress replicas answer on {', '.join(urls)}", flush=True)
        lib_runs: list = []
        http_runs: dict[str, list] = {k: [] for k in paths}
        for rep in range(args.repeats):
            lib_runs.append(run_library(service, reg.inference_records, args.seconds, args.max_requests))
            for name, url in paths.items():
                http_runs[name].append(run_http(url, reg.inference_records, args.seconds, args.max_requests))
            print(f"repeat {rep + 1}/{args.repeats} done (load average {os.getloadavg()[0]:.1f})", flush=True)
        serve.shutdown()
    ray.shutdown()

    scorer = ", scored in the ingress" if args.in_ingress else ""
    print(f"\nper-user DFP scoring, {cpus} CPUs{scorer}; ranges over {args.repeats} repeats "
          f"(load average at start {results['load_avg_start'][0]:.1f}); HTTP through Serve's proxy"
          + (", HTTP straight to the replica (direct ingress)" if "direct" in paths else "") + ", library in-process")
    cols = list(paths) + ["library"]
    print(f"  {'request':>8} {'clients':>7} | " + " | ".join(f"{k + ' p50 ms':>15} {'p99':>5} {'records/s':>13}"
                                                         for k in cols))
    table = []
    for size in (1, 100):
        for c in CONCURRENCY:
            runs = {k: [r[(size, c)] for r in http_runs[k]] for k in paths}
            runs["library"] = [r[(size, c)] for r in lib_runs]
            table.append({"records_per_request": size, "clients": c, **runs})
            print(f"  {size:>8} {c:>7} | " + " | ".join(
                f"{spread([x['p50_ms'] for x in runs[k]], '.1f'):>15} {spread([x['p99_ms'] for x in runs[k]], '.0f'):>5} "
                f"{spread([x['records_per_s'] for x in runs[k]], '.0f'):>13}" for k in cols))
    print()
    for k in paths:
        floor = [r["healthz_p50_ms"] for r in http_runs[k]]
        results[f"healthz_p50_ms_{k}"] = floor
        print(f"HTTP floor ({k}: GET /healthz, no scoring), one client: p50 {spread(floor, '.1f')} ms")
    if "direct" in paths:
        ratio = [d[(100, 32)]["records_per_s"] / p[(100, 32)]["records_per_s"]
                 for d, p in zip(http_runs["direct"], http_runs["proxy"], strict=True)]
        lat = [p[(1, 1)]["p50_ms"] / d[(1, 1)]["p50_ms"] for d, p in zip(http_runs["direct"], http_runs["proxy"],
                                                                         strict=True)]
        print(f"direct / proxy, same run: 100-record records/s at 32 clients x{spread(ratio, '.2f')}; "
              f"single-record p50 {spread(lat, '.2f')}x lower")
    for k in paths:
        single = [r[(1, 1)]["p50_ms"] for r in http_runs[k]]
        batched = [max(r[(100, c)]["records_per_s"] for c in CONCURRENCY) for r in http_runs[k]]
        print(f"targets ({k}): single-record p50 < 20 ms over HTTP: {spread(single, '.1f')} ms "
              f"({'met' if max(single) < 20 else 'missed'}); >= 20,000 records/s batched: {spread(batched, '.0f')} "
              f"({'met' if min(batched) >= 20_000 else 'missed'})")
    results["table"] = table
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
