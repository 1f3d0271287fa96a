"""One user actor's training work, this tree against an older one, in one run.

What a pool actor of the pipeline spends per user when a training message reaches it (data
prep, vocabularies and encoding, the grouped fits, MLflow registration into the embedded
sqlite store), without Ray around it: :meth:`dfp_ray.controllers.user.UserController.train_parts`
on the individual users of a `dfp-ray datagen` set, one thread, the shipped
``configs/<source>.yaml``. The generic model is not part of it (it trains on its own actor).

Two worker processes, ``this`` (the dfp_ray package of this tree) and ``base`` (the package
as it was at ``--base``, from ``git archive``), take turns on the same generated data, each
warmed up first and each with a fresh store per round, so that load on a shared machine hits
both alike. Prints per round and in all: seconds for the users, ms per user, the share spent
in registration, and this/base; then whether both trees produced the same models (a hash of
every model's weights, vocabularies and loss statistics).

    python benchmarks/bench_pool_train.py [--users 150] [--rounds 2] [--base a1bceca] [--source duo]
"""

from __future__ import annotations

import argparse
import hashlib
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
BASE = "a1bceca"  # the last commit before data prep and vocabularies were batched (issue 15)


def _worker(data: Path, source: str, state: Path) -> int:
    """Read 'round' lines on stdin; train every user of ``data`` into a fresh store; print JSON."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(1)
    import dfp_ray
    from dfp_ray.config import load_config
    from dfp_ray.controllers.user import UserController
    from dfp_ray.tools.quality import load_folder_set

    qset = load_folder_set(source, data, source)
    print(json.dumps({"ready": dfp_ray.__file__}), flush=True)
    n = 0
    for line in sys.stdin:
        if line.strip() != "round":
            break
        store = state / f"round{n}"
        cfg = load_config(ROOT / "configs" / f"{source}.yaml",
                          {"source": source, "state_dir": str(store), "output.directory": str(store / "out")})
        ctl = UserController(cfg, qset.schema, threads=1)
        ctl.warm_up()
        started = time.perf_counter()
        results = list(ctl.train_parts([qset.train]))
        seconds = time.perf_counter() - started
        digest = hashlib.sha256()
        for r in sorted(results, key=lambda r: r.user):
            found = ctl.cache.get(source, r.user) if r.trained else None
            if found is None:
                digest.update(f"{r.user}:{r.reason}".encode())
                continue
            model = found[0]
            for tensor in model.network.state_dict().values():
                digest.update(tensor.detach().float().numpy().tobytes())
            digest.update(json.dumps(model.encoder.to_dict(), sort_keys=True).encode())
            digest.update(json.dumps(model.loss_stats, sort_keys=True, default=str).encode())
        print(json.dumps({
            "seconds": seconds, "users": len(results), "trained": sum(r.trained for r in results),
            "register_seconds": sum(r.register_seconds or 0.0 for r in results),
            "models": digest.hexdigest()[:16],
        }), flush=True)
        shutil.rmtree(store, ignore_errors=True)
        n += 1
    return 0


def _base_tree(ref: str, dest: Path) -> Path | None:
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "dfp_ray"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"base {ref} not measured: {getattr(exc, 'stderr', b'') or exc}")
        return None
    dest.mkdir()
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def _start(label: str, pythonpath: str, work: Path, data: Path, source: str) -> subprocess.Popen:
    state = work / f"state-{label}"
    state.mkdir()
    env = {**os.environ, "PYTHONPATH": pythonpath, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    cmd = [sys.executable, __file__, "--worker", str(data), "--source", source, "--state", str(state)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=work)
    ready = json.loads(proc.stdout.readline() or "{}")
    if "ready" not in ready:
        raise SystemExit(f"{label} worker failed to start")
    print(f"{label}: dfp_ray from {ready['ready']}", flush=True)
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=150, help="users of the generated set (default 150)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per tree (default 2)")
    ap.add_argument("--base", default=BASE, help=f"git commit to compare with (default {BASE}); '' for none")
    ap.add_argument("--source", default="duo", choices=["duo", "azure"])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--state", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(Path(args.worker), args.source, Path(args.state))

    from dfp_ray.tools.datagen import DatagenConfig, generate

    print(f"load average before: {open('/proc/loadavg').read().strip()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="dfp_bench_pool_"))
    procs: dict[str, subprocess.Popen] = {}
    rows: dict[str, list[dict]] = {}
    try:
        data = work / "data"
        generate(DatagenConfig(out=str(data), sources=[args.source], users=args.users, seed=11), progress=False)
        procs["this"] = _start("this", str(ROOT), work, data, args.source)
        base = _base_tree(args.base, work / "base-src") if args.base else None
        if base is not None:
            procs["base"] = _start("base", str(base), work, data, args.source)
        rows = {label: [] for label in procs}
        for i in range(args.rounds):
            for label in (list(procs) if i % 2 == 0 else list(reversed(procs))):
                procs[label].stdin.write("round\n")
                procs[label].stdin.flush()
                got = json.loads(procs[label].stdout.readline())
                rows[label].append(got)
                print(f"round {i + 1} {label}: {got['seconds']:.1f} s for {got['users']} users "
                      f"({got['trained']} trained), registration {got['register_seconds']:.1f} s", flush=True)
        for proc in procs.values():
            proc.stdin.write("end\n")
            proc.stdin.flush()
            proc.wait(timeout=60)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\none pool actor's training, {args.users} {args.source} users, 1 thread, "
          f"{args.rounds} interleaved rounds (base = {args.base or '-'})")
    print(f"{'tree':<6}{'s (median)':>12}{'ms/user':>10}{'registration':>14}  models")
    med: dict[str, float] = {}
    for label, got in rows.items():
        med[label] = statistics.median(g["seconds"] for g in got)
        per_user = 1000 * med[label] / max(1, got[0]["users"])
        reg = statistics.median(g["register_seconds"] / g["seconds"] for g in got)
        print(f"{label:<6}{med[label]:>12.1f}{per_user:>10.0f}{reg:>13.0%}  {got[0]['models']}")
    if "base" in med:
        same = rows["this"][0]["models"] == rows["base"][0]["models"]
        print(f"this/base: {med['this'] / med['base']:.2f}x; same models: {'yes' if same else 'NO'}")
    print(f"load average after: {open('/proc/loadavg').read().strip()} (2 cores: above 2, figures are noisy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
