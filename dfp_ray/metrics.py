"""Application metrics on Ray's metrics pipeline: what a person watches while dfp_ray runs.

Every metric dfp_ray exports is declared once, in :data:`METRICS` (name, kind, help text, tag
keys, histogram buckets); the pipeline records them through the small helpers below, one call
per place (the router, the user actors, the sink, the model cache), and the Grafana dashboard
in ``cluster/grafana/`` is generated from the same table (``python -m dfp_ray.metrics
--grafana``), so a renamed metric cannot leave a stale panel behind.

Ray exports them, with its own, from every node's metrics agent in Prometheus text format
(``ray.init(_metrics_export_port=...)`` or ``ray start --metrics-export-port``); Ray prefixes
each name with ``ray_`` (``dfp_messages_total`` is scraped as ``ray_dfp_messages_total``) and
adds tags such as ``SessionName`` and ``NodeAddress``. A histogram's ``_count`` is exact but
Ray 2.60 reports its ``_sum`` from bucket midpoints, so every total that matters (rows,
seconds) is also a counter. Values are pushed to the agent every few
seconds (Ray's ``metrics_report_interval_ms``), so a scrape lags the pipeline by that much.

Tags are bounded on purpose: no metric is labelled per user (100,000 users would be 100,000
series per metric). Per-user figures (training seconds, rows, losses) are in each model's
MLflow run; the metrics here give their distribution (histograms) and totals.

Recording is a no-op outside Ray (a controller used from a notebook or a Ray-free test) and
never raises: a metric must not fail the work it measures.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    from dfp_ray.results import MessageResult, SinkWrite

log = logging.getLogger(__name__)

PROMETHEUS_PREFIX = "ray_"  # what Ray puts before every application metric's name

Kind = Literal["counter", "gauge", "histogram"]
SECONDS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900]
ROWS_BUCKETS = [10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000]


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric: its name (without Ray's ``ray_`` prefix), kind, help text and tags."""

    name: str
    kind: Kind
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    @property
    def prometheus_name(self) -> str:
        """The name a Prometheus scrape shows (counters as they are named, histograms as
        ``<name>_bucket`` / ``_sum`` / ``_count``)."""
        return PROMETHEUS_PREFIX + self.name


def _spec(name: str, kind: Kind, description: str, tags: Iterable[str] = (),
          boundaries: Iterable[float] = ()) -> MetricSpec:
    return MetricSpec(name, kind, description, tuple(tags), tuple(boundaries))


# The one table of names and tags. Keep names stable: dashboards and alerts use them.
METRICS: dict[str, MetricSpec] = {s.name: s for s in [
    # -- control messages (router, once per message when it is done)
    _spec("dfp_messages_total", "counter", "Control messages finished by the router, by outcome "
          "(processed or rejected) and kind.", ["source", "kind", "outcome"]),
    _spec("dfp_files_loaded_total", "counter", "Input files read (or taken from the load cache).", ["source"]),
    _spec("dfp_rows_loaded_total", "counter", "Rows kept after loading and mapping (inside the message's "
          "window, configured users only).", ["source"]),
    _spec("dfp_records_skipped_total", "counter", "Records dropped while loading, by reason (malformed "
          "field, outside the time window).", ["source", "reason"]),
    _spec("dfp_events_scored_total", "counter", "Events scored by a user's or the generic model.", ["source"]),
    _spec("dfp_users_without_model_total", "counter", "Users whose events could not be scored (no model, "
          "or an error scoring them).", ["source"]),
    _spec("dfp_models_trained_total", "counter", "Models trained and registered, by generic or per user.",
          ["source", "generic"]),
    _spec("dfp_models_skipped_total", "counter", "Training skipped (too few rows, a rolling window not yet "
          "due) or failed.", ["source", "generic"]),
    _spec("dfp_message_seconds", "histogram", "Wall time of one control message in the router.",
          ["source", "kind"], SECONDS_BUCKETS),
    # -- training, per model (totals, and distributions over users; the per-user figures are in
    #    MLflow). Ray computes a histogram's _sum from bucket midpoints, so exact totals are counters.
    _spec("dfp_training_rows_total", "counter", "Rows the trained models were fitted on, summed over models.",
          ["source", "generic"]),
    _spec("dfp_training_seconds_total", "counter", "Seconds spent fitting models, summed over models.",
          ["source", "generic"]),
    _spec("dfp_training_seconds", "histogram", "Seconds to fit one model (one user, or the generic model).",
          ["source", "generic"], SECONDS_BUCKETS),
    _spec("dfp_training_rows", "histogram", "Rows one model was trained on.", ["source", "generic"],
          ROWS_BUCKETS),
    # -- the sink
    _spec("dfp_detections_total", "counter", "Detection rows durably written by the sink (each once per run).",
          ["source"]),
    _spec("dfp_scores_written_total", "counter", "Scored rows written by the sink with output.write_all_scores.",
          ["source"]),
    # -- the registry and the per-actor model cache
    _spec("dfp_registry_call_seconds", "histogram", "Latency of MLflow registry calls, by operation "
          "(register, latest, latest_many, load).", ["op"], SECONDS_BUCKETS),
    _spec("dfp_registry_errors_total", "counter", "Registry calls that raised, by operation.", ["op"]),
    _spec("dfp_model_cache_lookups_total", "counter", "Model-cache lookups by user actors: hit (a cached "
          "model or cached absence served), miss (the registry was asked).", ["result"]),
    _spec("dfp_model_cache_loads_total", "counter", "Models loaded from the registry into an actor's cache."),
    # -- state held and work in flight
    _spec("dfp_window_rows", "gauge", "Rows held in the rolling windows of one user actor (streaming "
          "training).", ["actor"]),
    _spec("dfp_window_users", "gauge", "Users with a rolling window in one user actor.", ["actor"]),
    _spec("dfp_in_flight", "gauge", "Work in progress: control messages in the router, calls in a user "
          "actor (load, train, infer).", ["component", "work"]),
]}


# ------------------------------------------------------------------------------ recording
_lock = threading.Lock()
_instances: dict[str, Any] = {}
_in_flight: dict[tuple[str, str], int] = {}
_T = TypeVar("_T")


def _enabled() -> bool:
    try:
        import ray

        return ray.is_initialized()
    except Exception:  # pragma: no cover - ray missing or half torn down
        return False


def _metric(name: str) -> Any:
    """The process's ``ray.util.metrics`` object for ``name`` (created on first use, in the
    process that records it, as Ray requires)."""
    inst = _instances.get(name)
    if inst is None:
        from ray.util import metrics as ray_metrics

        spec = METRICS[name]
        with _lock:
            inst = _instances.get(name)
            if inst is None:
                kwargs: dict[str, Any] = {"description": spec.description, "tag_keys": spec.tag_keys}
                if spec.kind == "counter":
                    inst = ray_metrics.Counter(spec.name, **kwargs)
                elif spec.kind == "gauge":
                    inst = ray_metrics.Gauge(spec.name, **kwargs)
                else:
                    inst = ray_metrics.Histogram(spec.name, boundaries=list(spec.boundaries), **kwargs)
                _instances[name] = inst
    return inst


def _tags(name: str, tags: dict[str, Any]) -> dict[str, str]:
    keys = METRICS[name].tag_keys
    return {k: str(tags.get(k, "")) for k in keys}


def record(name: str, value: float = 1.0, **tags: Any) -> None:
    """Add ``value`` to a counter, set a gauge, or observe a histogram value; never raises."""
    if not _enabled():
        return
    try:
        metric, kind = _metric(name), METRICS[name].kind
        t = _tags(name, tags)
        if kind == "counter":
            if value > 0:
                metric.inc(value, tags=t)
        elif kind == "gauge":
            metric.set(value, tags=t)
        else:
            metric.observe(value, tags=t)
    except Exception as exc:  # noqa: BLE001 - a metric must never fail the work it measures
        log.debug("metric %s not recorded: %s", name, exc)


# ------------------------------------------------------------------------------ helpers for call sites
def message_done(result: MessageResult, source: str) -> None:
    """Everything one finished control message did (the router calls this once per message)."""
    outcome = "rejected" if result.rejection is not None else "processed"
    record("dfp_messages_total", 1, source=source, kind=result.kind, outcome=outcome)
    record("dfp_message_seconds", result.seconds, source=source, kind=result.kind)
    record("dfp_files_loaded_total", result.files, source=source)
    record("dfp_rows_loaded_total", result.rows, source=source)
    for reason, count in result.skipped_records.items():
        record("dfp_records_skipped_total", count, source=source, reason=reason)
    record("dfp_events_scored_total", result.scored, source=source)
    record("dfp_users_without_model_total", sum(1 for r in result.inferred if r.error), source=source)
    for res in result.trained:
        generic = str(res.generic).lower()
        fit_seconds = res.fit_seconds or res.seconds
        record("dfp_models_trained_total", 1, source=source, generic=generic)
        record("dfp_training_rows_total", res.rows, source=source, generic=generic)
        record("dfp_training_seconds_total", fit_seconds, source=source, generic=generic)
        record("dfp_training_seconds", fit_seconds, source=source, generic=generic)
        record("dfp_training_rows", res.rows, source=source, generic=generic)
        if res.register_seconds:
            record("dfp_registry_call_seconds", res.register_seconds, op="register")
    for res in result.skipped_users:
        record("dfp_models_skipped_total", 1, source=source, generic=str(res.generic).lower())


def rows_written(written: SinkWrite, source: str) -> SinkWrite:
    """The rows one sink write durably added (returns ``written`` so the call wraps a return)."""
    record("dfp_detections_total", written.detections, source=source)
    record("dfp_scores_written_total", written.scores, source=source)
    return written


def cache_lookup(hit: bool, n: int = 1) -> None:
    """``n`` model-cache lookups: hit = answered from the cache; miss = the registry was asked
    (one per user brought up to date, in a single lookup or a bulk prefetch)."""
    record("dfp_model_cache_lookups_total", n, result="hit" if hit else "miss")


@contextlib.contextmanager
def registry_call(op: str) -> Iterator[None]:
    """Time one registry call (``with metrics.registry_call("latest"): ...``); errors are counted."""
    started = time.perf_counter()
    try:
        yield
    except BaseException:
        record("dfp_registry_errors_total", 1, op=op)
        raise
    finally:
        record("dfp_registry_call_seconds", time.perf_counter() - started, op=op)
        if op == "load":
            record("dfp_model_cache_loads_total", 1)


def windows_held(actor: int, windows: dict) -> None:
    """Rows and users in one actor's rolling windows (``windows``: user -> RollingWindow)."""
    record("dfp_window_rows", float(sum(len(w.rows) for w in windows.values())), actor=actor)
    record("dfp_window_users", float(len(windows)), actor=actor)


def _move(component: str, work: str, delta: int) -> None:
    with _lock:
        n = _in_flight[(component, work)] = _in_flight.get((component, work), 0) + delta
    record("dfp_in_flight", float(n), component=component, work=work)


@contextlib.contextmanager
def in_flight(component: str, work: str) -> Iterator[None]:
    """Count the enclosed work in the ``dfp_in_flight`` gauge while it runs."""
    _move(component, work, +1)
    try:
        yield
    finally:
        _move(component, work, -1)


def counts_in_flight(component: str, work: str) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """Decorator form of :func:`in_flight` for actor methods; keeps a generator a generator
    (Ray streams the results of generator methods, and decides so from the function)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen(*args: Any, **kwargs: Any) -> Any:
                with in_flight(component, work):
                    yield from fn(*args, **kwargs)

            return gen

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with in_flight(component, work):
                return fn(*args, **kwargs)

        return call

    return wrap


# ------------------------------------------------------------------------------ Grafana
def grafana_dashboard() -> dict[str, Any]:
    """A Grafana dashboard (JSON model) with one panel per metric of :data:`METRICS`, on the
    Prometheus data source Ray's own dashboards use (``${datasource}``)."""
    panels: list[dict[str, Any]] = []
    for i, spec in enumerate(METRICS.values()):
        name = spec.prometheus_name
        by = ", ".join(k for k in spec.tag_keys if k not in ("source",)) or None
        if spec.kind == "counter":
            expr = f"sum{f' by ({by})' if by else ''}(rate({name}{{SessionName=~\"$session\"}}[$__rate_interval]))"
            unit, title_suffix = "ops", " (per second)"
        elif spec.kind == "gauge":
            expr = f"sum{f' by ({by})' if by else ''}({name}{{SessionName=~\"$session\"}})"
            unit, title_suffix = "short", ""
        else:
            grouping = f"le{', ' + by if by else ''}"
            expr = (f"histogram_quantile(0.95, sum by ({grouping})"
                    f"(rate({name}_bucket{{SessionName=~\"$session\"}}[$__rate_interval])))")
            unit = "s" if spec.name.endswith("_seconds") else "short"
            title_suffix = " (p95)"
        panels.append({
            "id": i + 1,
            "type": "timeseries",
            "title": spec.name.removeprefix("dfp_").replace("_", " ") + title_suffix,
            "description": spec.description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": [{"refId": "A", "expr": expr,
                         "legendFormat": " ".join("{{" + k + "}}" for k in by.split(", ")) if by else spec.name}],
        })
    return {
        "title": "dfp_ray",
        "uid": "dfp-ray",
        "description": "dfp_ray application metrics (dfp_ray/metrics.py), exported through Ray's metrics agent.",
        "tags": ["dfp_ray", "ray"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
            {"name": "session", "type": "query", "label": "Ray session",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(ray_dfp_messages_total, SessionName)", "refId": "session"},
             "definition": "label_values(ray_dfp_messages_total, SessionName)",
             "includeAll": True, "multi": True, "current": {"text": "All", "value": "$__all"}, "refresh": 2},
        ]},
        "panels": panels,
    }


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m dfp_ray.metrics",
                                     description="List dfp_ray's metrics, or print the Grafana dashboard for them.")
    parser.add_argument("--grafana", action="store_true", help="print the Grafana dashboard JSON")
    args = parser.parse_args(argv)
    if args.grafana:
        print(json.dumps(grafana_dashboard(), indent=2))
        return 0
    for spec in METRICS.values():
        tags = ",".join(spec.tag_keys)
        print(f"{spec.prometheus_name:<40} {spec.kind:<9} [{tags}] {spec.description}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
