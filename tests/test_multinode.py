"""dfp_ray on a multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``).

The slow test runs streaming training and inference on a head and two worker nodes, the
user-actor pool spread over the workers (a custom resource per node shows where each actor
runs), rolling windows on ``s3://`` (moto_server), the registry on a real ``mlflow server``,
input files on ``s3://``. A worker node is removed mid-training: its actor restarts on a
standby node, restores its users' windows from S3, and the run's detections equal those of a
single-node run on the same messages, nothing lost or written twice, no model registered twice.
It also shows the start-up refusal of node-local state on that cluster.

The fast tests check the refusal rules without Ray (:mod:`dfp_ray.controllers.placement`) and
that a URL for ``state_dir`` is a configuration error, never a local folder named ``s3:``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dfp_ray.config import load_config
from dfp_ray.controllers.placement import (
    NodeInfo,
    SharedStateError,
    Workload,
    check_shared_state,
    multi_node_problems,
)
from dfp_ray.yaml_config import ConfigError

try:
    from tests.mlflow_server import MlflowServer
    from tests.s3_server import moto_server_binary, running_s3_server, s3_storage_options
    from tests.stream_helpers import make_cfg, make_data, message, read_detections, write_doc
except ImportError:
    from mlflow_server import MlflowServer
    from s3_server import moto_server_binary, running_s3_server, s3_storage_options
    from stream_helpers import make_cfg, make_data, message, read_detections, write_doc

BUCKET = "dfp-multinode"
TWO_HOSTS = [NodeInfo(node_id="a", address="10.0.0.1"), NodeInfo(node_id="b", address="10.0.0.2")]
ONE_HOST = [NodeInfo(node_id="a", address="127.0.0.1"), NodeInfo(node_id="b", address="127.0.0.1")]


# ---- the refusal rules, without Ray ---------------------------------------------------------
def _cfg(tmp: Path, **extra):
    return load_config(None, {"state_dir": str(tmp / "state"), "input.data_roots": ["s3://logs"], **extra})


SHARED = {"mlflow.tracking_uri": "http://mlflow.internal:5000", "window.checkpoint_dir": "s3://state/windows"}


def test_the_defaults_are_refused_on_several_nodes_naming_the_keys_to_set(tmp_path):
    cfg = load_config(None, {"state_dir": str(tmp_path / "state")})  # data roots: the working directory
    with pytest.raises(SharedStateError) as err:
        check_shared_state(cfg, TWO_HOSTS)
    text = str(err.value)
    assert "2 alive nodes" in text and "4 problem(s)" in text
    assert f"mlflow.tracking_uri is 'sqlite:///{tmp_path}/state/mlflow.db'" in text
    assert "set mlflow.tracking_uri: http://<mlflow server>:5000" in text
    assert "set window.checkpoint_dir: s3://<bucket>/<prefix>/windows" in text
    assert "labels.directory" in text and "ray.shared_paths" in text
    assert "input.data_roots has local folders" in text
    # one node: the same config is fine
    check_shared_state(cfg, TWO_HOSTS[:1])


def test_shared_state_passes_and_each_node_local_piece_is_named(tmp_path):
    cfg = _cfg(tmp_path, **SHARED)
    batch = Workload(streaming=False, labels=False, local_inputs=[])
    assert multi_node_problems(cfg, TWO_HOSTS, Workload(labels=False, local_inputs=[])) == []
    # payload messages on S3 need only the registry shared: windows and verdicts are not used
    assert multi_node_problems(_cfg(tmp_path, **{"mlflow.tracking_uri": "postgresql://db/mlflow"}), TWO_HOSTS,
                               batch) == []
    assert multi_node_problems(_cfg(tmp_path, **{"mlflow.tracking_uri": "databricks"}), TWO_HOSTS, batch) == []
    # each node-local piece on its own
    local_windows = _cfg(tmp_path, **{**SHARED, "window.checkpoint_dir": str(tmp_path / "w")})
    [problem] = multi_node_problems(local_windows, TWO_HOSTS, Workload(labels=False, local_inputs=[]))
    assert problem.startswith(f"window.checkpoint_dir is '{tmp_path}/w'")
    assert multi_node_problems(local_windows, TWO_HOSTS, batch) == []  # no streaming message: not used
    [problem] = multi_node_problems(_cfg(tmp_path, **SHARED, **{"mlflow.artifact_location": "/var/mlartifacts"}),
                                    TWO_HOSTS, batch)
    assert problem.startswith("mlflow.artifact_location is '/var/mlartifacts'")
    [problem] = multi_node_problems(cfg, TWO_HOSTS, Workload(streaming=False, labels=False,
                                                               local_inputs=["/data/duo/*.json"]))
    assert "control messages read local files ('/data/duo/*.json')" in problem
    [problem] = multi_node_problems(cfg, TWO_HOSTS, Workload(streaming=False, labels=True, local_inputs=[]))
    assert problem.startswith(f"labels.directory is '{tmp_path}/state/labels'")


def test_a_loopback_registry_is_refused_only_across_hosts(tmp_path):
    cfg = _cfg(tmp_path, **{**SHARED, "mlflow.tracking_uri": "http://127.0.0.1:5000"})
    work = Workload(labels=False, local_inputs=[])
    [problem] = multi_node_problems(cfg, TWO_HOSTS, work)
    assert "loopback address" in problem and "mlflow.tracking_uri" in problem
    assert multi_node_problems(cfg, ONE_HOST, work) == []  # several raylets on one host reach it
    sqlite = _cfg(tmp_path, **{**SHARED, "mlflow.tracking_uri": f"sqlite:///{tmp_path}/m.db"})
    assert len(multi_node_problems(sqlite, ONE_HOST, work)) == 1  # a file is never shared state


def test_folders_under_a_shared_mount_count_as_shared(tmp_path):
    mount = tmp_path / "nfs"
    cfg = _cfg(tmp_path, **{"mlflow.tracking_uri": "http://mlflow:5000", "window.checkpoint_dir": str(mount / "w"),
                            "labels.directory": str(mount / "labels"), "ray.shared_paths": [str(mount)]})
    assert multi_node_problems(cfg, TWO_HOSTS, Workload(local_inputs=[str(mount / "in/*.json")])) == []
    # a sibling whose name merely starts like the mount is not under it
    assert len(multi_node_problems(cfg, TWO_HOSTS, Workload(local_inputs=[str(tmp_path / "nfs2/x.json")]))) == 1
    # sqlite on a network filesystem is still refused
    on_nfs = cfg.model_copy(update={"mlflow": cfg.mlflow.model_copy(update={"tracking_uri": f"sqlite:///{mount}/m.db"})})
    assert len(multi_node_problems(on_nfs, TWO_HOSTS, Workload(local_inputs=[]))) == 1


def test_a_url_state_dir_is_a_config_error_naming_the_keys_to_use(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config(None, {"state_dir": "s3://bucket/dfp"})
    text = str(err.value)
    assert "state_dir" in text and "must be a local folder" in text
    assert "window.checkpoint_dir: s3://bucket/dfp/windows" in text
    assert "mlflow.tracking_uri: http://<mlflow server>:5000" in text
    assert "mlflow.artifact_location: s3://bucket/dfp/mlartifacts" in text
    with pytest.raises(ConfigError, match="labels.directory"):
        load_config(None, {"labels.directory": "s3://bucket/labels"})
    with pytest.raises(ConfigError, match="not a custom resource"):
        load_config(None, {"ray.resources_per_actor": {"CPU": 1}})
    assert load_config(None, {"state_dir": f"file://{tmp_path}/st"}).state_path == tmp_path / "st"
    assert not list(tmp_path.iterdir()), "nothing was created (no folder named 's3:')"


def test_the_cli_exits_2_on_a_url_state_dir(tmp_path, monkeypatch, capsys):
    from dfp_ray.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.json").write_text("{}")
    code = main(["run", "--input-file", "m.json", "--state-dir", "s3://bucket/dfp", "--no-progress"])
    assert code == 2
    assert "window.checkpoint_dir: s3://bucket/dfp/windows" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


# ---- a real cluster ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    if moto_server_binary() is None:
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    s3fs = pytest.importorskip("s3fs")
    with running_s3_server() as endpoint:
        opts = s3_storage_options(endpoint)
        fs = s3fs.S3FileSystem(**opts)
        fs.mkdir(BUCKET)
        local = make_data(tmp_path_factory.mktemp("data"), train_days=4)  # windows are due on day 4
        fs.put(str(local / "duo"), f"{BUCKET}/duo", recursive=True)
        yield opts, fs


def _messages(tmp: Path) -> list[str]:
    train, infer = f"s3://{BUCKET}/duo/training/*.json", f"s3://{BUCKET}/duo/inference/*.json"
    return [str(write_doc(tmp / "stream.json", message(train, "training", "streaming"),
                          message(infer, "inference", "streaming")))]


def _node_names() -> dict[str, str]:
    """Node id -> the custom resource naming it (head, w1, w2, w3)."""
    import ray

    names = {}
    for node in ray.nodes():
        named = [r for r in node["Resources"] if r in ("head", "w1", "w2", "w3")]
        names[node["NodeID"]] = named[0] if named else "?"
    return names


def _versions(cfg) -> Counter:
    from dfp_ray.registry import ModelRegistry

    client = ModelRegistry.from_config(cfg).client
    return Counter(v.name for v in client.search_model_versions("name LIKE 'DFP-duo-%'"))


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.mlflow_server
def test_a_three_node_cluster_fails_over_a_lost_worker_and_matches_the_single_node_run(s3, tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    from dfp_ray.runner import Pipeline, run

    opts, fs = s3
    started = time.monotonic()
    # Individual models only (the generic model would retrain on every daily batch): the smallest
    # run that still has every user's window checkpointed before it is due.
    common = {"storage_options": opts, "input.data_roots": [f"s3://{BUCKET}"], "autoencoder.epochs": 2,
              "train_users": "individual"}

    # The single-node run: local Ray, the embedded sqlite registry, windows on local disk.
    tmp_ref = tmp_path_factory.mktemp("single")
    ref_cfg = make_cfg(tmp_ref, **common)
    files = _messages(tmp_ref)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        reference = run(ref_cfg, files, progress=False)
    finally:
        ray.shutdown()
    assert reference.ok, reference.rejections
    assert reference.detections > 0
    single_s = time.monotonic() - started

    tmp = tmp_path_factory.mktemp("cluster")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1}})
    server = MlflowServer(tmp / "mlflow")
    try:
        cluster.add_node(num_cpus=1, resources={"dfp_pool": 1, "w1": 1})
        w2 = cluster.add_node(num_cpus=1, resources={"dfp_pool": 1, "w2": 1})
        cluster.wait_for_nodes(timeout=60)
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        server.start()

        # Node-local state is refused before any actor starts, naming what to set.
        with pytest.raises(SharedStateError) as err:
            Pipeline(make_cfg(tmp / "local", **common))
        assert "3 alive nodes" in str(err.value)
        assert "mlflow.tracking_uri" in str(err.value) and "window.checkpoint_dir" in str(err.value)

        windows = f"s3://{BUCKET}/state/windows"
        cfg = make_cfg(tmp, **common, **{
            "mlflow.tracking_uri": server.uri, "window.checkpoint_dir": windows,
            "ray.resources_per_actor": {"dfp_pool": 1}, "ray.actor_scheduling": "spread"})
        cluster_s = time.monotonic() - started - single_s
        run_started = time.monotonic()
        pipe = Pipeline(cfg, workload=Workload(labels=False, local_inputs=[]))  # what run() finds in the messages
        try:
            names = _node_names()
            driver = names[ray.get_runtime_context().get_node_id()]
            placed = [names[n] for n in ray.get([a.node_id.remote() for a in pipe.user_actors], timeout=60)]
            assert driver == "head" and sorted(placed) == ["w1", "w2"], placed  # the pool spans both workers
            victim = placed.index("w2")
            cluster.add_node(num_cpus=1, resources={"dfp_pool": 1, "w3": 1})  # a standby node
            cluster.wait_for_nodes(timeout=60)
            killed: list[str] = []

            def killer() -> None:  # remove worker 2 once the first day's batch is checkpointed (6 users)
                deadline = time.monotonic() + 240
                while time.monotonic() < deadline and not killed:
                    try:
                        state = ray.get(pipe.router.progress.remote(), timeout=5)
                    except Exception:  # noqa: BLE001 - busy; ask again
                        continue
                    if state.kind == "training" and state.users_done >= 7:
                        cluster.remove_node(w2)
                        killed.append(f"w2 after {state.users_done} models")
                    time.sleep(0.05)

            thread = threading.Thread(target=killer, daemon=True)
            thread.start()
            summary = run(cfg, files, pipeline=pipe, progress=False)
            thread.join(timeout=30)
            run_s = time.monotonic() - run_started
            moved = _node_names()[ray.get(pipe.user_actors[victim].node_id.remote(), timeout=120)]
            kept = _node_names()[ray.get(pipe.user_actors[1 - victim].node_id.remote(), timeout=60)]
        finally:
            pipe.shutdown()
        assert killed, "worker 2 was removed during training"
        assert moved == "w3" and kept == "w1"  # the lost actor failed over to the standby node
        assert summary.ok, summary.rejections

        # Nothing lost, nothing twice: the single-node run's detections, scores and models.
        assert summary.rows_scored == reference.rows_scored and summary.detections == reference.detections
        assert summary.users_trained == reference.users_trained
        got = read_detections(Path(summary.run_folder) / "dfp_detections_duo.csv")
        want = read_detections(Path(reference.run_folder) / "dfp_detections_duo.csv")
        assert got["event_id"].is_unique and got["event_id"].tolist() == want["event_id"].tolist()
        np.testing.assert_allclose(got["mean_abs_z"], want["mean_abs_z"], rtol=1e-4, atol=1e-6)
        assert _versions(cfg) == _versions(ref_cfg)  # every model version registered once
        # the windows live in S3, one checkpoint per user (and the generic model)
        in_s3 = sorted(Path(p).name for p in fs.glob(f"{BUCKET}/state/windows/duo/*.parquet"))
        assert in_s3 and in_s3 == sorted(p.name for p in (tmp_ref / "state" / "windows" / "duo").glob("*.parquet"))
        assert not (tmp / "state" / "windows").exists()
        assert not list(Path.cwd().glob("s3:*"))
    finally:
        ray.shutdown()
        server.stop()
        cluster.shutdown()
    print(f"single-node run {single_s:.0f} s, cluster up {cluster_s:.0f} s, cluster run {run_s:.0f} s, "
          f"whole test {time.monotonic() - started:.0f} s; {killed[0]}")
