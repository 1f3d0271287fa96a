"""The pipeline's configuration: one pydantic model, loaded from YAML, the one place for defaults.

``configs/duo.yaml`` and ``configs/azure.yaml`` are instances of :class:`DFPConfig`. Command-line
flags override file values (see :func:`load_config`). Unknown keys are errors.

Why over ~400 lines: every configuration model and its default, in one place (the one source of
truth for defaults).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dfp_ray.autoencoder.calibration import DEFAULT_ALERT_RATE, DEFAULT_POPULATION_SHARE
from dfp_ray.autoencoder.params import AutoencoderParams
from dfp_ray.streaming.config import KafkaConfig, KafkaSinkConfig
from dfp_ray.yaml_config import ConfigError, parse_override, read_yaml, set_dotted, validate_model

TrainUsers = Literal["all", "generic", "individual", "none"]
DEFAULT_STATE_DIR = ".dfp_ray"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MLflowConfig(_Strict):
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI. Default: sqlite:///<state_dir>/mlflow.db (embedded, no server). "
        "Any MLflow URI works: http://host:5000, databricks, ...",
    )
    registry_uri: str | None = Field(None, description="Model-registry URI, if different from tracking_uri.")
    artifact_location: str | None = Field(
        None, description="Artifact root for new experiments. Default: <state_dir>/mlartifacts."
    )
    model_name_template: str = Field(
        "DFP-{source}-{user}", description="Registered model name; {user} is made registry-safe."
    )
    experiment_template: str = Field(
        "dfp/{source}/training/{model}", description="Experiment per registered model."
    )
    refresh_seconds: float = Field(
        30.0, ge=0, description="How often a cached model checks the registry for a newer version."
    )
    sqlite_wal: bool = Field(
        True,
        description="Embedded sqlite store: WAL mode with synchronous=NORMAL (docs/registry.md, Concurrency). "
        "false keeps the file's journal mode: for a store on NFS or another network file system.",
    )


class DetectionConfig(_Strict):
    """Which scored rows are detections (see docs/scoring.md).

    ``calibrated`` (default): each model flags the rows whose ``mean_abs_z`` passes its own
    threshold for ``alert_rate``, estimated from rows it held out in training; the output says
    which threshold was used (``alert_threshold``, ``threshold_source``) and ``anomaly_score``
    = ``mean_abs_z / alert_threshold`` ranks rows of all users on one scale (detection: > 1).
    With ``population_share`` > 0 the generic model also scores the events of users with a
    model of their own at its share of the rate (the population check: ``population_score``,
    ``detected_by``; docs/scoring.md section 2b).
    ``fixed``: Morpheus's rule, ``score_column > threshold`` for every model.
    """

    rule: Literal["calibrated", "fixed"] = Field(
        "calibrated", description="calibrated: per-model thresholds for alert_rate; fixed: score_column > threshold."
    )
    alert_rate: float = Field(
        DEFAULT_ALERT_RATE, gt=0, lt=0.5,
        description="calibrated rule: the share of a model's normal events it should flag (0.003 = 3 in 1,000).",
    )
    population_share: float = Field(
        DEFAULT_POPULATION_SHARE, ge=0, lt=1,
        description="calibrated rule: the part of alert_rate given to the population check. Every event of a "
        "user with a model of their own is also scored by the source's generic model (trained on every "
        "user), which flags values new for everyone (a foreign country, an attacker's browser) that a user "
        "with varied habits' own model forgives. The own model flags alert_rate x (1 - population_share) of "
        "its normal events, the generic model alert_rate x population_share, counting only features the "
        "user's own model finds unusual too; an event is a detection when either flags it (detected_by says "
        "which). 0 = own model only (Morpheus). Needs a registered generic "
        "model; without one the own model gets the whole alert_rate.",
    )
    threshold: float = Field(2.0, description="fixed rule: rows whose score column exceeds this are detections.")
    score_column: Literal["mean_abs_z", "max_abs_z"] = Field(
        "mean_abs_z", description="fixed rule: the score compared with threshold (Morpheus: mean_abs_z)."
    )
    explain_top: int = Field(
        3, ge=0, le=10,
        description="Drivers named per detection (driver_<i>, driver_<i>_value, _expected, _z; explanation).",
    )
    incident_gap_hours: float = Field(
        24.0, ge=0,
        description="Detections of one user with the same top driver (and, for a categorical feature, the same "
        "value), each within this many hours of the previous one, are one incident: incident_id (the event id "
        "of its first detection) and incident_rank (1 for the first). A queue of incident_rank == 1 shows a "
        "four-day trip to a new city once, not once per sign-in (docs/scoring.md, 'Incidents'). 0 = every "
        "detection is an incident of its own.",
    )


class OutputConfig(_Strict):
    directory: str = Field("dfp_output", description="Where detection files are written (local or s3://).")
    format: Literal["csv", "jsonl"] = "csv"
    filename_template: str = Field(
        "dfp_detections_{source}.{ext}", description="Detections file name; {source}, {ext}."
    )
    scores_filename_template: str = Field("dfp_scores_{source}.{ext}", description="All-scores file name.")
    write_all_scores: bool = Field(False, description="Also write every scored row, not just detections.")
    include_columns: list[str] = Field(default_factory=list, description="Regexes; keep only matching columns.")
    exclude_columns: list[str] = Field(default_factory=list, description="Regexes; drop matching columns.")
    keep_runs: int = Field(
        10, ge=1, description="Completed runs whose files are kept under <directory>/runs/ (the published "
        "files are the newest run's that scored anything; older runs are deleted beyond this many).",
    )
    file_mode: str = Field(
        "0600", pattern=r"^0?[0-7]{3}$", description="Permission bits (octal) of the output files a run "
        "creates; the default lets only the owner read detections.",
    )


class InputConfig(_Strict):
    data_roots: list[str] = Field(
        default_factory=list, description="Folders (local) and prefixes (s3://bucket/prefix) that control "
        "messages may read files from. A glob or file outside every root rejects its message. Default: "
        "the working directory only. Relative folders are resolved when the config is loaded.",
    )

    @field_validator("data_roots")
    @classmethod
    def _absolute(cls, roots: list[str]) -> list[str]:
        out = []
        for root in roots:
            if not root:
                raise ValueError("a data root must not be empty")
            if "://" in root and not root.startswith("file://"):
                out.append(root.rstrip("/"))
            else:
                out.append(os.path.realpath(os.path.expanduser(root.removeprefix("file://"))))
        return out

    def roots(self) -> list[str]:
        """The roots in force: the configured ones, or the working directory."""
        return self.data_roots or [os.path.realpath(os.getcwd())]


class RayConfig(_Strict):
    address: str | None = Field(None, description="Ray cluster address; None starts/uses a local Ray.")
    num_user_actors: int | None = Field(
        None, ge=1, description="User-actor pool size. Default: GPUs when present, else CPUs available to Ray."
    )
    num_gpus_per_actor: float = Field(
        0.0, ge=0, description="Fractional GPUs per user actor (0 = CPU; e.g. 0.25 packs 4 actors per GPU)."
    )
    num_cpus_per_actor: float = Field(1.0, gt=0)
    resources_per_actor: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each pool actor reserves, e.g. {dfp_pool: 1} "
        "to keep the pool on the nodes started with --resources='{\"dfp_pool\": 4}' (not CPU or GPU: use "
        "num_cpus_per_actor / num_gpus_per_actor). The generic model's own actor reserves none.",
    )
    actor_scheduling: Literal["default", "spread"] = Field(
        "default", description="Where Ray places the user actors: default (Ray's: fills a node before the "
        "next) or spread (round-robin over the nodes that fit, so the pool spans the cluster).",
    )
    shared_paths: list[str] = Field(
        default_factory=list, description="Local folders every node of the cluster mounts at the same path "
        "(NFS, EFS): state and input files under them count as shared when the cluster has several nodes "
        "(see docs/scaling.md). Relative folders are resolved when the config is loaded.",
    )
    actor_concurrency: int = Field(
        1, ge=1, description="Calls a user actor runs at once (threads): >1 lets the MLflow registration "
        "of one user overlap the fit of the next (fits still run one at a time per actor), at the price of "
        "sharing the actor's CPUs; on 2 fully busy cores it measured no faster.",
    )
    max_models_cached: int = Field(
        1024, ge=1, description="Loaded models kept per user actor (LRU, ~2.5 MB each with the default "
        "layers). Keep it above the users an actor owns, or inference reloads models from the registry.",
    )
    max_restarts: int = Field(
        3, ge=0, description="Times Ray restarts a user, sink or router actor that died (its state is "
        "restored from the registry and checkpoints, and the work it had is sent again).",
    )
    task_retries: int = Field(
        3, ge=0, description="Times an idempotent actor call (loading a chunk, scoring, writing) is retried "
        "after its actor died.",
    )
    generic_actor: bool = Field(
        True, description="CPU pools: train the generic model on an actor of its own beside the pool (it "
        "owns generic_user and no individual user, and reserves no CPU). The generic model sees every row "
        "and is a training message's long pole: on a pool actor it shares that actor with the users the "
        "actor owns while the others idle at the end (see docs/pipeline.md). "
        "False, or a GPU pool: it trains on a pool actor.",
    )
    generic_threads_after_pool: int | None = Field(
        None, ge=1, description="With generic_actor: intra-op threads the generic model's fit moves to, "
        "from its next epoch, once every pool actor has finished its users (their CPUs would idle for "
        "the rest of the fit). None = the pool's CPUs (pool size x num_cpus_per_actor); always capped "
        "by the CPUs the generic actor's process may use. 1 keeps it on one thread.",
    )
    load_parallelism: int | None = Field(
        None, ge=1, description="Loading: a batch's files are read and mapped in up to this many chunks at "
        "once, on the (then idle) user actors. None = pool size; 1 = the router reads every file itself.",
    )
    load_chunk_files: int = Field(
        8, ge=1, description="Loading: fewest files per parallel chunk (smaller batches load in one piece).",
    )
    users_per_call: int = Field(
        512, ge=1, description="Inference: users an owner scores (and hands to the sink) at once; "
        "bounds the memory of one scoring call.",
    )
    message_timeout_s: float = Field(
        14_400.0, gt=0, description="Give up on a control message after this many seconds (default 4 h): "
        "it becomes a dead letter with that reason and the run goes on with the next message.",
    )


    @field_validator("resources_per_actor")
    @classmethod
    def _custom_resources(cls, resources: dict[str, float]) -> dict[str, float]:
        for name, amount in resources.items():
            if name in ("CPU", "GPU", "memory", "object_store_memory"):
                raise ValueError(f"{name!r} is not a custom resource: use num_cpus_per_actor / num_gpus_per_actor")
            if not name or amount <= 0:
                raise ValueError(f"resource {name!r}: a name and an amount above 0 (got {amount})")
        return resources

    @field_validator("shared_paths")
    @classmethod
    def _shared_absolute(cls, paths: list[str]) -> list[str]:
        if any("://" in p and not p.startswith("file://") for p in paths):
            raise ValueError("shared_paths are local mount points (object storage is always shared)")
        return [os.path.realpath(os.path.expanduser(p.removeprefix("file://"))) for p in paths]


CacheMode = Literal["aggregate", "batch"]


class CacheSettings(_Strict):
    """One rolling window's rules (Morpheus's ``DFPRollingWindowStage`` options).

    ``aggregate``: rows accumulate over ``max_history_days``; the window is emitted whole (and
    kept) once it holds ``min_history`` rows and ``min_increment`` rows arrived since the last
    emit. ``batch``: rows accumulate until the same thresholds are met, are emitted, and the
    window is flushed (emptied)."""

    cache_mode: CacheMode = Field("aggregate", description="aggregate (keep and emit the whole window) or batch "
                                  "(emit what accumulated, then flush).")
    min_history: int = Field(300, ge=1, description="Rows a window needs before it is emitted.")
    min_increment: int = Field(300, ge=0, description="New rows needed since the last emit.")
    max_history_days: int = Field(60, ge=1, description="Rows older than this many days before the newest "
                                  "row leave the window.")
    max_rows: int = Field(
        100_000, ge=1, description="Cap on a window's rows (memory bound per user): the newest are kept; a "
        "row no newer than the oldest row kept is not admitted (it would be evicted first).",
    )


def _inference_window() -> CacheSettings:
    return CacheSettings(cache_mode="batch", min_history=1, min_increment=0)


class WindowConfig(CacheSettings):
    """Rolling windows of streaming messages (Morpheus's DFPRollingWindow; see docs/streaming.md).

    The top-level keys are the training window (Morpheus: aggregate, 300 / 300 / 60 days);
    ``inference`` is the inference window (Morpheus: batch, min history 1, min increment 0, i.e.
    every batch is scored as it arrives and nothing is kept)."""

    inference: CacheSettings = Field(
        default_factory=_inference_window, description="Inference window of streaming messages (default: "
        "batch mode, 1 / 0: each batch is scored at once, nothing is held back).",
    )
    checkpoint_dir: str | None = Field(
        None, description="Where windows are checkpointed (local folder or s3:// prefix). Default: "
        "<state_dir>/windows. A restarted actor or stream resumes from these files.",
    )
    applied_memory: int = Field(
        256, ge=1, description="Work items (run/message/batch) a window remembers having counted, so a "
        "message redelivered after a crash is not counted twice.",
    )


class LabelsConfig(_Strict):
    """Analyst verdicts on detections (label messages; see docs/streaming.md)."""

    directory: str | None = Field(None, description="Where verdicts and benign rows are stored. Default: "
                                  "<state_dir>/labels.")
    benign_weight: int = Field(
        1, ge=1, description="Times each benign-labelled row is repeated in its user's (and the generic "
        "model's) training data.",
    )
    max_benign_rows_per_user: int = Field(
        10_000, ge=0, description="Newest benign rows per user added to a training (memory bound).",
    )
    max_verdicts_per_message: int = Field(100_000, ge=1, description="Larger label messages are rejected.")

    @field_validator("directory")
    @classmethod
    def _local_directory(cls, directory: str | None) -> str | None:
        if directory and "://" in directory and not directory.startswith("file://"):
            raise ValueError(f"{directory!r}: the verdict store is a local folder (on several nodes: one every "
                             "node mounts at the same path, listed in ray.shared_paths)")
        return directory.removeprefix("file://") if directory else directory


class DFPConfig(_Strict):
    """Everything a DFP run needs; the defaults are Morpheus's where it has one."""

    source: str = Field("duo", description="Log source name (model names, output names).")
    schema_: str | None = Field(
        None,
        alias="schema",
        description="Built-in schema name (duo, azure) or path to a schema YAML. Default: the source name.",
    )
    state_dir: str = Field(
        DEFAULT_STATE_DIR, description="Local folder of the driver's and actors' state: the embedded MLflow "
        "registry (when mlflow.tracking_uri is unset), load cache, dead letters, stream offsets, and by default "
        "window checkpoints and verdicts. Never a URL: to keep state in object storage or a server set "
        "window.checkpoint_dir: s3://..., mlflow.tracking_uri and mlflow.artifact_location instead.",
    )
    train_users: TrainUsers = Field(
        "all", description="all = generic + one per user; generic; individual; none (inference only)."
    )
    only_users: list[str] = Field(default_factory=list, description="Process only these users.")
    skip_users: list[str] = Field(default_factory=list, description="Ignore these users.")
    min_train_rows: int = Field(
        10, ge=2, description="Payload training: users with fewer rows get no model (generic fallback)."
    )
    fallback_to_generic: bool = Field(True, description="Infer with the generic model when a user has none.")
    cache_loaded_files: bool = Field(True, description="Cache mapped frames on disk under state_dir/cache.")
    autoencoder: AutoencoderParams = Field(default_factory=AutoencoderParams)
    mlflow: MLflowConfig = Field(default_factory=MLflowConfig)
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    window: WindowConfig = Field(default_factory=WindowConfig)
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    kafka: KafkaConfig = Field(
        default_factory=KafkaConfig, description="Kafka source of `dfp-ray stream` (flags override it)."
    )
    kafka_sink: KafkaSinkConfig = Field(
        default_factory=KafkaSinkConfig, description="Detections to a Kafka topic too (off without a topic)."
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for s3:// inputs/outputs (e.g. client_kwargs)."
    )

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @field_validator("source")
    @classmethod
    def _source_name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ "):
            raise ValueError("source must be a non-empty name without slashes or spaces")
        return v

    @field_validator("state_dir")
    @classmethod
    def _local_state_dir(cls, v: str) -> str:
        if not v:
            raise ValueError("state_dir must not be empty")
        if "://" not in v or v.startswith("file://"):
            return v.removeprefix("file://")
        prefix = v.rstrip("/")
        raise ValueError(
            f"{v!r} is a URL; state_dir must be a local folder (it holds the load cache, dead letters, stream "
            "offsets and the embedded sqlite registry, which cannot live in object storage). Keep it local "
            f"(e.g. state_dir: {DEFAULT_STATE_DIR}) and put the shared state in object storage and a server: "
            f"window.checkpoint_dir: {prefix}/windows, mlflow.tracking_uri: http://<mlflow server>:5000, "
            f"mlflow.artifact_location: {prefix}/mlartifacts (see docs/scaling.md)")

    @property
    def schema_ref(self) -> str:
        return self.schema_ or self.source

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser().resolve()

    @property
    def tracking_uri(self) -> str:
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        return f"sqlite:///{self.state_path / 'mlflow.db'}"

    @property
    def windows_dir(self) -> str:
        """Where rolling windows are checkpointed (a local folder or an ``s3://`` prefix)."""
        return (self.window.checkpoint_dir or str(self.state_path / "windows")).rstrip("/")

    @property
    def labels_path(self) -> Path:
        return Path(self.labels.directory).expanduser().resolve() if self.labels.directory else self.state_path / "labels"

    @property
    def artifact_location(self) -> str:
        return self.mlflow.artifact_location or (self.state_path / "mlartifacts").as_uri()


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> DFPConfig:
    """Load a config file (or the defaults) and apply dotted-key overrides.

    Overrides come from CLI flags, e.g. ``{"output.directory": "out", "autoencoder.epochs": 5}``;
    ``None`` values are ignored so unset flags never clobber the file.
    """
    data: dict[str, Any] = read_yaml(path) if path else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, key, value)
    return validate_model(data, DFPConfig, str(path) if path else "<defaults + command line>")


def overrides_from_strings(items: list[str] | None) -> dict[str, Any]:
    """``--set key.path=value`` flags -> an overrides dict."""
    result: dict[str, Any] = {}
    for item in items or []:
        key, value = parse_override(item)
        result[key] = value
    return result


__all__ = [
    "CacheSettings",
    "ConfigError",
    "DFPConfig",
    "DetectionConfig",
    "InputConfig",
    "KafkaConfig",
    "KafkaSinkConfig",
    "LabelsConfig",
    "MLflowConfig",
    "OutputConfig",
    "RayConfig",
    "WindowConfig",
    "load_config",
    "overrides_from_strings",
]
