"""Ray Serve's direct ingress (``serve.direct_ingress``): the ingress replica answers HTTP on its
own port, next to the proxy, with the same answers.

Its own Ray session: Ray Serve reads direct ingress from the environment of the processes
``ray.init`` starts, so the variables :meth:`DirectIngressConfig.environment` gives are set
before it (and restored after, so later modules' Ray sessions run without it). Models are a
real `dfp-ray run`'s (small autoencoders); requests are real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import pytest
import requests
from serve_helpers import app_config, free_port, start_apps, train_dfp_registry

from dfp_ray.serve.config import DirectIngressConfig, load_serve_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
TIMEOUT = 60


def test_direct_ingress_environment_is_what_ray_serve_reads():
    assert DirectIngressConfig().environment() == {}  # off by default: nothing changes in Ray
    env = DirectIngressConfig(enabled=True, min_port=31000, max_port=31010, drain_s=1.5).environment()
    assert env == {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": "31000",
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": "31010",
        "RAY_SERVE_USE_GRPC_BY_DEFAULT": "0",  # gRPC handles listen on every interface: opt-in only
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1.5",
    }


def test_a_port_range_upside_down_is_a_config_error_naming_both_keys():
    with pytest.raises(Exception) as err:
        load_serve_config(None, {"direct_ingress": {"enabled": True, "min_port": 31000, "max_port": 30000}})
    assert "direct_ingress.max_port 30000 is below min_port 31000" in str(err.value)


def test_build_app_on_a_cluster_started_without_direct_ingress_says_how_to_start_it(monkeypatch, caplog):
    from dfp_ray.serve.deployment import build_app

    monkeypatch.delenv("RAY_SERVE_ENABLE_DIRECT_INGRESS", raising=False)
    with caplog.at_level("WARNING", logger="dfp_ray.serve.deployment"):
        build_app({"direct_ingress": {"enabled": True, "min_port": 30100}})
    (warning,) = [r.getMessage() for r in caplog.records if "direct_ingress" in r.getMessage()]
    assert "started without direct ingress" in warning
    assert "RAY_SERVE_ENABLE_DIRECT_INGRESS=1 RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT=30100" in warning
    caplog.clear()
    monkeypatch.setenv("RAY_SERVE_ENABLE_DIRECT_INGRESS", "1")  # a cluster started with it: nothing to say
    with caplog.at_level("WARNING", logger="dfp_ray.serve.deployment"):
        build_app({"direct_ingress": {"enabled": True}})
    assert not [r for r in caplog.records if "direct_ingress" in r.getMessage()]


def listening_addresses(port: int) -> set[str]:
    """The IPv4/IPv6 addresses a TCP socket listens on at ``port``, from /proc/net/tcp{,6}."""
    found = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state != "0A" or int(hexport, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr)
            words = struct.unpack("<" + "I" * (len(raw) // 4), raw)  # the kernel writes host-order words
            found.add(socket.inet_ntop(family, struct.pack(">" + "I" * len(words), *words)))
    return found


@pytest.fixture(scope="module")
def direct_ray():
    import ray

    low = free_port()
    env = DirectIngressConfig(enabled=True, min_port=low, max_port=low + 20).environment()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield low
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def served(direct_ray, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("direct")
    reg = train_dfp_registry(root, users=3, train_days=2, events=8)
    cfg = app_config(root, "direct", {
        "direct_ingress": {"enabled": True, "min_port": direct_ray, "max_port": direct_ray + 20},
        "dfp": {"sources": {"duo": {"pipeline": {"state_dir": reg.cfg.state_dir}}},
                "scorer": {"ray_actor_options": {"num_cpus": 0.5}}}})
    app = start_apps(free_port(), {"direct": (cfg, "/")})["direct"]
    try:
        yield app, reg
    finally:
        serve.shutdown()


def test_the_ingress_replica_answers_on_its_own_loopback_port_as_the_proxy_does(served, direct_ray):
    from dfp_ray.serve.deployment import direct_urls

    app, reg = served
    urls = direct_urls(app.cfg, wait_s=60)
    assert len(urls) == 1, urls  # one ingress replica
    direct = urls[0]
    port = int(direct.rsplit(":", 1)[1])
    assert direct_ray <= port <= direct_ray + 20 and direct != app.url
    assert listening_addresses(port) == {"127.0.0.1"}  # the serve host, not every interface

    assert requests.get(f"{direct}/healthz", timeout=TIMEOUT).status_code == 200
    records = reg.inference_records
    half = len(records) // 2
    # one half through the proxy, the rest straight to the replica: the same histories carry on
    via_proxy = requests.post(f"{app.url}/dfp/duo/score", json=records[:half], timeout=TIMEOUT)
    via_direct = requests.post(f"{direct}/dfp/duo/score", json=records[half:], timeout=TIMEOUT)
    assert via_proxy.status_code == 200 and via_direct.status_code == 200, (via_proxy.text[:300], via_direct.text[:300])
    got = via_proxy.json()["results"] + via_direct.json()["results"]
    assert len(got) == len(records) and not [r for r in got if r.get("error")]
    # the batch pipeline's scores for the same records (the run train_dfp_registry made)
    batch = reg.scores.set_index("event_id")
    assert len(batch) == len(records)
    for row in got:
        want = batch.loc[row["event_id"]]
        assert row["mean_abs_z"] == pytest.approx(want["mean_abs_z"], rel=1e-4, abs=1e-4), row["event_id"]
        assert row["anomaly_score"] == pytest.approx(want["anomaly_score"], rel=1e-4, abs=1e-4), row["event_id"]
