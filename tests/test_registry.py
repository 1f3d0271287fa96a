"""The MLflow registry layer against a real embedded MLflow (sqlite + local artifacts).

Covers the naming rule (and that registering and looking up use the same name), model
versions, what each run logs, the pickle-free pyfunc flavour scoring raw records exactly as
the direct path does, the model cache's refresh, actionable errors, and registrations from
several processes into one sqlite file at once.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import sqlite3
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder, TrainingReport
from dfp_ray.config import DFPConfig
from dfp_ray.pipeline.data_prep import frame_from_records
from dfp_ray.registry import (
    ModelCache,
    ModelLoadError,
    ModelRef,
    ModelRegistry,
    RegistryUnavailableError,
    registered_model_name,
    safe_user_name,
)
from dfp_ray.registry.signature import score_raw_frame
from dfp_ray.schemas import load_schema

DOTTED = "bob.smith@corp.com"


# ----------------------------------------------------------------------------------- data
def duo_records(n: int = 240, users: tuple[str, ...] = ("alice", DOTTED), seed: int = 0) -> list[dict]:
    """Raw nested Duo v2 records (REFERENCE A1) over three days, in time order."""
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2022-08-01", tz="UTC").timestamp()
    times = np.sort(t0 + rng.uniform(0, 3 * 86400, n)).astype(int)
    pick = lambda values: np.asarray(values, dtype=object)[rng.integers(0, len(values), n)]  # noqa: E731
    user, browser, os_ = pick(users), pick(["Chrome", "Firefox", "Safari"]), pick(["Windows", "Mac OS X"])
    city, result = pick(["Austin", "Boston", "Denver"]), pick(["success", "success", "denied"])
    reason, device = pick(["user_approved", "invalid_passcode"]), pick(["phone-1", "phone-2"])
    return [
        {
            "timestamp": int(times[i]), "txid": f"tx{i}", "event_type": "authentication",
            "user": {"name": user[i], "key": "DU1"},
            "access_device": {"browser": browser[i], "os": os_[i], "ip": "10.0.0.1",
                              "location": {"city": city[i], "state": "TX", "country": "US"}},
            "auth_device": {"name": device[i]}, "application": {"name": "VPN"}, "factor": "duo_push",
            "result": result[i], "reason": reason[i],
        }
        for i in range(n)
    ]  # fmt: skip


SCHEMA = load_schema("duo")
PARAMS = dict(encoder_layers=[16], decoder_layers=[16], epochs=2, device="cpu", num_threads=1)


def train(seed: int, records: list[dict] | None = None) -> tuple[DFPAutoencoder, TrainingReport, pd.DataFrame]:
    frame, _ = frame_from_records(records or duo_records(seed=seed), SCHEMA)
    f = SCHEMA.features
    model = DFPAutoencoder(f.categorical, f.numeric, f.binary, AutoencoderParams(seed=seed, **PARAMS))
    return model, model.fit(frame), frame


def register(registry: ModelRegistry, user: str | None, trained, **kw) -> ModelRef:
    model, report, frame = trained
    return registry.register(
        source="duo", user=user, model=model, report=report, schema=SCHEMA,
        first_event=frame["timestamp"].min(), last_event=frame["timestamp"].max(), **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dfp_state")


@pytest.fixture(scope="module")
def registry(state_dir) -> ModelRegistry:
    """The embedded default, built the way the pipeline builds it: from a DFPConfig."""
    reg = ModelRegistry.from_config(DFPConfig(state_dir=str(state_dir)))
    assert reg.client is not None  # opens (creates) the sqlite store
    return reg


@pytest.fixture(scope="module")
def model_a():
    return train(seed=1)


@pytest.fixture(scope="module")
def model_b():
    return train(seed=2)


@contextlib.contextmanager
def mlflow_uri(uri: str):
    """Point MLflow's global URIs at ``uri`` for plain ``mlflow.*`` calls; leave nothing behind."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            os.environ.pop(key, None)


def artifact_files(registry: ModelRegistry, ref: ModelRef) -> list[Path]:
    location = registry.client.get_model_version_download_uri(ref.name, ref.version)
    root = Path(location.removeprefix("file://"))
    assert root.is_dir(), location
    return [p for p in root.rglob("*") if p.is_file()]


# ----------------------------------------------------------------------------------- naming
@pytest.mark.parametrize("name", ["alice", "generic_user", "bob-smith", "A_1-b", "x" * 100])
def test_safe_names_are_kept(name):
    assert safe_user_name(name) == name


@pytest.mark.parametrize(
    "name, readable",
    [
        ("bob.smith", "bob_smith"),
        ("bob@corp.com", "bob_corp_com"),
        ("first last", "first_last"),
        ("José Müller", "Jose_Muller"),
        ("用户", "__"),
        ("a--b", "a--b"),
        ("CORP\\alice", "CORP_alice"),
    ],
)
def test_unsafe_names_get_readable_part_and_hash(name, readable):
    safe = safe_user_name(name)
    head, _, digest = safe.rpartition("--")
    assert head == readable
    assert len(digest) == 10 and all(c in "0123456789abcdef" for c in digest)
    assert safe == safe_user_name(name)  # deterministic
    assert all(c.isascii() and (c.isalnum() or c in "_-") for c in safe)


def test_safe_names_never_collide():
    names = ["a.b", "a_b", "a@b", "a b", "a-b", "a_b--0123456789", "A.B", "á.b", "a.b" * 60, "a.b" * 61]
    safe = [safe_user_name(n) for n in names]
    assert len(set(safe)) == len(names), dict(zip(names, safe, strict=True))
    assert safe_user_name("a_b") == "a_b" and safe_user_name("a.b") != "a_b"
    assert len(safe_user_name("x" * 500)) <= 100 + 2 + 10


def test_registered_model_name_uses_the_safe_name():
    assert registered_model_name("duo", "alice") == "DFP-duo-alice"
    assert registered_model_name("duo", DOTTED) == f"DFP-duo-{safe_user_name(DOTTED)}"
    assert registered_model_name("azure", "x", "dfp_{source}_{user}") == "dfp_azure_x"
    with pytest.raises(ValueError, match="non-empty"):
        safe_user_name("")
    with pytest.raises(ValueError, match="user"):
        registered_model_name("duo", "alice", "DFP-{source}")


# ----------------------------------------------------------------------------------- registry
def test_from_config_uses_the_state_dir(registry, state_dir):
    assert registry.tracking_uri.startswith(f"sqlite:///{state_dir}/mlflow.db")
    assert (state_dir / "mlflow.db").is_file()
    assert registry.artifact_location == (state_dir / "mlartifacts").as_uri()


def test_register_twice_gives_versions_and_latest(registry, model_a, model_b):
    assert registry.latest("duo", "alice") is None
    assert not mlflow.is_tracking_uri_set()
    started = time.perf_counter()
    v1 = register(registry, "alice", model_a)
    v2 = register(registry, "alice", model_b, tags={"purpose": "test"})
    per_register = (time.perf_counter() - started) / 2
    assert (v1.name, v1.version, v2.version) == ("DFP-duo-alice", "1", "2")
    assert v2.label == "DFP-duo-alice:2" and v2.run_id and v2.run_id != v1.run_id
    assert registry.latest("duo", "alice") == v2
    assert [r.version for r in registry.versions("duo", "alice")] == ["1", "2"]
    # the registry borrowed MLflow's process-global URIs and put them back as they were
    assert not mlflow.is_tracking_uri_set() and "MLFLOW_REGISTRY_URI" not in os.environ
    # measured ~0.3 s per registration on a quiet 2-core machine; generous bound for shared CI
    assert per_register < 5.0, per_register


def test_a_registration_cut_short_by_a_dead_process_is_marked_killed_by_the_next(registry, model_a):
    first = register(registry, "orphaned", model_a)
    client = registry.client
    exp_id = client.get_run(first.run_id).info.experiment_id
    # what a process killed between create_run and its end leaves behind
    orphan = client.create_run(exp_id, tags={"registered_model": first.name}).info.run_id
    assert client.get_run(orphan).info.status == "RUNNING"
    second = register(registry, "orphaned", model_a)
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(second.run_id).info.status == "FINISHED"
    assert client.get_run(first.run_id).info.status == "FINISHED"


def test_a_process_killed_after_creating_the_version_leaves_no_run_running(registry, model_a):
    # the retried training finds the version by its work tag and does not register again; the
    # run its killed actor never ended must not stay RUNNING (it looks like a crash in MLflow)
    done = register(registry, "finished-late", model_a, tags={"dfp_work": "msg-7:train"})
    client = registry.client
    client.update_run(done.run_id, status="RUNNING")  # what a kill before set_terminated leaves
    found = registry.version_with_tag("duo", "finished-late", "dfp_work", "msg-7:train")
    assert found is not None and found.version == done.version and found.run_id == done.run_id
    assert client.get_run(done.run_id).info.status == "FINISHED"
    assert registry.version_with_tag("duo", "finished-late", "dfp_work", "other") is None


def test_run_logs_params_metrics_and_tags(registry, model_a):
    model, report, frame = model_a
    ref = register(registry, "logcheck", model_a, tags={"team": "soc"})
    client = registry.client
    run = client.get_run(ref.run_id)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["epochs"] == "2" and params["learning_rate"] == "0.001" and params["batch_size"] == "512"
    assert params["encoder_layers"] == "[16]" and params["swap_probability"] == "0.2"
    assert params["row_count"] == str(len(frame)) == str(report.rows)
    assert pd.Timestamp(params["first_event"]) == frame["timestamp"].min()
    assert pd.Timestamp(params["last_event"]) == frame["timestamp"].max()
    assert params["schema"] == "duo" and params["categorical_features"] == ",".join(SCHEMA.features.categorical)
    # per-feature losses are in the curves file, not one metric row each
    assert not any("/" in k for k in metrics)
    assert metrics["train_loss"] == pytest.approx(report.train_loss[-1])
    assert metrics["val_loss"] == pytest.approx(report.val_loss[-1])
    # the epoch curves are one JSON file in the version's model directory, not stepped metrics
    assert not any(k.startswith("epoch_") for k in metrics)
    curves_file = next(p for p in artifact_files(registry, ref) if p.name == "training_curves.json")
    curves = json.loads(curves_file.read_text())
    assert curves["epoch"] == list(range(1, report.epochs_run + 1))
    assert curves["train_loss"] == pytest.approx(report.train_loss)
    assert curves["val_loss"] == pytest.approx(report.val_loss)
    assert curves["best_epoch"] == report.best_epoch and curves["best_val_loss"] == pytest.approx(report.best_val_loss)
    assert set(curves["train_feature_loss"]) == set(model.feature_columns) == set(curves["val_feature_loss"])
    for feature in model.feature_columns:
        assert curves["train_feature_loss"][feature] == pytest.approx(report.train_feature_loss[feature])
        assert curves["val_feature_loss"][feature] == pytest.approx(report.val_feature_loss[feature])
    assert registry.training_curves(ref) == curves
    assert tags["user"] == "logcheck" and tags["source"] == "duo" and tags["team"] == "soc"
    assert tags["registered_model"] == ref.name and tags["dfp_ray_version"]
    assert client.get_experiment(run.info.experiment_id).name == f"dfp/duo/training/{ref.name}"
    version = client.get_model_version(ref.name, ref.version)
    assert version.tags["user"] == "logcheck" and version.tags["rows"] == str(report.rows)
    assert version.run_id == ref.run_id


def test_artifacts_have_no_pickle_and_a_signature(registry, model_a, state_dir):
    ref = register(registry, "nopickle", model_a)
    files = artifact_files(registry, ref)
    names = {p.name for p in files}
    assert str(files[0]).startswith(str(state_dir / "mlartifacts"))
    assert not [p for p in files if p.suffix in (".pkl", ".pickle") or p.name == "python_model.pkl"]
    assert {"model.safetensors", "model.json", "schema.yaml", "pyfunc.py", "MLmodel"} <= names
    mlmodel = yaml.safe_load(next(p for p in files if p.name == "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert "python_model" not in pyfunc  # the cloudpickle slot is unused
    requirements = next(p for p in files if p.name == "requirements.txt").read_text()
    assert "dfp-ray" in requirements and "mlflow==" in requirements
    inputs = {c["name"] for c in yaml.safe_load(mlmodel["signature"]["inputs"])}
    assert {"user.name", "user", "username", "access_device.location.city"} <= inputs
    outputs = {c["name"] for c in yaml.safe_load(mlmodel["signature"]["outputs"])}
    assert {"mean_abs_z", "max_abs_z", "reason_z_loss", "username"} <= outputs


def test_each_version_is_a_ready_logged_model_of_its_own_run(registry, model_a, model_b):
    """Versions are built from one per-process pyfunc template: each must still carry its own
    identity (MLflow 3 logged model, run link, MLmodel ids and size) and its own weights."""
    users = ("ident.a", "ident.b")
    refs = [register(registry, users[0], model_a), register(registry, users[1], model_b)]
    client = registry.client
    seen = []
    for user, ref, (model, report, _) in zip(users, refs, (model_a, model_b), strict=True):
        version = client.get_model_version(ref.name, ref.version)
        assert version.source.startswith("models:/m-")  # the sqlite store keeps the id in source
        logged = client.get_logged_model(version.source.removeprefix("models:/"))
        assert str(logged.status) in ("READY", "LoggedModelStatus.READY"), logged.status
        assert logged.source_run_id == ref.run_id and logged.tags["user"] == user
        assert logged.params["row_count"] == str(report.rows)
        outputs = client.get_run(ref.run_id).outputs.model_outputs
        assert [o.model_id for o in outputs] == [logged.model_id]
        files = {p.name: p for p in artifact_files(registry, ref)}
        mlmodel = yaml.safe_load(files["MLmodel"].read_text())
        assert mlmodel["model_id"] == mlmodel["model_uuid"] == logged.model_id
        assert mlmodel["run_id"] == ref.run_id and mlmodel["artifact_path"] == logged.artifact_location
        others = sum(p.stat().st_size for name, p in files.items() if name != "MLmodel")
        assert mlmodel["model_size_bytes"] == others
        assert "dfp-ray-placeholder" not in files
        seen.append(files["model.safetensors"].read_bytes())
        loaded = registry.load(ref, device="cpu")
        frame = model_a[2]
        pd.testing.assert_frame_equal(loaded.score(frame), model.score(frame))
    assert seen[0] != seen[1]


def test_dotted_user_is_found_under_its_own_name(registry, model_a, model_b):
    generic = register(registry, None, model_a)
    dotted = register(registry, DOTTED, model_b)
    found = registry.latest("duo", DOTTED)
    assert found == dotted and found.name == registered_model_name("duo", DOTTED) != generic.name
    assert registry.latest("duo", "bob_smith_corp_com") is None  # a different user entirely
    assert registry.latest("duo", "carol.jones") is None
    # the model the cache hands out for the dotted user is that user's model, not the generic one
    model, ref = ModelCache(registry, refresh_seconds=0).get("duo", DOTTED)
    assert ref == dotted
    frame = model_b[2]
    pd.testing.assert_frame_equal(model.score(frame), model_b[0].score(frame))


def test_load_and_pyfunc_score_raw_records_identically(registry, model_a):
    ref = register(registry, "pyfunc.user", model_a)
    records = duo_records(n=60, users=("pyfunc.user",), seed=9)
    loaded = registry.load(ref, device="cpu")
    direct = score_raw_frame(loaded, SCHEMA, records)
    mapped, _ = frame_from_records(records, SCHEMA)
    expected = model_a[0].score(mapped)
    pd.testing.assert_frame_equal(direct[list(expected.columns)], expected)  # loading is exact
    with mlflow_uri(registry.tracking_uri):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{ref.name}/latest")
        nested = pyfunc.predict(pd.DataFrame(records))  # raw nested records (dict columns)
        flat = pyfunc.predict(pd.json_normalize(records, sep="."))  # flattened raw columns
    pd.testing.assert_frame_equal(nested, direct)
    pd.testing.assert_frame_equal(flat, direct)
    assert len(direct) == 60 and direct["mean_abs_z"].notna().all()
    assert (direct["username"] == "pyfunc.user").all()


def test_cache_refreshes_to_a_newer_version(registry, model_a, model_b):
    v1 = register(registry, "cache.user", model_a)
    eager = ModelCache(registry, refresh_seconds=0)
    lazy = ModelCache(registry, refresh_seconds=3600)
    assert eager.get("duo", "cache.user")[1] == v1
    assert lazy.get("duo", "cache.user")[1] == v1
    v2 = register(registry, "cache.user", model_b)
    model, ref = eager.get("duo", "cache.user")
    assert ref == v2 and eager.loads == 2
    frame = model_b[2]
    pd.testing.assert_frame_equal(model.score(frame), model_b[0].score(frame))
    assert eager.get("duo", "cache.user")[1] == v2 and eager.loads == 2  # same version: no reload
    assert lazy.get("duo", "cache.user")[1] == v1  # within refresh_seconds: not re-checked
    lazy.invalidate("duo", "cache.user")
    assert lazy.get("duo", "cache.user")[1] == v2


def test_bulk_lookup_and_prefetch_agree_with_one_by_one(registry, model_a, model_b):
    """latest_many == latest per user (several versions, dotted names, no model, paged in
    chunks); after prefetch the cache serves those versions without loading again."""
    users = ["bulk.a", "bulk-b", "bulk_c@corp.com"]
    for user in users:
        register(registry, user, model_a)
    register(registry, users[0], model_b)  # version 2 of the first
    wanted = [*users, "bulk.nobody"]
    for chunk in (1, 2, 100):
        found = registry.latest_many("duo", wanted, chunk=chunk)
        assert found == {u: registry.latest("duo", u) for u in wanted}
    assert found["bulk.a"].version == "2" and found["bulk.nobody"] is None

    ticks = iter(float(t) for t in range(1000))
    cache = ModelCache(registry, refresh_seconds=100, clock=lambda: next(ticks))
    assert cache.prefetch("duo", wanted) == 4 and cache.loads == 3
    assert [cache.get("duo", u)[1] for u in users] == [found[u] for u in users]
    assert cache.get("duo", "bulk.nobody") is None
    assert cache.loads == 3 and cache.prefetch("duo", wanted) == 0  # all fresh: nothing to do
    frame = model_b[2]
    pd.testing.assert_frame_equal(cache.get("duo", "bulk.a")[0].score(frame), model_b[0].score(frame))


def test_cache_put_lru_and_missing_users(registry, model_a):
    register(registry, "lru.user", model_a)
    ticks = iter(range(1000))
    cache = ModelCache(registry, max_models=2, refresh_seconds=10, clock=lambda: float(next(ticks)))
    assert cache.get("duo", "nobody.here") is None
    ref = ModelRef("DFP-duo-trained", "7", None)
    cache.put("duo", "trained", model_a[0], ref)
    assert cache.get("duo", "trained") == (model_a[0], ref) and cache.loads == 0
    cache.get("duo", "lru.user")  # loads -> 3 entries over max 2: the oldest (nobody.here) goes
    assert cache.loads == 1 and len(cache._entries) == 2 and len(cache) == 2
    cache.get("duo", "nobody.here")
    assert ("duo", "DFP-duo-trained") not in cache._entries  # least recently used evicted


def test_unreachable_server_error_names_the_uri():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"  # bound but not listening: connection refused
    registry = ModelRegistry(uri)
    started = time.perf_counter()
    with pytest.raises(RegistryUnavailableError, match=f"127.0.0.1:{port}.*mlflow server"):
        registry.latest("duo", "alice")
    assert time.perf_counter() - started < 10


def test_broken_artifacts_error_names_the_version(registry, model_a):
    ref = register(registry, "broken", model_a)
    weights = next(p for p in artifact_files(registry, ref) if p.name == "model.safetensors")
    weights.write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match=f"{ref.name}:{ref.version}"):
        registry.load(ref)


def test_cache_keeps_serving_when_a_newer_version_is_broken(registry, model_a, model_b, caplog):
    v1 = register(registry, "fallback.user", model_a)
    cache = ModelCache(registry, refresh_seconds=0)
    assert cache.get("duo", "fallback.user")[1] == v1
    v2 = register(registry, "fallback.user", model_b)
    next(p for p in artifact_files(registry, v2) if p.name == "model.json").write_text("{}")
    with caplog.at_level("WARNING", logger="dfp_ray.registry"):
        assert cache.get("duo", "fallback.user")[1] == v1
    assert v2.label in caplog.text
    with pytest.raises(ModelLoadError, match=v2.label):  # nothing cached: the error surfaces
        ModelCache(registry, refresh_seconds=0).get("duo", "fallback.user")


def test_sqlite_artifacts_default_to_next_to_the_database(tmp_path):
    registry = ModelRegistry(f"sqlite:///{tmp_path}/sub/mlflow.db")
    assert registry.artifact_location == (tmp_path / "sub" / "mlartifacts").as_uri()
    assert registry.tracking_uri.endswith("mlflow.db?timeout=60")


def test_bad_uris_are_rejected_with_advice(tmp_path):
    with pytest.raises(ValueError, match="sqlite:///"):
        ModelRegistry(str(tmp_path / "mlruns"))
    with pytest.raises(ValueError, match="sqlite:///"):
        ModelRegistry(f"file://{tmp_path}")


# ----------------------------------------------------------------------------------- processes
def _register_worker(db_uri: str, artifacts: str, model_dir: str, report_json: str, worker: int, n: int):
    """Runs in a spawned process: its own registry, n versions of a shared user + one own user."""
    reg = ModelRegistry(db_uri, artifact_location=artifacts)
    model = DFPAutoencoder.load(model_dir, device="cpu")
    report = TrainingReport.model_validate_json(report_json)
    when = pd.Timestamp("2022-08-02", tz="UTC")
    refs = []
    for user in ["shared.user"] * n + [f"own.{worker}"]:
        ref = reg.register(
            source="duo", user=user, model=model, report=report, schema=SCHEMA, first_event=when, last_event=when
        )
        refs.append((ref.name, ref.version))
    return refs


def test_concurrent_registration_from_processes(tmp_path, registry, model_a):
    """Several processes (as Ray user actors would be) register into the same sqlite file."""
    model, report, _ = model_a
    model.save(tmp_path / "model")
    # the module's store: its tables exist already (creating them costs 2-9 s, paid once per module)
    db_uri, artifacts = registry.tracking_uri, registry.artifact_location
    workers, per_worker = 3, 1
    ctx = mp.get_context("spawn")  # fresh processes, nothing inherited (as Ray workers)
    with ctx.Pool(workers) as pool:
        args = [(db_uri, artifacts, str(tmp_path / "model"), report.model_dump_json(), w, per_worker)
                for w in range(workers)]  # fmt: skip
        results = pool.starmap_async(_register_worker, args, chunksize=1).get(timeout=180)
    shared_name = registered_model_name("duo", "shared.user")
    shared = sorted(int(v) for refs in results for name, v in refs if name == shared_name)
    assert shared == list(range(1, workers * per_worker + 1))  # no duplicates, no gaps, none lost
    reg = ModelRegistry(db_uri, artifact_location=artifacts)
    assert reg.latest("duo", "shared.user").version == str(workers * per_worker)
    for w in range(workers):
        assert reg.latest("duo", f"own.{w}").version == "1"
    loaded = reg.load(reg.latest("duo", "shared.user"), device="cpu")
    frame = model_a[2]
    pd.testing.assert_frame_equal(loaded.score(frame), model.score(frame))


def test_a_user_named_like_the_generic_model_cannot_replace_it(registry, state_dir, model_a, model_b):
    """A user literally named ``generic_user`` (Morpheus's name for the fallback model) gets a
    model of its own; the fallback that scores users without one stays the generic model."""
    from dfp_ray.controllers.user import UserController

    generic = register(registry, None, model_a)
    impostor = register(registry, "generic_user", model_b)
    assert generic.name == "DFP-duo-generic_user--all" != impostor.name == "DFP-duo-generic_user"
    assert registry.latest("duo", None) == generic
    assert registry.latest("duo", "generic_user") == impostor
    assert registry.latest_many("duo", [None, "generic_user"]) == {None: generic, "generic_user": impostor}
    controller = UserController(DFPConfig(state_dir=str(state_dir)), SCHEMA)
    _, ref = controller.model_for("brand-new-user")
    assert ref == generic  # a user without a model falls back to the generic one, not the impostor
    _, ref = controller.model_for("generic_user")
    assert ref == impostor


def test_training_curves_of_versions_registered_before_the_curves_file(registry, model_a):
    """Versions written before training_curves.json held the curves as stepped metrics."""
    from mlflow.entities import Metric

    ref = register(registry, "old.curves", model_a)
    next(p for p in artifact_files(registry, ref) if p.name == "training_curves.json").unlink()
    assert registry.training_curves(ref) is None
    registry.client.log_batch(ref.run_id, metrics=[Metric("epoch_train_loss", v, 0, i) for i, v in
                                                   enumerate([0.9, 0.5, 0.4], start=1)])
    curves = registry.training_curves(ref)
    assert curves["epoch"] == [1, 2, 3] and curves["train_loss"] == pytest.approx([0.9, 0.5, 0.4])


# ----------------------------------------------------------------------------------- sqlite journal
def _journal_mode(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]


def test_embedded_store_is_wal_with_synchronous_normal(registry, state_dir):
    assert _journal_mode(state_dir / "mlflow.db") == "wal"
    client = registry.client  # MLflow internals: this tells us if they move
    for engine in (client._tracking_client.store.engine, client._get_registry_client().store.engine):
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


_CHILD_REGISTRIES: dict[str, ModelRegistry] = {}


def _latest_in_child(db_uri: str, artifacts: str, user: str) -> str | None:
    """Runs in a spawned process that keeps its registry (and pooled connections) between calls."""
    reg = _CHILD_REGISTRIES.setdefault(db_uri, ModelRegistry(db_uri, artifact_location=artifacts))
    ref = reg.latest("duo", user)
    if ref is not None:
        reg.load(ref, device="cpu")
    return None if ref is None else ref.version


def test_a_second_process_sees_versions_registered_into_the_wal_store(registry, model_a, model_b):
    """A long-lived reader in another process (a user actor's cache) sees each new version."""
    db_uri, artifacts = registry.tracking_uri, registry.artifact_location
    with mp.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_latest_in_child, (db_uri, artifacts, "wal.reader")) is None
        register(registry, "wal.reader", model_a)
        assert pool.apply(_latest_in_child, (db_uri, artifacts, "wal.reader")) == "1"
        register(registry, "wal.reader", model_b)
        assert pool.apply(_latest_in_child, (db_uri, artifacts, "wal.reader")) == "2"


def test_a_rollback_journal_store_opens_and_becomes_wal(tmp_path, model_a):
    """A store written before WAL (or with sqlite_wal=False) keeps its versions when opened."""
    old = ModelRegistry.from_config(DFPConfig(state_dir=str(tmp_path), mlflow={"sqlite_wal": False}))
    uri = old.tracking_uri
    ref = register(old, "pre.wal", model_a)
    assert _journal_mode(tmp_path / "mlflow.db") == "delete"
    new = ModelRegistry(uri)
    assert new.latest("duo", "pre.wal") == ref
    assert _journal_mode(tmp_path / "mlflow.db") == "wal"
    assert register(new, "pre.wal", model_a).version == "2"
    assert old.latest("duo", "pre.wal").version == "2"  # the older process's connections too


def test_a_failed_artifact_upload_leaves_no_version_and_a_failed_run(registry, model_a, monkeypatch):
    """The version's files are written outside the store's file lock (in place on this local
    store); a failure there still marks run and model FAILED."""
    from mlflow.entities import LoggedModelStatus

    from dfp_ray.registry import RegistryError
    from dfp_ray.registry.template import PyfuncTemplate

    client = registry.client

    def broken_write(self, dest, model):
        raise OSError("disk full")

    monkeypatch.setattr(PyfuncTemplate, "materialise", broken_write)
    with pytest.raises(RegistryError, match="disk full"):
        register(registry, "upload.fails", model_a)
    monkeypatch.undo()
    assert registry.latest("duo", "upload.fails") is None
    exp = client.get_experiment_by_name(f"dfp/duo/training/{registered_model_name('duo', 'upload.fails')}")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    (logged,) = client.search_logged_models([exp.experiment_id])
    assert logged.status == LoggedModelStatus.FAILED
    assert register(registry, "upload.fails", model_a).version == "1"  # and the next try registers
