"""Retraining cold vs warm-started (``autoencoder.warm_start``, issue 15): cost and quality.

On a `dfp-ray datagen --family habits` set (72 users, 28 training days): every user's model
(and the generic one) is first trained on the training window less its last ``--new-days``
days: the versions in the registry. Then every user is retrained on the whole window twice,
cold (fresh weights, up to ``epochs``) and warm (from that user's previous version, up to
``warm_start_epochs``), both with the generic model retrained on the whole window as the
prior; the two retrained model sets score the inference window. Prints fit seconds (total,
p50 of the users' fits, p50 epochs) side by side, then recall / FPR / AUROC / recall at 1%
FPR of both (the shipped detection rule, as bench_quality).

    PYTHONPATH=$PWD python benchmarks/bench_retrain.py [--source duo] [--users 72] [--seed 42]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]


def shipped_config(source: str):
    from dfp_ray.config import load_config

    path = ROOT / "configs" / f"{source}.yaml"
    return load_config(path if path.exists() else None, {"source": source})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="duo", choices=["duo", "azure"])
    parser.add_argument("--users", type=int, default=72)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--new-days", type=int, default=3, help="days of the training window that are new rows")
    parser.add_argument("--warm-epochs", type=int, default=None, help="warm_start_epochs (default: the params')")
    args = parser.parse_args(argv)

    import logging

    import numpy as np
    import pandas as pd
    import torch

    from dfp_ray.autoencoder import AutoencoderParams
    from dfp_ray.pipeline.split_users import split_by_user
    from dfp_ray.pipeline.training import too_few_rows, train_model, train_models
    from dfp_ray.schemas import load_schema
    from dfp_ray.tools import quality as Q
    from dfp_ray.tools.families import generate_family

    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    started = time.perf_counter()
    cfg = shipped_config(args.source)
    cold_params = AutoencoderParams.model_validate({**cfg.autoencoder.model_dump(), "device": "cpu",
                                                    "num_threads": None, "warm_start": "off"})
    warm_params = cold_params.model_copy(update={"warm_start": "previous", **(
        {"warm_start_epochs": args.warm_epochs} if args.warm_epochs else {})})
    with tempfile.TemporaryDirectory(prefix="dfp_retrain_") as tmp:
        generate_family("habits", out=tmp, sources=[args.source], users=args.users, attack_fraction=0.5,
                        seed=args.seed)
        qset = Q.load_folder_set(f"habits-{args.source}", tmp, args.source, load_schema(args.source))
    s = qset.schema
    times = pd.to_datetime(qset.train[s.time_column], utc=True)
    cutoff = times.max().normalize() - pd.Timedelta(days=args.new_days - 1)
    early = qset.train[(times < cutoff).to_numpy()]
    print(f"habits-{args.source}: {args.users} users, {len(qset.train)} training rows, {len(early)} before "
          f"{cutoff.date()} (the previous versions), {len(qset.train) - len(early)} new; "
          f"epochs {cold_params.epochs}, warm_start_epochs {warm_params.warm_start_epochs}", flush=True)

    def users_of(frame):
        return [(u, f) for u, f in split_by_user(frame, s.user_column) if not too_few_rows(len(f), cfg.min_train_rows)]

    generic_early = train_model(early, s, cold_params)[0]
    todo_early = users_of(early)
    previous = {u: m for (u, _), (m, _, _) in zip(
        todo_early, train_models([f for _, f in todo_early], s, cold_params, prior=generic_early), strict=True)}
    generic = train_model(qset.train, s, cold_params)[0]
    todo = users_of(qset.train)
    results, rows = [], []
    for label, params in (("cold", cold_params), ("warm", warm_params)):
        began = time.perf_counter()
        fitted = train_models([f for _, f in todo], s, params, prior=generic,
                              previous=[previous.get(u) for u, _ in todo])
        wall = time.perf_counter() - began
        reports = [r for _, r, _ in fitted]
        seconds = np.array([r.seconds for r in reports])
        rows.append((label, wall, seconds.sum(), float(np.median(seconds)),
                     float(np.median([r.epochs_run for r in reports])), sum(r.warm_started for r in reports),
                     len(reports)))
        models = Q.TrainedModels(generic=generic, users={u: m for (u, _), (m, _, _) in zip(todo, fitted, strict=True)})
        scored = Q.score_set(qset, models, detection=cfg.detection)
        results.append(Q.measure(scored, qset.truth, score=scored["anomaly_score"].to_numpy(),
                                 detected=(scored["anomaly_score"] > 1).to_numpy(), name=f"habits-{args.source}",
                                 rule=f"{cfg.detection.rule} {label}", rare=qset.rare))
    print("\nretrain   wall s   sum of fit s   p50 fit s   p50 epochs   warm-started")
    for label, wall, total, p50, epochs, warm, n in rows:
        print(f"{label:<8}{wall:>7.1f}{total:>15.1f}{p50:>12.3f}{epochs:>13.0f}{warm:>10d}/{n}")
    print(f"warm/cold: wall {rows[1][1] / rows[0][1]:.2f}x, sum of fit seconds {rows[1][2] / rows[0][2]:.2f}x")
    print("\nQuality of the retrained models on the inference window")
    print(Q.format_table(results))
    print(f"\nbench_retrain: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
