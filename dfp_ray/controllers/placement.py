"""Where a pipeline's state may live when its Ray cluster has more than one node (no Ray here).

On one node every actor sees the same disk. On several, the user actors of one node would not
see the models, windows or verdicts another node wrote to its own disk: the run would go on
with state silently split between nodes. So :func:`check_shared_state` runs at start-up, on
the nodes Ray reports alive, and refuses a multi-node pipeline whose shared state is
node-local, naming the config keys to set.

What must be shared, and what may stay node-local:

- **Registry** (``mlflow.tracking_uri``): shared by every user actor. A ``sqlite:`` / file URI
  (the embedded default) is refused; so is a loopback host (``127.0.0.1``, ``localhost``)
  when the nodes are on more than one host.
- **Model artifacts** (``mlflow.artifact_location``): a local folder or ``file:`` URI is
  refused (leave it unset so the tracking server stores them, or give an ``s3://`` URL).
- **Rolling windows** (``window.checkpoint_dir``, streaming messages): a restarted or
  re-created user actor may come up on another node and must find its users' windows.
- **Verdicts** (``labels.directory``, label messages or stored verdicts): written by the
  router, read by every user actor that trains.
- **Input files** (local globs in the messages, or local ``input.data_roots`` when the messages
  are not known in advance, as in a stream): user actors on every node read them.
- Node-local and correct: the load cache (keyed by each file's URL, size and modification
  time, so a node that misses reloads the file), the dead letters and stream offsets (written
  by the driver), and a local ``output.directory`` (the sink and router are placed on the
  driver's node, see :func:`pin_to_driver`).

A local folder that every node mounts at the same path (NFS, EFS, Lustre) is shared: list it in
``ray.shared_paths`` and the check accepts paths under it (never a sqlite registry: sqlite's
locking is not safe over network filesystems).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Sequence
from urllib.parse import urlparse

from pydantic import BaseModel, Field

from dfp_ray.config import DFPConfig
from dfp_ray.yaml_config import ConfigError

LOCAL_REGISTRY_SCHEMES = {"", "file", "sqlite"}
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class NodeInfo(BaseModel):
    """One alive Ray node, as ``ray.nodes()`` reports it."""

    node_id: str
    address: str = Field(description="The node's IP address (NodeManagerAddress).")


class Workload(BaseModel):
    """What the pipeline will do, as far as the shared state is concerned.

    The defaults assume everything (a stream's messages are not known in advance)."""

    streaming: bool = Field(True, description="Streaming messages: rolling windows are read and written.")
    labels: bool = Field(True, description="Label messages arrive, or verdicts are stored: training reads them.")
    local_inputs: list[str] | None = Field(
        None, description="Local globs the messages read (empty: only object storage). None = not known: "
        "the local input.data_roots are checked instead.",
    )

    @classmethod
    def of_messages(cls, messages: Iterable, *, verdicts_stored: bool) -> Workload:
        """The workload of known control messages (a batch run's)."""
        messages = list(messages)
        return cls(
            streaming=any(m.data_type == "streaming" for m in messages),
            labels=verdicts_stored or any(m.kind == "label" for m in messages),
            local_inputs=sorted({f for m in messages for f in m.files if not is_url(f)}),
        )


class SharedStateError(ConfigError):
    """A multi-node pipeline would keep shared state on one node's disk (the message says what to set)."""


def is_url(location: str) -> bool:
    """An object-store or remote URL (``s3://``, ``gs://``, ...); ``file://`` counts as local."""
    return "://" in location and not location.startswith("file://")


def _local_path(location: str) -> str:
    return os.path.realpath(os.path.expanduser(location.removeprefix("file://")))


def under_shared(location: str, shared_paths: Sequence[str]) -> bool:
    """Whether ``location`` (a local path) lies under one of the shared mounts."""
    path = _local_path(location)
    for root in shared_paths:
        root = _local_path(root)
        if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return addr.is_loopback or addr.is_unspecified


def _registry_problem(key: str, uri: str, hosts: int) -> str | None:
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in LOCAL_REGISTRY_SCHEMES and not uri.startswith("databricks"):
        return (f"{key} is {uri!r}, a registry on one node's disk (user actors on the other nodes would not "
                f"see its models): set {key}: http://<mlflow server>:5000, a tracking server every node "
                "reaches (backed by PostgreSQL for production; docs/registry.md)")
    if hosts > 1 and _is_loopback(parsed.hostname):
        return (f"{key} is {uri!r}, a loopback address: on the other hosts it names themselves, not the "
                f"server: set {key}: http://<server's address or DNS name>:<port>")
    return None


def multi_node_problems(cfg: DFPConfig, nodes: Sequence[NodeInfo], workload: Workload | None = None) -> list[str]:
    """What a pipeline on ``nodes`` would keep on one node's disk, one line per config key
    (empty on a single node, or when everything shared is shared). ``cfg``'s local paths
    should be absolute already (as :class:`dfp_ray.runner.Pipeline` makes them)."""
    if len(nodes) < 2:
        return []
    work = workload or Workload()
    shared = cfg.ray.shared_paths
    hosts = len({n.address for n in nodes})
    problems: list[str] = []

    def local(location: str) -> bool:
        return not is_url(location) and not under_shared(location, shared)

    for key, uri in (("mlflow.tracking_uri", cfg.tracking_uri), ("mlflow.registry_uri", cfg.mlflow.registry_uri)):
        if uri and (problem := _registry_problem(key, uri, hosts)):
            problems.append(problem)
    artifacts = cfg.mlflow.artifact_location
    if artifacts and local(artifacts):
        problems.append(f"mlflow.artifact_location is {artifacts!r}, a folder on one node's disk: leave it unset "
                        "(the tracking server stores artifacts: mlflow server --serve-artifacts / "
                        "--artifacts-destination s3://...) or set mlflow.artifact_location: s3://<bucket>/mlartifacts")
    if work.streaming and local(cfg.windows_dir):
        problems.append(f"window.checkpoint_dir is {cfg.windows_dir!r} (rolling windows of streaming messages) on "
                        "one node's disk: a user actor restarted on another node would start its users' windows "
                        "afresh: set window.checkpoint_dir: s3://<bucket>/<prefix>/windows")
    if work.labels and local(str(cfg.labels_path)):
        problems.append(f"labels.directory is {str(cfg.labels_path)!r} (analyst verdicts) on one node's disk: "
                        "user actors on the other nodes would train without them: set labels.directory to a "
                        "folder every node mounts at the same path and list that mount in ray.shared_paths")
    inputs = work.local_inputs if work.local_inputs is not None else [
        r for r in cfg.input.roots() if not is_url(r)]
    unshared = [p for p in inputs if not under_shared(p, shared)]
    if unshared:
        shown = ", ".join(repr(p) for p in unshared[:3]) + (" ..." if len(unshared) > 3 else "")
        what = "control messages read local files" if work.local_inputs is not None else "input.data_roots has local folders"
        problems.append(f"the {what} ({shown}): user actors on the other nodes load them from their own disks: "
                        "put the files in object storage (s3:// globs, input.data_roots: [s3://<bucket>/<prefix>]) "
                        "or list the mount every node shares in ray.shared_paths")
    return problems


def check_shared_state(cfg: DFPConfig, nodes: Sequence[NodeInfo], workload: Workload | None = None) -> None:
    """Refuse (:class:`SharedStateError`) a multi-node pipeline whose shared state is node-local."""
    problems = multi_node_problems(cfg, nodes, workload)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise SharedStateError(
            f"this Ray cluster has {len(nodes)} alive nodes, and state the pipeline shares between them would "
            f"stay on one node's disk ({len(problems)} problem(s)):\n{lines}\n"
            "Or run on one node (ray.address unset). See docs/scaling.md, \"Running on several nodes\".")


def alive_nodes(ray_nodes: Iterable[dict]) -> list[NodeInfo]:
    """The alive nodes of ``ray.nodes()``'s answer."""
    return [NodeInfo(node_id=n["NodeID"], address=str(n.get("NodeManagerAddress", "")))
            for n in ray_nodes if n.get("Alive")]


def pin_to_driver(nodes: Sequence[NodeInfo]) -> bool:
    """Whether the router and sink must be placed on the driver's node: on several nodes, so the
    output files land where the driver publishes and reads them, and the verdicts the router
    stores beside the detection rows it reads."""
    return len(nodes) > 1


__all__ = [
    "NodeInfo",
    "SharedStateError",
    "Workload",
    "alive_nodes",
    "check_shared_state",
    "is_url",
    "multi_node_problems",
    "pin_to_driver",
    "under_shared",
]
