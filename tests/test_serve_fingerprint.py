"""The fingerprint service over real HTTP, against real Ray Serve on 127.0.0.1.

Two applications share one Serve instance (one Ray session for the module):

* ``open`` at ``/``: no auth, no model code, unsigned fingerprints (the original service's
  setting; the notebook client test runs against it);
* ``locked`` at ``/locked``: bearer token, ``allow_model_code``, an HMAC key, a 1 MiB upload limit.

Every refusal is checked for its status, its JSON body naming the field, that nothing in a
hostile upload ran (marker files), and that no upload is left in the upload folder.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from fingerprint_helpers import read_manifest, rezip, with_manifest
from serve_helpers import (
    KEY,
    TOKEN,
    app_config,
    free_port,
    mnist_splits,
    notebook_keras_cnn,
    pickled,
    start_apps,
    tiny_keras_h5,
    wait_for,
)

os.environ.setdefault("KERAS_BACKEND", "torch")
pytestmark = pytest.mark.timeout(900)
TIMEOUT = 120  # seconds for any single HTTP call


@pytest.fixture(scope="module")
def apps(ray_session, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("serve")
    open_cfg = app_config(root, "open")
    locked_cfg = app_config(root, "locked", {
        "auth": {"token": TOKEN},
        "limits": {"max_upload_bytes": 1024**2},
        "fingerprint": {"allow_model_code": True, "key": KEY},
    })
    started = start_apps(free_port(), {"open": (open_cfg, "/"), "locked": (locked_cfg, "/locked")})
    yield started
    serve.shutdown()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small real inputs: a Keras MLP on 6 features and data for it."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    train = rng.normal(size=(240, 6)).astype(np.float32)
    return {
        "h5": tiny_keras_h5(root / "mlp.h5").read_bytes(),
        "train": pickled(train),
        "train_array": train,
        "noise": pickled(rng.uniform(-8, 8, size=(60, 6)).astype(np.float32)),
    }


@pytest.fixture(scope="module")
def open_fp(apps, files):
    """A layered fingerprint of the MLP made by the open app."""
    r = post(apps["open"], "/generate_fingerprint", files={"dataset": files["train"], "model": files["h5"]},
             data={"model_type": "keras", "partial_activations": 0.5, "epochs": 5})
    assert r.status_code == 200, r.text
    return r.content


def post(app, path: str, *, files: dict[str, bytes] | None = None, data: dict | None = None,
         headers: dict | None = None, params: dict | None = None) -> requests.Response:
    parts = [(name, (f"{name}.bin", content, "application/octet-stream")) for name, content in (files or {}).items()]
    return requests.post(app.url + path, files=parts or None, data=data, headers={**app.headers, **(headers or {})},
                         params=params, timeout=TIMEOUT)


def assert_error(r: requests.Response, status: int, field: str | None, text: str = "") -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    body = r.json()
    assert set(body) >= {"detail", "field", "code"}, body
    assert body["field"] == field, body
    assert text.lower() in body["detail"].lower(), body
    return body


def result_when_finished(app, url: str, timeout: float = 60) -> requests.Response:
    """GET a job's result until it is no longer 409 (not ready); bounded."""
    box: list[requests.Response] = []

    def ready() -> bool:
        r = requests.get(url, headers=app.headers, timeout=TIMEOUT)
        box[:] = [r]
        return r.status_code != 409

    wait_for(ready, timeout, what=f"job result {url}")
    return box[0]


def no_leftovers(app) -> None:
    assert sorted(os.listdir(app.upload_dir)) == [], f"uploads left in {app.upload_dir}"


# ----------------------------------------------------------------------------- basics


def test_healthz_docs_and_openapi(apps):
    for app in apps.values():
        r = requests.get(app.url + "/healthz", timeout=TIMEOUT)  # open even where a token is required
        assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["job_watcher_alive"] is True
    docs = requests.get(apps["open"].url + "/docs", timeout=TIMEOUT)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = requests.get(apps["open"].url + "/openapi.json", timeout=TIMEOUT).json()
    gen = spec["paths"]["/generate_fingerprint"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"dataset", "model", "model_type", "model_def", "partial_activations"} <= set(gen["properties"])
    assert gen["required"] == ["dataset"]
    out = spec["paths"]["/outlier_detection"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"fingerprint", "num_layers", "dataset", "model", "activation_mapping", "activation_mappings",
            "percentile"} <= set(out["properties"])
    assert "/jobs/{job_id}" in spec["paths"] and "/jobs/{job_id}/result" in spec["paths"]


def test_generate_and_score_a_layered_keras_fingerprint(apps, files, open_fp):
    app = apps["open"]
    with zipfile.ZipFile(io.BytesIO(open_fp)) as zf:
        assert "manifest.json" in zf.namelist()
    manifest = read_manifest(open_fp)
    # Every layer but the output, Dropout included.
    assert [layer["name"] for layer in manifest["layers"]] == ["d1", "drop", "d2"]
    assert manifest["integrity"]["hmac_sha256"] is None  # the open app has no key
    scored = post(app, "/outlier_detection", files={"fingerprint": open_fp, "dataset": files["train"],
                                                    "model": files["h5"]},
                  data={"num_layers": 3, "model_type": "keras", "activation_mapping": "True"})
    assert scored.status_code == 200, scored.text
    body = scored.json()
    assert body["n_samples"] == 240 and body["num_layers"] == 3 and body["layer_names"] == ["d1", "drop", "d2"]
    assert 0 <= body["score"] <= 12  # its own training data: about 5% by construction
    assert body["score"] == pytest.approx(100 * sum(body["flags"]) / 240)
    assert len(body["sample_scores"]) == 240 and len(body["layers"]) == 3 and body["percentile"] == 95.0
    noise = post(app, "/outlier_detection", files={"fingerprint": open_fp, "dataset": files["noise"],
                                                   "model": files["h5"]},
                 data={"activation_mappings": "true", "percentile": 99})  # the original's documented spelling
    assert noise.status_code == 200 and noise.json()["score"] > 80 and noise.json()["percentile"] == 99.0
    no_leftovers(app)


def test_num_layers_guard_lists_the_layers(apps, files, open_fp):
    r = post(apps["open"], "/outlier_detection",
             files={"fingerprint": open_fp, "dataset": files["train"], "model": files["h5"]}, data={"num_layers": 8})
    assert_error(r, 422, "num_layers", "num_layers is 8 but the fingerprint has 3 layers (d1, drop, d2)")


def test_non_layered_round_trip_and_async_job(apps, files):
    app = apps["open"]
    r = post(app, "/generate_fingerprint", files={"dataset": files["train"]}, data={"epochs": 3},
             params={"async": "true"})
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert r.headers["Location"] == accepted["status_url"]
    status = wait_for(lambda: (s := requests.get(accepted["status_url"], timeout=TIMEOUT).json())["state"]
                      in ("done", "failed") and s, timeout=60, what="the job")
    assert status["state"] == "done" and status["attempts"] == 1 and status["progress"] == 1.0
    result = requests.get(accepted["result_url"], timeout=TIMEOUT)
    assert result.status_code == 200 and result.headers["content-type"] == "application/zip"
    assert read_manifest(result.content)["kind"] == "non-layered"
    scored = post(app, "/outlier_detection", files={"fingerprint": result.content, "dataset": files["noise"]},
                  params={"async": "1"})
    assert scored.status_code == 202
    done = result_when_finished(app, scored.json()["result_url"])
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["kind"] == "non-layered" and body["n_samples"] == 60
    # A job whose input is bad fails with the error the synchronous call gives, under the same status.
    bad = post(app, "/generate_fingerprint", files={"dataset": b"not a dataset"}, params={"async": "true"})
    assert bad.status_code == 202
    failed = result_when_finished(app, bad.json()["result_url"])
    assert_error(failed, 400, "dataset", "format not recognised")
    assert requests.get(bad.json()["status_url"], timeout=TIMEOUT).json()["state"] == "failed"
    assert not (app.jobs_dir / accepted["job_id"] / "inputs").exists()  # inputs deleted when the job ended
    no_leftovers(app)


# ----------------------------------------------------------------------------- no input we know of gets a 500


def _bad_requests(files, open_fp):
    """(case, path, files, data, params, headers, expected status, expected field)."""
    rng = np.random.default_rng(3)
    nan = files["train_array"].copy()
    nan[3, 1] = np.nan
    fp_noname = read_manifest(open_fp)
    fp = {"fingerprint": open_fp, "dataset": files["train"], "model": files["h5"]}
    gen = "/generate_fingerprint"
    out = "/outlier_detection"
    return [
        ("no dataset", gen, {"model": files["h5"]}, {}, None, None, 422, "dataset"),
        ("only text fields (not multipart)", gen, {}, {"model_type": "keras"}, None, None, 415, None),
        ("dataset is text", gen, {"dataset": b"hello"}, {}, None, None, 400, "dataset"),
        ("dataset empty file", gen, {"dataset": b""}, {}, None, None, 400, "dataset"),
        ("dataset truncated npy", gen, {"dataset": b"\x93NUMPY\x01\x00\x10\x00{'descr'"}, {}, None, None, 400, "dataset"),
        ("dataset broken npz", gen, {"dataset": b"PK\x03\x04garbage"}, {}, None, None, 400, "dataset"),
        ("dataset 1-D", gen, {"dataset": pickled(np.arange(10.0))}, {}, None, None, 400, "dataset"),
        ("dataset of strings", gen, {"dataset": pickled(np.array([["a", "b"]]))}, {}, None, None, 400, "dataset"),
        ("dataset with NaN", gen, {"dataset": pickled(nan)}, {}, None, None, 400, "dataset"),
        ("dataset too few rows", gen, {"dataset": pickled(files["train_array"][:10])}, {}, None, None, 400, "dataset"),
        ("dataset wrong width", gen, {"dataset": pickled(rng.normal(size=(100, 5))), "model": files["h5"]}, {},
         None, None, 400, "dataset"),
        ("model is garbage", gen, {"dataset": files["train"], "model": b"\x00" * 100}, {}, None, None, 400, "model"),
        ("model is a broken h5", gen, {"dataset": files["train"], "model": b"\x89HDF\r\n\x1a\n" + b"\x00" * 64}, {},
         None, None, 400, "model"),
        ("model is a broken zip", gen, {"dataset": files["train"], "model": b"PK\x03\x04" + b"\x01" * 64}, {}, None,
         None, 400, "model"),
        ("model_type unknown", gen, {"dataset": files["train"], "model": files["h5"]}, {"model_type": "tensorflow"},
         None, None, 422, "model_type"),
        ("model_type disagrees", gen, {"dataset": files["train"], "model": files["h5"]}, {"model_type": "pytorch"},
         None, None, 400, "model"),
        ("model_type without model", gen, {"dataset": files["train"]}, {"model_type": "keras"}, None, None, 422,
         "model"),
        ("partial_activations 0", gen, {"dataset": files["train"]}, {"partial_activations": 0}, None, None, 422,
         "partial_activations"),
        ("partial_activations text", gen, {"dataset": files["train"]}, {"partial_activations": "lots"}, None, None,
         422, "partial_activations"),
        ("epochs over the maximum", gen, {"dataset": files["train"]}, {"epochs": 10**6}, None, None, 422, "epochs"),
        ("unknown layer", gen, {"dataset": files["train"], "model": files["h5"]}, {"layers": "d1,nope"}, None, None,
         400, "layers"),
        ("input_shape not numbers", gen, {"dataset": files["train"]}, {"input_shape": "a,b"}, None, None, 422,
         "input_shape"),
        ("unknown field", gen, {"dataset": files["train"]}, {"percentil": 90}, None, None, 422, "percentil"),
        ("unknown file field", gen, {"dataset": files["train"], "weights": b"x"}, {}, None, None, 422, "weights"),
        ("field twice via its alias", gen, {"dataset": files["train"]},
         {"activation_mapping": "true", "activation_mappings": "false"}, None, None, 422, "activation_mappings"),
        ("text field too long", gen, {"dataset": files["train"]}, {"layers": "x" * 70_000}, None, None, 422,
         "layers"),
        ("async not a bool", gen, {"dataset": files["train"]}, {}, {"async": "maybe"}, None, 422, "async"),
        ("no fingerprint", out, {"dataset": files["train"]}, {}, None, None, 422, "fingerprint"),
        ("fingerprint is text", out, {**fp, "fingerprint": b"not a zip"}, {}, None, None, 400, "fingerprint"),
        ("fingerprint truncated", out, {**fp, "fingerprint": open_fp[: len(open_fp) // 2]}, {}, None, None, 400,
         "fingerprint"),
        ("fingerprint without manifest", out, {**fp, "fingerprint": rezip(open_fp, replace={"manifest.json": b"[]"})},
         {}, None, None, 400, "fingerprint"),
        ("fingerprint manifest not JSON", out,
         {**fp, "fingerprint": rezip(open_fp, replace={"manifest.json": b"{" * 5000})}, {}, None, None, 400,
         "fingerprint"),
        ("fingerprint resealed with a bad field", out,
         {**fp, "fingerprint": with_manifest(open_fp, {**fp_noname, "num_layers": "three"}, reseal=True)}, {},
         None, None, 400, "fingerprint"),
        ("num_layers text", out, fp, {"num_layers": "eight"}, None, None, 422, "num_layers"),
        ("num_layers negative", out, fp, {"num_layers": -1}, None, None, 422, "num_layers"),
        ("percentile 100", out, fp, {"percentile": 100}, None, None, 422, "percentile"),
        ("activation_mapping contradicts", out, fp, {"activation_mapping": "false"}, None, None, 422,
         "activation_mapping"),
        ("activation_mapping not a bool", out, fp, {"activation_mapping": "sometimes"}, None, None, 422,
         "activation_mapping"),
        ("layered without model", out, {"fingerprint": open_fp, "dataset": files["train"]}, {}, None, None, 422,
         "model"),
        ("another model", out, {**fp, "model": tiny_keras_h5_bytes(seed=1)}, {}, None, None, 422, "model"),
        ("dataset wrong width for scoring", out, {**fp, "dataset": pickled(rng.normal(size=(20, 4)))}, {}, None,
         None, 400, "dataset"),
    ]


_TINY_H5_CACHE: dict[int, bytes] = {}


def tiny_keras_h5_bytes(seed: int) -> bytes:
    import tempfile

    if seed not in _TINY_H5_CACHE:
        with tempfile.TemporaryDirectory() as tmp:
            _TINY_H5_CACHE[seed] = tiny_keras_h5(Path(tmp) / "m.h5", seed=seed).read_bytes()
    return _TINY_H5_CACHE[seed]


def test_bad_inputs_are_4xx_naming_the_field_never_500(apps, files, open_fp):
    app = apps["open"]
    seen = []
    for case, path, upload, data, params, headers, status, field in _bad_requests(files, open_fp):
        r = post(app, path, files=upload, data=data, params=params, headers=headers)
        assert r.status_code != 500, (case, r.text)
        assert r.status_code == status and r.json()["field"] == field, (case, r.status_code, r.text[:400])
        assert r.json()["detail"] and r.json()["code"], case
        seen.append(case)
    # Requests that are not multipart at all, or go nowhere.
    r = requests.post(app.url + "/generate_fingerprint", json={"dataset": [[1, 2]]}, timeout=TIMEOUT)
    assert_error(r, 415, None, "multipart/form-data")
    r = requests.post(app.url + "/generate_fingerprint", data=b"--x\r\nbroken", timeout=TIMEOUT,
                      headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert_error(r, 400, None, "multipart")
    r = requests.post(app.url + "/outlier_detection", timeout=TIMEOUT,
                      headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert_error(r, 400, None, "closing boundary")
    assert_error(requests.get(app.url + "/nope", timeout=TIMEOUT), 404, None, "no such endpoint")
    assert_error(requests.get(app.url + "/generate_fingerprint", timeout=TIMEOUT), 405, None)
    assert_error(requests.get(app.url + "/jobs/../../etc/passwd", timeout=TIMEOUT), 404, None)
    assert_error(requests.get(app.url + "/jobs/" + "0" * 32, timeout=TIMEOUT), 404, "job_id", "no job")
    assert_error(requests.get(app.url + "/jobs/not-a-job/result", timeout=TIMEOUT), 404, "job_id")
    assert len(seen) >= 40
    no_leftovers(app)


# ----------------------------------------------------------------------------- security


class _WritesMarker:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_that_would_run_code_is_refused(apps, tmp_path):
    marker = tmp_path / "PWNED"
    evil = pickle.dumps({"x": np.zeros((50, 4)), "payload": _WritesMarker(marker)})
    r = post(apps["open"], "/generate_fingerprint", files={"dataset": evil})
    assert_error(r, 400, "dataset", "refused a pickle that references io.open")
    assert not marker.exists()
    no_leftovers(apps["open"])


def test_keras_lambda_layer_is_refused(apps, files, tmp_path):
    import keras

    marker = tmp_path / "LAMBDA_RAN"

    def side_effect(x):
        Path(str(marker)).write_text("ran")
        return x

    model = keras.Sequential([keras.Input(shape=(6,)), keras.layers.Dense(4, name="d"),
                              keras.layers.Lambda(side_effect, name="sneaky"), keras.layers.Dense(2, name="o")])
    model.save(str(tmp_path / "lambda.h5"))
    marker.unlink(missing_ok=True)
    r = post(apps["open"], "/generate_fingerprint",
             files={"dataset": files["train"], "model": (tmp_path / "lambda.h5").read_bytes()})
    assert_error(r, 400, "model", "Lambda layers ('sneaky' (Lambda))")
    assert not marker.exists()


MODEL_DEF = """
from pathlib import Path
import torch
Path({marker!r}).write_text("model_def ran")

class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x)
"""


def test_model_def_upload_needs_allow_model_code(apps, files, tmp_path):
    import torch

    marker = tmp_path / "MODEL_DEF_RAN"
    torch.manual_seed(0)
    state = io.BytesIO()
    torch.save({"fc.weight": torch.randn(3, 6), "fc.bias": torch.zeros(3)}, state)
    upload = {"dataset": files["train"], "model": state.getvalue(),
              "model_def": MODEL_DEF.format(marker=str(marker)).encode()}
    r = post(apps["open"], "/generate_fingerprint", files=upload, data={"model_type": "pytorch"})
    assert_error(r, 403, "model_def", "--allow-model-code")
    assert not marker.exists()
    no_leftovers(apps["open"])
    # Positive control: the locked app was started with allow_model_code, so the same upload runs.
    r = post(apps["locked"], "/generate_fingerprint", files=upload, data={"model_type": "pytorch", "epochs": 2})
    assert r.status_code == 200, r.text
    assert marker.exists() and read_manifest(r.content)["layers"][0]["name"] == "fc"


def test_oversize_upload_is_413(apps, files):
    app = apps["locked"]  # limit 1 MiB
    big = np.zeros((3000, 100), np.float32)  # 1.2 MB
    r = post(app, "/generate_fingerprint", files={"dataset": pickled(big)})
    assert_error(r, 413, None, "limits.max_upload_bytes")

    def chunks():  # no Content-Length: counted as it streams
        yield b"--b\r\nContent-Disposition: form-data; name=\"dataset\"; filename=\"d\"\r\n\r\n"
        for _ in range(40):
            yield b"\x00" * 65536
        yield b"\r\n--b--\r\n"

    r = requests.post(app.url + "/generate_fingerprint", data=chunks(), timeout=TIMEOUT,
                      headers={**app.headers, "Content-Type": "multipart/form-data; boundary=b"})
    assert_error(r, 413, None, "over this server's limit")
    no_leftovers(app)


def test_hostile_fingerprint_archives_are_refused(apps, files, open_fp):
    app = apps["open"]
    base = {"dataset": files["train"], "model": files["h5"]}
    for name in ("../evil.txt", "/etc/evil.txt"):
        r = post(app, "/outlier_detection", files={**base, "fingerprint": rezip(open_fp, extra={name: b"x"})})
        assert_error(r, 400, "fingerprint", "unsafe member path")
    bomb = rezip(open_fp, replace={"layers/000.safetensors": bytes(40 * 1024**2)})
    assert len(bomb) < 1024**2
    r = post(app, "/outlier_detection", files={**base, "fingerprint": bomb})
    assert_error(r, 400, "fingerprint", "zip bomb")
    manifest = read_manifest(open_fp)
    manifest["calibration"]["thresholds"]["95"] = 1e9
    r = post(app, "/outlier_detection", files={**base, "fingerprint": with_manifest(open_fp, manifest, reseal=False)})
    assert_error(r, 400, "fingerprint", "manifest.json was modified")
    no_leftovers(app)


def test_signing_server_refuses_fingerprints_it_did_not_sign(apps, files, open_fp):
    app = apps["locked"]
    upload = {"dataset": files["train"], "model": files["h5"]}
    r = post(app, "/outlier_detection", files={**upload, "fingerprint": open_fp})
    assert_error(r, 400, "fingerprint", "not signed")
    made = post(app, "/generate_fingerprint", files=upload, data={"epochs": 2})
    assert made.status_code == 200 and made.headers["X-Fingerprint-Signed"] == "true"
    assert made.headers["X-Fingerprint-Layers"] == "d1,drop,d2"
    ok = post(app, "/outlier_detection", files={**upload, "fingerprint": made.content}, data={"num_layers": 3})
    assert ok.status_code == 200 and ok.json()["signed"] is True
    # Re-hashing an edited manifest (possible without the key) does not get past the signature.
    manifest = read_manifest(made.content)
    manifest["default_percentile"] = 50.0
    forged = with_manifest(made.content, manifest, reseal=True, key=b"guess")
    assert_error(post(app, "/outlier_detection", files={**upload, "fingerprint": forged}), 400, "fingerprint",
                 "signature does not match")


def test_bearer_token(apps):
    app = apps["locked"]
    for path in ("/openapi.json", "/docs", "/jobs/" + "0" * 32):
        r = requests.get(app.url + path, timeout=TIMEOUT)
        assert_error(r, 401, "Authorization", "Authorization: Bearer")
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert_error(requests.get(app.url + path, headers={"Authorization": "Bearer nope"}, timeout=TIMEOUT), 403,
                     "Authorization", "not valid")
        assert_error(requests.get(app.url + path, headers={"Authorization": f"Basic {TOKEN}"}, timeout=TIMEOUT), 401,
                     "Authorization")
    assert requests.get(app.url + "/openapi.json", headers=app.headers, timeout=TIMEOUT).status_code == 200
    r = requests.post(app.url + "/generate_fingerprint", files=[("dataset", ("d", b"x"))], timeout=TIMEOUT)
    assert r.status_code == 401
    assert requests.get(app.url + "/healthz", timeout=TIMEOUT).status_code == 200
    no_leftovers(app)


# ----------------------------------------------------------------------------- the original notebook's client


@pytest.mark.slow
def test_original_notebook_client(apps, tmp_path, monkeypatch):
    """REFERENCE B's notebook client, verbatim but for the URL, against a CNN built and saved as it did."""
    monkeypatch.chdir(tmp_path)
    x_train, y_train, x_test = mnist_splits(2000)
    model = notebook_keras_cnn()
    import keras

    keras.utils.set_random_seed(0)
    model.fit(x_train, y_train, epochs=1, batch_size=128, verbose=0)
    model.save("model.h5")
    noise = np.random.default_rng(0).uniform(0, 1, size=(300, 28, 28, 1)).astype(np.float32)
    base = apps["open"].url

    # ---- the notebook's code (file names, field names, content types and values as it sent them) ----
    with open("mnist.pickle", "wb") as f:
        pickle.dump(x_train, f)
    url = base + "/generate_fingerprint"
    data = {"model_type": "keras", "partial_activations": 0.2}
    with open("mnist.pickle", "rb") as f1, open("model.h5", "rb") as f2:
        files = [("dataset", ("mnist.pickle", f1, "file/pickle")), ("model", ("mnist.h5", f2, "file/h5"))]
        r = requests.post(url, data=data, files=files, stream=True)
        with open("fingerprint.zip", "wb") as fd:
            for chunk in r.iter_content(chunk_size=128):
                fd.write(chunk)

    def outlier_score(x: np.ndarray) -> float:
        with open("test.pickle", "wb") as f:
            pickle.dump(x, f)
        url = base + "/outlier_detection"
        data = {"num_layers": 8, "model_type": "keras", "activation_mapping": True}
        with open("test.pickle", "rb") as f1, open("model.h5", "rb") as f2, open("fingerprint.zip", "rb") as f3:
            files = [("dataset", ("test.pickle", f1, "file/pickle")), ("model", ("mnist.h5", f2, "file/h5")),
                     ("fingerprint", ("fingerprint.zip", f3, "file/zip"))]
            r = requests.post(url, data=data, files=files)
        return r.json()["score"]
    # ---- end of the notebook's code ----

    assert r.status_code == 200 and zipfile.is_zipfile("fingerprint.zip")
    manifest = read_manifest(Path("fingerprint.zip").read_bytes())
    assert manifest["num_layers"] == 8
    assert [layer["kind"] for layer in manifest["layers"]] == [
        "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dropout", "Dense"]
    held_out = outlier_score(x_test)
    noisy = outlier_score(noise)
    assert held_out < 10.0, f"held-out digits scored {held_out:.1f}%"
    assert noisy > 90.0, f"noise scored {noisy:.1f}%"
    no_leftovers(apps["open"])


# ----------------------------------------------------------------------------- a replica dies mid-job (last: it restarts one)


def _replica_actors(app_name: str) -> list[str]:
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{app_name}#")]


@pytest.mark.slow
def test_job_survives_a_replica_restart(apps):
    """Kill the replica running a job: Serve starts a new one, which takes the job over and finishes it."""
    import ray

    app = apps["locked"]
    data = pickled(np.random.default_rng(5).normal(size=(3000, 64)).astype(np.float32))  # ~0.8 MB
    r = post(app, "/generate_fingerprint", files={"dataset": data}, data={"epochs": 60}, params={"async": "true"})
    assert r.status_code == 202, r.text
    job = r.json()
    status = lambda: requests.get(job["status_url"], headers=app.headers, timeout=TIMEOUT).json()  # noqa: E731
    wait_for(lambda: status()["state"] == "running", timeout=60, interval=0.1, what="the job to start")
    (victim,) = _replica_actors("locked")
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    assert status_while_down(app, job) in ("queued", "running", None)
    final = wait_for(lambda: (s := _status_or_none(app, job)) and s["state"] in ("done", "failed", "lost") and s,
                     timeout=300, interval=1.0, what="the job to finish after the restart")
    assert final["state"] == "done", final
    assert final["attempts"] == 2 and len(final["history"]) == 1 and "taken over" in final["history"][0]
    result = requests.get(job["result_url"], headers=app.headers, timeout=TIMEOUT)
    assert result.status_code == 200 and read_manifest(result.content)["kind"] == "non-layered"
    assert _replica_actors("locked") != [victim]


def _status_or_none(app, job) -> dict | None:
    try:
        r = requests.get(job["status_url"], headers=app.headers, timeout=10)
    except requests.RequestException:
        return None
    return r.json() if r.status_code == 200 else None


def status_while_down(app, job) -> str | None:
    s = _status_or_none(app, job)
    return None if s is None else s["state"]


def test_every_upload_folder_is_empty_at_the_end(apps):
    for app in apps.values():
        no_leftovers(app)
