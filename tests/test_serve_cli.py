"""Starting the service the ways a user does: `python -m dfp_ray.serve` and `serve run configs/serve_app.yaml`.

Each real start runs in its own process (it starts its own local Ray on 127.0.0.1) and is
stopped through its PID with the signal a user would send (SIGTERM / Ctrl-C); the test waits
for it to exit, bounded. Config errors are checked in-process: they stop before Ray starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
import yaml
from serve_helpers import free_port, pickled, wait_for

from dfp_ray.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def _ctrl_c_as_from_a_terminal() -> None:
    """Run in the child before exec: SIGINT back to its default. A suite started in the
    background (``nohup``, ``&``) runs with SIGINT ignored, children inherit that, and a Python
    that starts with it ignored installs no KeyboardInterrupt handler: the Ctrl-C a user sends
    to ``serve run`` would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _Server:
    """A server process whose output is collected by a reader thread."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.lines: list[str] = []
        self.killed = False  # it did not stop on the signal in time and was SIGKILLed
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True, preexec_fn=_ctrl_c_as_from_a_terminal)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def output(self) -> str:
        return "\n".join(self.lines[-60:])

    def stop(self, sig: int, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group of processes it started, nothing else
                self.proc.wait(30)
        self._reader.join(10)
        return self.proc.returncode


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "DFP_RAY_"))}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "OMP_WAIT_POLICY": "PASSIVE", **extra})
    return env


def test_config_errors_stop_before_ray_starts(capsys, tmp_path):
    assert cli_main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read configuration file" in capsys.readouterr().err
    assert cli_main(["serve", "--set", "deployment.num_replicas=0"]) == 2
    assert "deployment.num_replicas: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert cli_main(["serve", "--set", "limits.max_upload_byte=10"]) == 2
    assert "limits.max_upload_byte: unknown key" in capsys.readouterr().err
    assert cli_main(["serve", "--detach"]) == 2
    assert "--detach needs --ray-address" in capsys.readouterr().err


def test_serve_app_config_file_builds_the_application():
    from ray.serve.schema import ServeDeploySchema

    from dfp_ray.serve.deployment import build_app

    raw = yaml.safe_load((ROOT / "configs" / "serve_app.yaml").read_text())
    schema = ServeDeploySchema.parse_obj(raw)  # Ray's own validation of a `serve deploy` file
    (app_schema,) = schema.applications
    assert app_schema.import_path == "dfp_ray.serve.deployment:build_app"
    app = build_app(dict(app_schema.args))
    deployment = app._bound_deployment
    assert deployment.name == "dfp_ray_api" and deployment.num_replicas == 1
    assert deployment.ray_actor_options["num_cpus"] == 1
    cfg = deployment.init_args[0]
    assert cfg.jobs.dir == "/tmp/dfp_ray_serve_jobs" and cfg.fingerprint.allow_model_code is False


@pytest.mark.slow
def test_python_m_dfp_ray_serve_prints_its_url_serves_and_stops(tmp_path):
    port = free_port()
    server = _Server(
        [sys.executable, "-m", "dfp_ray.serve", "--config", str(ROOT / "configs" / "serve.yaml"), "--port", str(port),
         "--set", f"jobs.dir={tmp_path / 'jobs'}", "--set", f"limits.upload_dir={tmp_path / 'uploads'}",
         "--set", "deployment.ray_actor_options.num_cpus=0.5"],
        _env(DFP_RAY_SERVE_TOKEN="cli-token"), tmp_path,
    )
    try:
        line = wait_for(lambda: next((s for s in server.lines if "listening on" in s), None) or server.proc.poll(),
                        timeout=240, interval=0.5, what="the URL line")
        assert isinstance(line, str), server.output()
        url = f"http://127.0.0.1:{port}"
        assert f"dfp-ray serve: listening on {url} (bearer token required; API docs: {url}/docs)" in line
        assert requests.get(url + "/healthz", timeout=30).json()["status"] == "ok"
        assert requests.get(url + "/openapi.json", timeout=30).status_code == 401
        import numpy as np

        data = pickled(np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32))
        r = requests.post(url + "/generate_fingerprint", files=[("dataset", ("d.pickle", data, "file/pickle"))],
                          data={"epochs": 2}, headers={"Authorization": "Bearer cli-token"}, timeout=120)
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    finally:
        rc = server.stop(signal.SIGTERM)
    assert not server.killed and rc == 0, server.output()
    assert any("dfp-ray serve: stopped" in s for s in server.lines), server.output()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


@pytest.mark.slow
def test_serve_run_with_the_serve_config_file(tmp_path):
    raw = yaml.safe_load((ROOT / "configs" / "serve_app.yaml").read_text())
    port = free_port()
    raw["http_options"]["port"] = port
    raw["applications"][0]["args"]["jobs"]["dir"] = str(tmp_path / "jobs")
    raw["applications"][0]["args"]["deployment"]["ray_actor_options"]["num_cpus"] = 0.5
    config = tmp_path / "serve_app.yaml"
    config.write_text(yaml.safe_dump(raw))
    serve_cli = Path(sys.executable).with_name("serve")
    server = _Server([str(serve_cli), "run", str(config)], _env(), tmp_path)
    try:
        wait_for(lambda: _healthy(port) or server.proc.poll() is not None, timeout=240, interval=1.0,
                 what="serve run to be healthy")
        assert server.proc.poll() is None, server.output()
        body = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30).json()
        assert body["app"] == "dfp_ray" and body["status"] == "ok"
    finally:
        rc = server.stop(signal.SIGINT)
    assert not server.killed and rc == 0, server.output()  # Ctrl-C stops it by itself


def _healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    except requests.RequestException:
        return False
