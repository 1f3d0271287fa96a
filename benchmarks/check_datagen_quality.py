"""Are the injected anomalies detectable, and is normal behaviour quiet? (datagen quality check)

For each seed: generate the default data set (`dfp-ray datagen` options), map raw records with
the real source schemas, train one DFP autoencoder per user on the training window (Morpheus's
default hyper-parameters), score the inference window, and compare ``mean_abs_z > threshold``
with the ground truth. Prints precision, recall, false-positive rate and recall per anomaly kind
per source and seed, and exits 1 when the project's bar (precision >= 0.9, recall >= 0.9,
FPR <= 1%) is missed anywhere.

    .venv/bin/python benchmarks/check_datagen_quality.py                  # seeds 42, 7, 2024
    .venv/bin/python benchmarks/check_datagen_quality.py --seeds 1 --explain

This tunes the generator, not the model: the autoencoder runs with ``AutoencoderParams()``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder  # noqa: E402
from dfp_ray.pipeline.data_prep import frame_from_records  # noqa: E402
from dfp_ray.schemas import load_schema
from dfp_ray.tools.datagen import DatagenConfig, generate  # noqa: E402
from dfp_ray.tools.evaluation import evaluate, meets_quality_bar  # noqa: E402


def load_window(folder: str, schema) -> pd.DataFrame:
    records: list[dict] = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path, encoding="utf-8") as f:
            records.extend(json.load(f))
    frame, report = frame_from_records(records, schema)
    if report.skipped_total:
        raise SystemExit(f"{folder}: the schema skipped records: {report.describe()}")
    return frame


def score_source(out: str, source: str, params: AutoencoderParams) -> pd.DataFrame:
    """Per-user models on training, scores (with features) for every inference event."""
    schema = load_schema(source)
    f = schema.features
    train = load_window(f"{out}/{source}/training", schema)
    infer = load_window(f"{out}/{source}/inference", schema)
    scored = []
    for user, rows in infer.groupby(schema.user_column, sort=True):
        history = train[train[schema.user_column] == user]
        if len(history) < 2:
            raise SystemExit(f"{source}: user {user!r} has {len(history)} training rows; cannot train")
        model = DFPAutoencoder(categorical=f.categorical, numeric=f.numeric, binary=f.binary, params=params)
        model.fit(history)
        result = model.score(rows)
        scored.append(pd.concat([rows, result], axis=1))
    return pd.concat(scored, ignore_index=True)


def explain(
    scores: pd.DataFrame, truth: pd.DataFrame, source: str, threshold: float, features: list[str]
) -> None:
    labelled = scores["event_id"].isin(truth["event_id"])
    detected = scores["mean_abs_z"] > threshold
    kind = scores["event_id"].map(truth.set_index("event_id")["kind"])
    zcols = [f"{c}_z_loss" for c in features]
    for title, mask in (
        ("false positives", detected & ~labelled),
        ("missed anomalies", ~detected & labelled),
    ):
        rows = scores[mask]
        if rows.empty:
            continue
        print(f"  {source} {title}:")
        for i, row in rows.iterrows():
            top = sorted(zip(features, (row[z] for z in zcols), strict=True), key=lambda t: -t[1])[:3]
            values = " ".join(f"{c}={row[c]!r}" for c in features)
            tops = ", ".join(f"{c}:{z:.1f}" for c, z in top)
            print(
                f"    {row['username']} {row['timestamp']} kind={kind.get(i, '') or '-'} "
                f"score={row['mean_abs_z']:.2f} [{tops}] {values}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="42,7,2024", help="comma-separated seeds (default: 42,7,2024)")
    ap.add_argument("--sources", default="duo,azure", help="sources to check (default: duo,azure)")
    ap.add_argument("--users", type=int, default=20, help="users per source (default: 20, as datagen)")
    ap.add_argument(
        "--threshold", type=float, default=2.0, help="detection threshold on mean_abs_z (default 2.0)"
    )
    ap.add_argument("--out", default=None, help="folder for the generated data (default: a temporary folder)")
    ap.add_argument("--explain", action="store_true", help="print every false positive and missed anomaly")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)

    params = AutoencoderParams(num_threads=args.threads)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    ok_all = True
    rows = []
    with tempfile.TemporaryDirectory(prefix="dfp-datagen-quality-") as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            out = os.path.join(args.out or tmp, f"seed{seed}")
            generate(
                DatagenConfig(out=out, users=args.users, sources=sources, seed=seed),
                overwrite=True,
                progress=False,
            )
            for source in sources:
                t0 = time.perf_counter()
                scores = score_source(out, source, params)
                truth = pd.read_csv(f"{out}/{source}/ground_truth.csv", dtype=str)
                result = evaluate(scores, truth, args.threshold, source=source)
                ok, reasons = meets_quality_bar(result)
                ok_all &= ok
                kinds = " ".join(f"{k.kind}={k.recall:.2f}({k.detected}/{k.events})" for k in result.per_kind)
                print(
                    f"seed={seed} {source:5s} precision={result.precision:.3f} recall={result.recall:.3f} "
                    f"fpr={result.false_positive_rate:.4f} (fp={result.fp}/{result.normal} normal, "
                    f"tp={result.tp}/{result.anomalous} anomalous) {'OK' if ok else 'BELOW BAR'} "
                    f"[{time.perf_counter() - t0:.0f} s]\n    recall per kind: {kinds}"
                )
                for r in reasons:
                    print(f"    - {r}")
                if args.explain:
                    s = load_schema(source)
                    feats = s.features.categorical + s.features.binary + s.features.numeric
                    explain(scores, truth, source, args.threshold, feats)
                rows.append(result)
    total_fp = sum(r.fp for r in rows)
    total_normal = sum(r.normal for r in rows)
    total_tp = sum(r.tp for r in rows)
    total_anom = sum(r.anomalous for r in rows)
    print(
        f"overall: precision={total_tp / max(total_tp + total_fp, 1):.3f} recall={total_tp / max(total_anom, 1):.3f} "
        f"fpr={total_fp / max(total_normal, 1):.4f} -> {'bar met' if ok_all else 'bar NOT met'}"
    )
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
