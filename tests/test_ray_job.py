"""`dfp-ray run` submitted as a Ray job to a real head started with `ray start --head`.

What a user does on a cluster (README, "On a Ray cluster"): start a head from the venv, submit
the pipeline with ``ray job submit`` (here its Python API, ``JobSubmissionClient``, which the
CLI calls), wait for the job, read the detections. The head runs in a temporary directory of
its own on 127.0.0.1 with free ports, token auth disabled on both sides (Ray 2.60 turns it on
by default; see the README), and is stopped by the PIDs it started: never ``ray stop``, which
would stop every Ray on the machine.

The job runs in a copy of its working directory, so every path it is given is absolute, and
control messages may only read files inside a data root: ``--data-root`` names the data folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

try:
    from tests.ports import free_port
except ImportError:
    from ports import free_port

pytestmark = pytest.mark.slow

JOB_TIMEOUT_S = 420
NO_AUTH = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc; the head's GCS, raylet, dashboard, workers, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


class RayHead:
    """``ray start --head --block`` in its own session; :meth:`stop` ends it and every process it started."""

    def __init__(self, root: Path):
        self.root = root
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.log = root / "ray-start.log"
        self.proc: subprocess.Popen | None = None
        self.pids: set[int] = set()

    def start(self, timeout: float = 120.0) -> RayHead:
        bindir = str(Path(sys.executable).parent)
        env = {**os.environ, **NO_AUTH, "PATH": f"{bindir}:{os.environ.get('PATH', '')}", "OMP_WAIT_POLICY": "PASSIVE"}
        for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            env.pop(key, None)
        command = [
            str(Path(bindir) / "ray"), "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1", "--port", str(self.port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
            "--num-cpus", "2", "--temp-dir", str(self.root / "ray"),
        ]  # fmt: skip
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + timeout
        import urllib.request

        while time.monotonic() < deadline:
            self.pids.update(descendants(self.proc.pid))
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Ray head's dashboard did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        """Stop ``ray start --block`` and every process recorded under it (GCS, raylet, dashboard,
        workers): SIGTERM, then SIGKILL for any still there after ``grace`` seconds (Ray's
        autoscaler monitor outlives a SIGTERM). A SIGTERM ends ``ray start --block`` alone; the
        processes it started would live on."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        self.pids.update(descendants(proc.pid))
        for pid in [proc.pid, *self.pids]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while (left := [p for p in self.pids if alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.25)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    # short: Ray's Unix socket paths live under --temp-dir and must stay below ~107 characters
    root = Path(tempfile.mkdtemp(prefix="dfp-rj-"))
    head = RayHead(root).start()
    try:
        yield head
    finally:
        head.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def summary_value(logs: str, label: str) -> int:
    match = re.search(rf"^{re.escape(label)}\s+(\d+)\s*$", logs, re.MULTILINE)
    assert match, f"'{label}' not in the job's summary:\n{logs[-3000:]}"
    return int(match.group(1))


def test_dfp_ray_run_as_a_ray_job(ray_head, tmp_path, monkeypatch):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from dfp_ray.tools.datagen import DatagenConfig, generate

    for key, value in NO_AUTH.items():  # the submitting side agrees with the head
        monkeypatch.setenv(key, value)
    data = tmp_path / "data"
    generate(DatagenConfig(out=str(data), sources=["duo"], users=3, train_days=4, infer_days=1,
                           events_per_user_per_day=8, seed=5), progress=False)
    workdir = tmp_path / "job"  # what the job gets a copy of: the config, as a user's repo would hold it
    workdir.mkdir()
    (workdir / "job.yaml").write_text(
        "source: duo\nmin_train_rows: 5\noutput:\n  write_all_scores: true\n"
        "autoencoder:\n  encoder_layers: [16]\n  decoder_layers: [16]\n  epochs: 2\n"
        "ray:\n  num_user_actors: 2\n  message_timeout_s: 300\n")
    out, state = tmp_path / "out", tmp_path / "state"
    messages = data / "control_messages" / "duo_payload_load_train_inference.json"
    entrypoint = (f"dfp-ray run --config job.yaml --ray-address auto --no-progress --data-root {data} "
                  f"--input-file {messages} --output {out} --state-dir {state}")

    client = JobSubmissionClient(ray_head.address)
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(workdir)})
    deadline = time.monotonic() + JOB_TIMEOUT_S
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(1)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    if not status.is_terminal():
        client.stop_job(job_id)
    assert status == JobStatus.SUCCEEDED, f"job {job_id} is {status}:\n{logs[-4000:]}\n{ray_head.log_tail()}"

    # the summary the job printed agrees with the files it wrote (absolute paths: not in the copy)
    detections = pd.read_csv(out / "dfp_detections_duo.csv")
    scores = pd.read_csv(out / "dfp_scores_duo.csv")
    assert summary_value(logs, "messages rejected") == 0
    assert summary_value(logs, "users trained") == 4  # 3 users + the generic model
    assert len(scores) == summary_value(logs, "rows scored") > 0
    assert len(detections) == summary_value(logs, "detections")
    assert scores["username"].nunique() == summary_value(logs, "users scored") == 3
    assert scores["model_version"].str.match(r"DFP-duo-.+:1$").all()
    assert (state / "mlflow.db").is_file()  # the registry went where the absolute --state-dir says
