"""The quality bar, measured through the real pipeline at the default settings, on two generators.

- the default generator (`dfp-ray datagen`; Duo here, Azure in benchmarks/bench_quality.py):
  precision >= 0.9, recall >= 0.9, false-positive rate <= 1% (the project's original bar);
- the independent ``habits`` family (other people, vocabularies and subtle single-feature
  attacks; Duo): false-positive rate <= 1%, precision >= 0.85, recall >= 0.9, and for every
  attack kind AUROC >= 0.97 of ``anomaly_score`` against all normal events.

docs/scoring.md holds the full tables (benchmarks/bench_quality.py).
"""

from __future__ import annotations

import pandas as pd
import pytest

from dfp_ray.config import load_config
from dfp_ray.runner import Pipeline, run
from dfp_ray.tools.datagen import DatagenConfig, generate
from dfp_ray.tools.evaluation import (
    evaluate,
    format_evaluation,
    load_ground_truth,
    load_scores,
    meets_quality_bar,
)
from dfp_ray.tools.quality import auroc

pytestmark = pytest.mark.slow


def _run_pipeline(tmp_path, source: str):
    cfg = load_config(None, {"source": source, "state_dir": str(tmp_path / "state"),
                             "output.directory": str(tmp_path / "out"), "output.write_all_scores": True,
                             "ray.message_timeout_s": 900, "input.data_roots": [str(tmp_path)]})
    pipe = Pipeline(cfg)
    msgs = tmp_path / "data" / "control_messages"
    train = run(cfg, [str(msgs / f"{source}_payload_training.json")], pipeline=pipe, progress=False)
    infer = run(cfg, [str(msgs / f"{source}_payload_inference.json")], pipeline=pipe, progress=False)
    pipe.shutdown()
    assert train.ok and infer.ok
    return load_scores(infer.scores_path)


# Azure on the default generator is measured by benchmarks/bench_quality.py (set default-azure):
# its 20-user run at the default model size costs ~3 minutes of the suite on 2 cores.
@pytest.mark.parametrize("source", ["duo"])
def test_default_data_meets_the_quality_bar(ray_session, tmp_path, source):
    generate(DatagenConfig(out=str(tmp_path / "data"), sources=[source]), progress=False)  # 20 users, 29 + 2 days
    scores = _run_pipeline(tmp_path, source)
    result = evaluate(scores, load_ground_truth(tmp_path / "data" / source / "ground_truth.csv"),
                      threshold=1.0, score_column="anomaly_score")
    print(format_evaluation(result))
    ok, reasons = meets_quality_bar(result)
    assert ok, reasons
    assert result.anomalous >= 20  # enough labelled events for the figures to mean something


def test_habits_family_meets_the_quality_bar(ray_session, tmp_path):
    from dfp_ray.tools.scenarios import HabitsConfig
    from dfp_ray.tools.scenarios import generate as generate_habits

    generate_habits(HabitsConfig(out=str(tmp_path / "data"), sources=["duo"], users=40, attack_fraction=0.5, seed=11))
    scores = _run_pipeline(tmp_path, "duo")
    truth = load_ground_truth(tmp_path / "data" / "duo" / "ground_truth.csv")
    result = evaluate(scores, truth, threshold=1.0, score_column="anomaly_score")
    print(format_evaluation(result))
    ok, reasons = meets_quality_bar(result, min_precision=0.85, min_recall=0.9, max_fpr=0.01)
    assert ok, reasons
    kind = scores["event_id"].map(truth.set_index("event_id")["kind"]).fillna("")
    normal = scores.loc[kind == "", "anomaly_score"]
    per_kind = {k: auroc(scores.loc[kind == k, "anomaly_score"], normal) for k in sorted(set(kind) - {""})}
    print(per_kind)
    assert len(per_kind) == 5 and min(per_kind.values()) >= 0.97, per_kind
    # every detection names its drivers
    detected = scores[scores["anomaly_score"] > 1]
    assert len(detected) and (detected["driver_1"] != "").all() and detected["explanation"].str.contains("expected").all()
    assert pd.api.types.is_float_dtype(detected["driver_1_z"])
