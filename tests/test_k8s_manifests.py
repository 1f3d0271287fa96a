"""The KubeRay manifests in cluster/k8s/ against the fields of the KubeRay version they name.

No Kubernetes here, so each manifest is checked against a field schema written below from
KubeRay v1.7.0's API types (``ray-operator/apis/ray/v1/{raycluster,rayjob,rayservice}_types.go``:
field names, which are required, enums) and the spec checks its operator runs before it creates
anything (``ray-operator/controllers/ray/utils/validation.go``: e.g. no job ``backoffLimit``
with ``clusterSelector``, token auth needs Ray >= 2.52, fixed worker groups set both
``minReplicas`` and ``maxReplicas``). Pod templates are checked for the Kubernetes core fields
they use. An unknown or misspelt field fails, as ``kubectl apply --validate=strict`` would.

Beyond the schema: every config and control message the manifests carry parses with dfp_ray's
own loaders, the Serve config builds with the app's config model, entrypoints are commands
dfp-ray has, the image is the one the Dockerfile builds, and the Dockerfile installs torch
2.13.0 before the package, as the README does.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "cluster" / "k8s"
KUBERAY_VERSION = "v1.7.0"
IMAGE = "CHANGE-ME-registry/dfp-ray:0.1.0"


# ------------------------------------------------------------------------------ a tiny schema language
@dataclass
class Obj:
    fields: dict[str, Any]
    required: tuple[str, ...] = ()
    open: bool = False  # True: other keys allowed (a free-form Kubernetes object we do not model)


@dataclass
class ListOf:
    item: Any


@dataclass
class MapOf:
    value: Any = "str"


@dataclass
class Enum:
    values: tuple[str, ...]


@dataclass
class Int:
    minimum: int | None = None


@dataclass
class Errors:
    found: list[str] = field(default_factory=list)


def check(value: Any, schema: Any, path: str, errors: Errors) -> None:
    """Collect every mismatch between ``value`` and ``schema`` as 'path: what'."""
    if schema == "any":
        return
    if isinstance(schema, Obj):
        if not isinstance(value, dict):
            errors.found.append(f"{path}: expected an object, got {type(value).__name__}")
            return
        for key in schema.required:
            if key not in value:
                errors.found.append(f"{path}: required field '{key}' is missing")
        for key, sub in value.items():
            if key in schema.fields:
                check(sub, schema.fields[key], f"{path}.{key}", errors)
            elif not schema.open:
                errors.found.append(f"{path}: unknown field '{key}' (KubeRay {KUBERAY_VERSION} has "
                                    f"{sorted(schema.fields)})")
    elif isinstance(schema, ListOf):
        if not isinstance(value, list):
            errors.found.append(f"{path}: expected a list")
            return
        for i, item in enumerate(value):
            check(item, schema.item, f"{path}[{i}]", errors)
    elif isinstance(schema, MapOf):
        if not isinstance(value, dict):
            errors.found.append(f"{path}: expected a map")
            return
        for key, sub in value.items():
            check(sub, schema.value, f"{path}.{key}", errors)
    elif isinstance(schema, Enum):
        if value not in schema.values:
            errors.found.append(f"{path}: {value!r} is not one of {list(schema.values)}")
    elif isinstance(schema, Int):
        if not isinstance(value, int) or isinstance(value, bool):
            errors.found.append(f"{path}: expected an integer, got {value!r}")
        elif schema.minimum is not None and value < schema.minimum:
            errors.found.append(f"{path}: {value} is below the minimum {schema.minimum}")
    elif schema == "str":
        if not isinstance(value, str):
            errors.found.append(f"{path}: expected a string, got {value!r} (quote numbers in string maps)")
    elif schema == "bool":
        if not isinstance(value, bool):
            errors.found.append(f"{path}: expected true/false, got {value!r}")
    elif schema == "number":
        if not isinstance(value, int | float) or isinstance(value, bool):
            errors.found.append(f"{path}: expected a number, got {value!r}")
    elif schema == "quantity":  # resource.Quantity: "2", "500m", "8Gi", or a plain number
        if isinstance(value, bool) or not (isinstance(value, int | float) or (
                isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?([mkMGTPE]i?|[eE]\d+)?", value))):
            errors.found.append(f"{path}: {value!r} is not a Kubernetes quantity")
    else:  # pragma: no cover - a mistake in the schema below
        raise AssertionError(f"unknown schema {schema!r} at {path}")


# ------------------------------------------------------------------------------ Kubernetes core (subset we use)
STR_MAP = MapOf("str")
OBJECT_META = Obj({"name": "str", "namespace": "str", "labels": STR_MAP, "annotations": STR_MAP,
                   "generateName": "str"})
ENV_VAR = Obj({"name": "str", "value": "str",
               "valueFrom": Obj({"secretKeyRef": Obj({"name": "str", "key": "str", "optional": "bool"}, ("key",)),
                                 "configMapKeyRef": Obj({"name": "str", "key": "str", "optional": "bool"}, ("key",)),
                                 "fieldRef": Obj({"fieldPath": "str", "apiVersion": "str"}, ("fieldPath",)),
                                 "resourceFieldRef": "any"})}, ("name",))
RESOURCES = Obj({"requests": MapOf("quantity"), "limits": MapOf("quantity"), "claims": "any"})
PORT = Obj({"containerPort": Int(1), "name": "str", "protocol": Enum(("TCP", "UDP", "SCTP")), "hostPort": Int(1)},
           ("containerPort",))
VOLUME_MOUNT = Obj({"name": "str", "mountPath": "str", "readOnly": "bool", "subPath": "str"}, ("name", "mountPath"))
PROBE = Obj({"httpGet": Obj({"path": "str", "port": "any", "scheme": "str"}, ("port",)), "exec": "any",
             "tcpSocket": "any", "periodSeconds": Int(1), "initialDelaySeconds": Int(0),
             "timeoutSeconds": Int(1), "failureThreshold": Int(1), "successThreshold": Int(1)})
CONTAINER = Obj({"name": "str", "image": "str", "imagePullPolicy": Enum(("Always", "IfNotPresent", "Never")),
                 "command": ListOf("str"), "args": ListOf("str"), "env": ListOf(ENV_VAR), "envFrom": "any",
                 "ports": ListOf(PORT), "resources": RESOURCES, "volumeMounts": ListOf(VOLUME_MOUNT),
                 "readinessProbe": PROBE, "livenessProbe": PROBE, "securityContext": "any", "lifecycle": "any",
                 "workingDir": "str"}, ("name",))
VOLUME = Obj({"name": "str", "configMap": Obj({"name": "str", "items": "any", "defaultMode": Int(0)}),
              "secret": Obj({"secretName": "str", "items": "any", "defaultMode": Int(0)}),
              "persistentVolumeClaim": Obj({"claimName": "str", "readOnly": "bool"}, ("claimName",)),
              "emptyDir": "any"}, ("name",))
POD_SPEC = Obj({"containers": ListOf(CONTAINER), "volumes": ListOf(VOLUME), "serviceAccountName": "str",
                "nodeSelector": STR_MAP, "tolerations": "any", "affinity": "any", "restartPolicy":
                Enum(("Always", "OnFailure", "Never")), "imagePullSecrets": "any", "securityContext": "any",
                "initContainers": ListOf(CONTAINER), "terminationGracePeriodSeconds": Int(0)}, ("containers",))
POD_TEMPLATE = Obj({"metadata": OBJECT_META, "spec": POD_SPEC})

# ------------------------------------------------------------------------------ KubeRay v1.7.0 (ray.io/v1)
# raycluster_types.go
HEAD_GROUP = Obj({
    "template": POD_TEMPLATE, "headService": "any", "enableIngress": "bool", "ingressOptions": "any",
    "resources": STR_MAP, "labels": STR_MAP, "rayStartParams": STR_MAP,
    "serviceType": Enum(("ClusterIP", "NodePort", "LoadBalancer")),
}, required=("template", "rayStartParams"))
WORKER_GROUP = Obj({
    "suspend": "bool", "groupName": "str", "replicas": Int(0), "minReplicas": Int(0), "maxReplicas": Int(0),
    "idleTimeoutSeconds": Int(0), "priority": Int(), "resources": STR_MAP, "labels": STR_MAP,
    "rayStartParams": STR_MAP, "template": POD_TEMPLATE,
    "scaleStrategy": Obj({"workersToDelete": ListOf("str")}), "numOfHosts": Int(1),
}, required=("groupName", "template"))
RAY_CLUSTER_SPEC = Obj({
    "upgradeStrategy": Obj({"type": Enum(("Recreate", "None"))}),
    "authOptions": Obj({"enableK8sTokenAuth": "bool", "secretName": "str", "mode": Enum(("disabled", "token"))}),
    "suspend": "bool", "managedBy": Enum(("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue")),
    "autoscalerOptions": "any", "headServiceAnnotations": STR_MAP, "enableInTreeAutoscaling": "bool",
    "gcsFaultToleranceOptions": "any", "historyServerOptions": "any", "networkPolicy": "any",
    "tlsOptions": Obj({"enabled": "bool"}), "headGroupSpec": HEAD_GROUP, "rayVersion": "str",
    "workerGroupSpecs": ListOf(WORKER_GROUP),
}, required=("headGroupSpec",))
# rayjob_types.go
RAY_JOB_SPEC = Obj({
    "activeDeadlineSeconds": Int(1), "backoffLimit": Int(0), "rayClusterSpec": RAY_CLUSTER_SPEC,
    "submitterPodTemplate": POD_TEMPLATE, "metadata": STR_MAP, "clusterSelector": STR_MAP,
    "submitterConfig": Obj({"backoffLimit": Int(0)}),
    "managedBy": Enum(("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue")), "deletionStrategy": "any",
    "entrypoint": "str", "runtimeEnvYAML": "str", "jobId": "str",
    "submissionMode": Enum(("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")),
    "entrypointResources": "str", "entrypointNumCpus": "number", "entrypointNumGpus": "number",
    "ttlSecondsAfterFinished": Int(0), "preRunningDeadlineSeconds": Int(1), "shutdownAfterJobFinishes": "bool",
    "suspend": "bool",
})
# rayservice_types.go
RAY_SERVICE_SPEC = Obj({
    "rayClusterDeletionDelaySeconds": Int(0), "serveService": "any",
    "upgradeStrategy": Obj({"type": Enum(("NewClusterWithIncrementalUpgrade", "NewCluster", "None")),
                            "clusterUpgradeOptions": "any"}),
    "managedBy": Enum(("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue")), "serveConfigV2": "str",
    "rayClusterConfig": RAY_CLUSTER_SPEC, "excludeHeadPodFromServeSvc": "bool", "suspend": "bool",
    # deprecated and ignored by v1.7.0, so refused here: serviceUnhealthySecondThreshold,
    # deploymentUnhealthySecondThreshold
}, required=("rayClusterConfig",))


def resource(api: str, spec: Obj, *, spec_required: bool = True) -> Obj:
    return Obj({"apiVersion": Enum((api,)), "kind": "str", "metadata": OBJECT_META, "spec": spec},
               ("apiVersion", "kind", "metadata") + (("spec",) if spec_required else ()))


SCHEMAS: dict[str, Obj] = {
    "RayCluster": resource("ray.io/v1", RAY_CLUSTER_SPEC),
    "RayJob": resource("ray.io/v1", RAY_JOB_SPEC),
    "RayService": resource("ray.io/v1", RAY_SERVICE_SPEC),
    "ConfigMap": Obj({"apiVersion": Enum(("v1",)), "kind": "str", "metadata": OBJECT_META, "data": STR_MAP},
                     ("apiVersion", "kind", "metadata")),
    "Deployment": resource("apps/v1", Obj({"replicas": Int(0), "selector": Obj({"matchLabels": STR_MAP}),
                                           "template": POD_TEMPLATE}, ("selector", "template"))),
    "Service": resource("v1", Obj({"selector": STR_MAP, "type": "str", "ports": ListOf(Obj(
        {"name": "str", "port": Int(1), "targetPort": "any", "protocol": "str"}, ("port",)))})),
}
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


# ------------------------------------------------------------------------------ KubeRay's own spec checks
def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3])


def kuberay_checks(doc: dict) -> list[str]:
    """The checks validation.go runs before KubeRay creates anything, for the fields we use."""
    kind, spec, out = doc["kind"], doc.get("spec", {}), []
    name = doc["metadata"].get("name", "")
    if not DNS1035.fullmatch(name) or len(name) > 63:
        out.append(f"{kind} name {name!r} is not a DNS-1035 label")
    clusters = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig")}
    cluster = clusters.get(kind)
    if cluster:
        if not cluster["headGroupSpec"]["template"]["spec"].get("containers"):
            out.append("headGroupSpec should have at least one container")
        auto = cluster.get("enableInTreeAutoscaling", False)
        for group in cluster.get("workerGroupSpecs", []):
            if not group["template"]["spec"].get("containers"):
                out.append(f"worker group {group['groupName']} should have at least one container")
            if not auto and ("minReplicas" not in group or "maxReplicas" not in group):
                out.append(f"worker group {group['groupName']} must set both minReplicas and maxReplicas "
                           "when autoscaling is disabled")
            if group.get("minReplicas", 0) > group.get("maxReplicas", 2**31 - 1):
                out.append(f"worker group {group['groupName']} has minReplicas > maxReplicas")
        if cluster.get("authOptions", {}).get("mode", "token") == "token":
            version = cluster.get("rayVersion")
            if not version:
                out.append("authOptions.mode is 'token' but rayVersion is not set (Ray >= 2.52.0 needed)")
            elif version_tuple(version) < (2, 52, 0):
                out.append(f"authOptions.mode is 'token' but rayVersion {version} < 2.52.0")
    if kind == "RayJob":
        selector = spec.get("clusterSelector")
        if not spec.get("rayClusterSpec") and not selector:
            out.append("one of rayClusterSpec or clusterSelector must be set")
        if selector is not None:
            if not selector.get("ray.io/cluster"):
                out.append("cluster name in clusterSelector should not be empty")
            if spec.get("backoffLimit", 0) > 0:
                out.append("backoffLimit is incompatible with clusterSelector mode")
            if spec.get("submissionMode") == "SidecarMode":
                out.append("clusterSelector is not supported in SidecarMode")
        if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes", False):
            out.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
        if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes", False):
            out.append("a suspended RayJob needs shutdownAfterJobFinishes: true")
    return out


# ------------------------------------------------------------------------------ the manifests
def manifests() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_docs() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for p in manifests() for d in documents(p)}


def pod_specs(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    if doc["kind"] == "Deployment":
        return [spec["template"]["spec"]]
    cluster = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig")}
    cluster = cluster.get(doc["kind"])
    if not cluster:
        return []
    return [cluster["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in
                                                             cluster.get("workerGroupSpecs", []))]


def test_the_folder_has_the_three_kuberay_workloads():
    kinds = sorted(d["kind"] for p in manifests() for d in documents(p))
    assert {"RayJob", "RayService", "RayCluster"} <= set(kinds), kinds
    assert (K8S / "Dockerfile").is_file()


@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_manifest_matches_the_kuberay_fields(path):
    docs = documents(path)
    assert docs, f"{path.name} is empty"
    problems: list[str] = []
    for doc in docs:
        kind = doc.get("kind")
        assert kind in SCHEMAS, f"{path.name}: kind {kind!r} has no schema here"
        errors = Errors()
        check(doc, SCHEMAS[kind], f"{kind}/{doc.get('metadata', {}).get('name')}", errors)
        problems += errors.found + [f"{kind}: {p}" for p in kuberay_checks(doc)]
    assert not problems, f"{path.name}:\n" + "\n".join(problems)
    assert f"KubeRay {KUBERAY_VERSION}" in path.read_text() or "ray.io" not in path.read_text()


def test_the_schema_catches_what_kuberay_would_refuse():
    """The checker itself: a misspelt field, a wrong enum, a missing required field and a
    clusterSelector job with retries are each reported (a checker that passes all is useless)."""
    bad = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "Bad_Name"},
           "spec": {"entrypoint": "x", "submisionMode": "K8sJobMode", "submissionMode": "Batch",
                    "clusterSelector": {"ray.io/cluster": "c"}, "backoffLimit": 3,
                    "rayClusterSpec": {"rayVersion": "2.40.0", "workerGroupSpecs": [{"groupName": "w"}]}}}
    errors = Errors()
    check(bad, SCHEMAS["RayJob"], "RayJob/bad", errors)
    text = "\n".join(errors.found)
    assert "unknown field 'submisionMode'" in text
    assert "'Batch' is not one of" in text
    assert "required field 'headGroupSpec' is missing" in text
    assert "required field 'template' is missing" in text
    assert "backoffLimit is incompatible" in "\n".join(kuberay_checks(
        {**bad, "spec": {**bad["spec"], "rayClusterSpec": None}}))
    assert any("DNS-1035" in p for p in kuberay_checks({**bad, "spec": {"clusterSelector": {"ray.io/cluster": "c"}}}))


def test_every_pod_runs_the_image_the_dockerfile_builds_with_a_ray_version_that_matches():
    import ray

    docs = all_docs()
    for (kind, name), doc in docs.items():
        for pod in pod_specs(doc):
            for container in pod["containers"]:
                assert container["image"] == IMAGE, (kind, name, container["name"])
        cluster = {"RayJob": doc.get("spec", {}).get("rayClusterSpec"), "RayCluster": doc.get("spec"),
                   "RayService": doc.get("spec", {}).get("rayClusterConfig")}.get(kind)
        if cluster:
            # the image installs the Ray this package resolves to; KubeRay must be told the same one
            assert version_tuple(cluster["rayVersion"])[:2] == version_tuple(ray.__version__)[:2], (
                kind, name, cluster["rayVersion"], ray.__version__)
    assert f"-t {IMAGE.replace('CHANGE-ME-registry', '<registry>')}" in (K8S / "Dockerfile").read_text()


def test_mounted_configs_and_messages_are_valid_for_dfp_ray(tmp_path):
    from dfp_ray.config import load_config
    from dfp_ray.messages import parse_control_messages

    maps = {name: doc["data"] for (kind, name), doc in all_docs().items() if kind == "ConfigMap"}
    assert maps
    seen_configs = 0
    for name, data in maps.items():
        for key, text in data.items():
            path = tmp_path / name / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if key.endswith(".yaml"):
                cfg = load_config(path)
                seen_configs += 1
                assert cfg.mlflow.tracking_uri == "http://dfp-mlflow:5000"  # the Service in mlflow.yaml
                assert not cfg.cache_loaded_files  # a node-local cache is wrong on several nodes
                assert cfg.output.directory.startswith("s3://")
                assert all(r.startswith("s3://") for r in cfg.input.data_roots)
            elif key.endswith(".json"):
                parsed = parse_control_messages(path)
                assert parsed.messages and not parsed.rejections, parsed.rejections
                for msg in parsed.messages:
                    assert all(f.startswith("s3://") for f in msg.files), msg.files
    assert seen_configs >= 2
    mlflow = all_docs()[("Service", "dfp-mlflow")]
    assert mlflow["spec"]["ports"][0]["port"] == 5000


def test_entrypoints_are_dfp_ray_commands_reading_mounted_files():
    from dfp_ray.cli import build_parser

    docs = all_docs()
    jobs = {name: doc for (kind, name), doc in docs.items() if kind == "RayJob"}
    assert set(jobs) == {"dfp-batch", "dfp-stream-driver"}
    batch = shlex.split(jobs["dfp-batch"]["spec"]["entrypoint"])
    assert batch[:2] == ["dfp-ray", "run"]
    args = build_parser().parse_args(batch[1:])
    mounted = {f"/etc/dfp-ray/{k}" for k in docs[("ConfigMap", "dfp-batch-config")]["data"]}
    assert {args.config, *args.input_file} <= mounted
    stream = shlex.split(jobs["dfp-stream-driver"]["spec"]["entrypoint"])
    assert stream[:2] == ["dfp-ray", "stream"]
    for flag in ("--config", "--bootstrap-servers", "--input-topic", "--group-id"):
        assert flag in stream, flag
    assert stream[stream.index("--config") + 1] in {f"/etc/dfp-ray/{k}" for k in
                                                   docs[("ConfigMap", "dfp-stream-config")]["data"]}
    assert jobs["dfp-stream-driver"]["spec"]["clusterSelector"]["ray.io/cluster"] in {
        name for (kind, name) in docs if kind == "RayCluster"}
    if importlib.util.find_spec("dfp_ray.commands.stream") is not None:  # once `dfp-ray stream` exists
        build_parser().parse_args(stream[1:])


def test_the_serve_config_builds_the_app_config():
    from dfp_ray.serve.config import load_serve_config

    service = all_docs()[("RayService", "dfp-serve")]
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["import_path"] == "dfp_ray.serve.deployment:build_app"
    local = yaml.safe_load((ROOT / "configs" / "serve_app.yaml").read_text())["applications"][0]
    assert app["import_path"] == local["import_path"] and app["route_prefix"] == local["route_prefix"]
    cfg = load_serve_config(None, dict(app["args"]))
    assert cfg.deployment.num_replicas == 2 and not cfg.fingerprint.allow_model_code
    assert serve["http_options"]["host"] == "0.0.0.0"  # reachable through the Service, not loopback only
    env = {e["name"] for pod in pod_specs(service) for c in pod["containers"] for e in c.get("env", [])}
    assert {cfg.auth.token_env, cfg.fingerprint.key_env} <= env


def test_dockerfile_installs_torch_first_then_the_package_with_torch_pinned():
    text = (K8S / "Dockerfile").read_text()
    runs = [line for line in text.splitlines() if line.startswith("RUN pip install")]
    assert len(runs) == 2, runs
    assert '"torch==${TORCH_VERSION}"' in runs[0] and "--index-url" in runs[0]
    assert runs[1].startswith("RUN pip install . ") and '"torch==${TORCH_VERSION}"' in runs[1]
    assert "ARG TORCH_VERSION=2.13.0" in text
    assert re.search(r"apt-get install .*\bwget\b", text)  # KubeRay's probes use wget
    assert "USER ray" in text
