"""Shared pieces of the streaming tests: small generated data, configs, control-message files,
and a stream run in a thread with a bounded wait (import as ``tests.stream_helpers`` or
``stream_helpers``, like the other helpers)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd

from dfp_ray.config import load_config

SMALL_AE = {
    "autoencoder.encoder_layers": [64, 32], "autoencoder.decoder_layers": [64],
    "autoencoder.epochs": 4, "autoencoder.device": "cpu",
}
FILE_TO_DF = {"parser_kwargs": {"lines": False, "orient": "records"}}


def make_data(out: Path, *, users: int = 6, train_days: int = 5, seed: int = 3) -> Path:
    from dfp_ray.tools.datagen import DatagenConfig, generate

    generate(DatagenConfig(out=str(out), sources=["duo"], users=users, train_days=train_days, infer_days=1,
                           events_per_user_per_day=6, seed=seed), progress=False)
    return out


def make_cfg(tmp: Path, bootstrap: str | None = None, **extra):
    """A small, deterministic pipeline (the generic fit never widens, so two runs fit alike)."""
    overrides = {"source": "duo", "state_dir": str(tmp / "state"), "output.directory": str(tmp / "out"),
                 "min_train_rows": 5, "ray.num_user_actors": 2, "ray.message_timeout_s": 300,
                 "ray.generic_threads_after_pool": 1, "input.data_roots": [str(tmp.parent)],
                 "window.min_history": 20, "window.min_increment": 20, **SMALL_AE}
    if bootstrap:
        overrides.update({"kafka.bootstrap_servers": bootstrap, "kafka.poll_interval": "200ms",
                          "kafka.retry_backoff_initial": "200ms", "kafka.retry_backoff_max": "2s",
                          "kafka.request_timeout": "5s"})
    overrides.update(extra)
    return load_config(None, overrides)


def message(files: str, task: str, data_type: str = "payload", **properties) -> dict:
    return {"tasks": [{"type": "load", "properties": {"files": [files]}}, {"type": task, "properties": properties}],
            "metadata": {"data_type": data_type, "file_to_df_options": FILE_TO_DF}}


def write_doc(path: Path, *messages: dict) -> Path:
    path.write_text(json.dumps({"inputs": list(messages)}))
    return path


def read_detections(path: str | Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"event_id": str})
    return frame.sort_values("event_id").reset_index(drop=True)


def stream(cfg, pipe, topic: str, count: int, *, timeout: float = 240.0, on_result=None, **kafka) -> int:
    """Run ``dfp-ray stream``'s service on ``pipe`` until ``count`` Kafka messages of ``topic``
    are committed; fails the test after ``timeout`` seconds (the stream is stopped first)."""
    from dfp_ray.streaming.service import run_stream

    cfg = cfg.model_copy(deep=True)
    cfg.kafka = cfg.kafka.model_copy(update={"input_topics": [topic], "stop_after": count, **kafka})
    sources, codes, errors = [], [], []

    def target() -> None:
        try:
            codes.append(run_stream(cfg, pipeline=pipe, handle_signals=False, on_result=on_result,
                                    on_start=sources.append))
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        for source in sources:
            source.stop("test timeout")
        thread.join(30)
        raise AssertionError(f"the stream did not commit {count} message(s) of {topic} within {timeout:.0f}s")
    if errors:
        raise errors[0]
    return codes[0]


def live_pipeline(cfg):
    """A warm pipeline writing the stream run of ``cfg`` (its group's run, created if new)."""
    from dfp_ray.runner import Pipeline
    from dfp_ray.streaming.service import resume_or_start

    state, _ = resume_or_start(cfg)
    return Pipeline(cfg, live_run_id=state.run_id)
