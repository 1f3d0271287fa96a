"""The quality bar, measured: default generated Duo and Azure sets through the real pipeline.

Event-level precision >= 0.9 and recall >= 0.9 for the injected anomalies at the default
threshold, and a false-positive rate on normal inference events <= 1%, with the default
autoencoder hyper-parameters (Morpheus's).
"""

from __future__ import annotations

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

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("source", ["duo", "azure"])
def test_default_data_meets_the_quality_bar(ray_session, tmp_path, source):
    generate(DatagenConfig(out=str(tmp_path / "data"), sources=[source]), progress=False)  # 20 users, 29 + 2 days
    cfg = load_config(None, {"source": source, "state_dir": str(tmp_path / "state"),
                             "output.directory": str(tmp_path / "out"), "output.write_all_scores": True,
                             "ray.message_timeout_s": 600, "input.data_roots": [str(tmp_path)]})
    pipe = Pipeline(cfg)
    msgs = tmp_path / "data" / "control_messages"
    train = run(cfg, [str(msgs / f"{source}_payload_training.json")], pipeline=pipe, progress=False)
    infer = run(cfg, [str(msgs / f"{source}_payload_inference.json")], pipeline=pipe, progress=False)
    pipe.shutdown()
    assert train.ok and infer.ok
    result = evaluate(load_scores(infer.scores_path), load_ground_truth(tmp_path / "data" / source / "ground_truth.csv"))
    print(format_evaluation(result))
    ok, reasons = meets_quality_bar(result)
    assert ok, reasons
    assert result.anomalous >= 20  # enough labelled events for the figures to mean something
