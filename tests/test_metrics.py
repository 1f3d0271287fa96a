"""dfp_ray's metrics as a person sees them: scraped from Ray's Prometheus endpoint after a run.

Ray is started with a metrics export port (what ``ray start --metrics-export-port`` gives a
cluster) and a 1 s report interval; a small pipeline trains, scores, and has one message
rejected; the counters on the scraped Prometheus text must then equal what the run summaries
say. Ray pushes metrics to its agent every report interval, so the test polls the endpoint
(bounded) until the counters settle.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator

import pandas as pd
import pytest

from dfp_ray import metrics

try:
    from tests.ports import free_port
except ImportError:
    from ports import free_port

pytestmark = pytest.mark.slow

SCRAPE_TIMEOUT_S = 90
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text format -> (name, labels, value) samples."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match:
            labels = dict(_LABEL.findall(match.group(2) or ""))
            out.append((match.group(1), labels, float(match.group(3))))
    return out


class Scrape:
    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.samples: list[tuple[str, dict[str, str], float]] = []

    def refresh(self) -> Scrape:
        with urllib.request.urlopen(self.url, timeout=10) as resp:
            self.samples = parse(resp.read().decode())
        return self

    def total(self, name: str, **labels: str) -> float:
        """Sum over every series (workers, nodes) of ``name`` whose labels include ``labels``."""
        return sum(v for n, lab, v in self.samples
                   if n == name and all(lab.get(k) == want for k, want in labels.items()))

    def counter(self, metric: str, **labels: str) -> float:
        return self.total(counter_name(metric), **labels)


def counter_name(metric: str) -> str:
    """The scraped name of a counter of dfp_ray.metrics (Ray adds ``ray_``; names end in ``_total``)."""
    spec = metrics.METRICS[metric]
    assert spec.kind == "counter"
    return spec.prometheus_name


def test_recording_outside_ray_is_a_no_op():
    """Controllers run without Ray too (notebooks, Ray-free tests): recording must neither fail
    nor create Ray metric objects there."""
    import ray

    if ray.is_initialized():  # pragma: no cover - another module left Ray running in this process
        pytest.skip("Ray is running in this process")
    before = set(metrics._instances)
    metrics.record("dfp_messages_total", 1, source="duo", kind="training", outcome="processed")
    with metrics.in_flight("router", "message"), metrics.registry_call("latest"):
        pass
    assert set(metrics._instances) == before


@pytest.fixture(scope="module")
def ray_with_metrics() -> Iterator[int]:
    import ray

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _metrics_export_port=port, _system_config={"metrics_report_interval_ms": 1000})
    yield port
    ray.shutdown()


def test_scraped_counters_match_the_run_summaries(ray_with_metrics, tmp_path):
    from dfp_ray.config import load_config
    from dfp_ray.runner import run
    from dfp_ray.tools.datagen import DatagenConfig, generate

    data = tmp_path / "data"
    generate(DatagenConfig(out=str(data), sources=["duo"], users=3, train_days=4, infer_days=1,
                           events_per_user_per_day=8, seed=3), progress=False)
    cfg = load_config(None, {
        "source": "duo", "state_dir": str(tmp_path / "state"), "output.directory": str(tmp_path / "out"),
        "output.write_all_scores": True, "min_train_rows": 5, "ray.num_user_actors": 2,
        "input.data_roots": [str(data)], "cache_loaded_files": False,
        "autoencoder.encoder_layers": [16], "autoencoder.decoder_layers": [16], "autoencoder.epochs": 2,
    })
    msgs = data / "control_messages"
    outside = tmp_path / "outside.json"  # a message reading a file outside the data root: rejected
    outside.write_text(json.dumps({"inputs": [{"tasks": [
        {"type": "load", "properties": {"files": [str(tmp_path / "elsewhere" / "*.json")]}},
        {"type": "inference", "properties": {}}], "metadata": {"data_type": "payload"}}]}))
    # training, then inference on a fresh pool (as a new run would be): the inference actors'
    # caches are cold, so every user's model is looked up and loaded from the registry
    train = run(cfg, [str(msgs / "duo_payload_training.json")], progress=False)
    infer = run(cfg, [str(msgs / "duo_payload_inference.json"), str(outside)], progress=False)
    assert train.ok and infer.rejected == 1 and infer.rows_scored > 0, (train.rejections, infer.rejections)
    runs = [train, infer]

    expected = {
        ("dfp_messages_total", (("outcome", "processed"),)): sum(r.messages - r.rejected for r in runs),
        ("dfp_messages_total", (("outcome", "rejected"),)): sum(r.rejected for r in runs),
        ("dfp_messages_total", (("kind", "training"),)): 1,
        ("dfp_files_loaded_total", ()): sum(r.files for r in runs),
        ("dfp_rows_loaded_total", ()): sum(r.rows for r in runs),
        ("dfp_events_scored_total", ()): sum(r.rows_scored for r in runs),
        ("dfp_detections_total", ()): sum(r.detections for r in runs),
        ("dfp_scores_written_total", ()): sum(r.rows_scored for r in runs),
        ("dfp_models_trained_total", ()): sum(r.users_trained for r in runs),
        ("dfp_models_trained_total", (("generic", "true"),)): 1,
    }
    scrape = Scrape(ray_with_metrics)
    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    while True:
        got = {key: scrape.refresh().counter(key[0], source="duo", **dict(key[1])) for key in expected}
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert got == expected, {k: (got[k], v) for k, v in expected.items() if got[k] != v}

    # the files the run wrote agree (the sink counts rows it durably wrote, once each)
    scores = pd.read_csv(infer.scores_path)
    assert len(scores) == scrape.counter("dfp_scores_written_total")

    # training: one histogram observation per model, rows summed over models
    trained = [t for r in runs for m in r.messages_detail for t in m.trained]
    assert scrape.total("ray_dfp_training_rows_count", source="duo") == len(trained)
    assert scrape.counter("dfp_training_rows_total", source="duo") == sum(t.rows for t in trained)
    assert scrape.counter("dfp_training_seconds_total") == pytest.approx(sum(t.fit_seconds for t in trained))
    assert scrape.total("ray_dfp_training_seconds_count", generic="true") == 1
    # registry latency: each registration, and the cold inference's bulk lookups and model loads
    scored_users = {u.user for m in infer.messages_detail for u in m.inferred if not u.error}
    loads = scrape.counter("dfp_model_cache_loads_total")
    assert scrape.total("ray_dfp_registry_call_seconds_count", op="register") == len(trained)
    assert scrape.total("ray_dfp_registry_call_seconds_count", op="load") == loads >= len(scored_users) == 3
    assert scrape.total("ray_dfp_registry_call_seconds_count", op="latest_many") >= 1
    assert scrape.counter("dfp_model_cache_lookups_total", result="miss") >= len(scored_users)
    assert scrape.counter("dfp_model_cache_lookups_total", result="hit") >= len(scored_users)  # after the prefetch
    # nothing left in flight once the run returned (the training run's actors, gone, no longer report)
    in_flight = [(lab, v) for n, lab, v in scrape.samples if n == "ray_dfp_in_flight"]
    assert in_flight and all(v == 0 for _, v in in_flight), in_flight
    assert {lab["work"] for lab, _ in in_flight} >= {"message", "load", "infer"}


def test_every_declared_metric_has_a_grafana_panel_and_the_file_is_current():
    """cluster/grafana/dfp_ray_dashboard.json is generated from dfp_ray.metrics (one source of truth)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "cluster" / "grafana" / "dfp_ray_dashboard.json"
    committed = json.loads(path.read_text())
    assert committed == metrics.grafana_dashboard(), (
        "the dashboard is stale: python -m dfp_ray.metrics --grafana > cluster/grafana/dfp_ray_dashboard.json")
    exprs = " ".join(t["expr"] for p in committed["panels"] for t in p["targets"])
    for spec in metrics.METRICS.values():
        assert spec.prometheus_name in exprs, spec.name
