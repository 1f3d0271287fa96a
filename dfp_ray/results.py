"""Typed results: what crosses an actor boundary, or goes back to the driver, one model per kind.

Actors and the driver exchange these pydantic models (Ray pickles them), never bare dicts, so
a field that is renamed or mistyped fails where it is made, not three processes later. The
flow they describe, in pipeline order:

- :class:`LoadInfo`: what a loader read from one chunk of a batch, and for whom;
- :class:`TrainResult` per model fitted (or skipped, with the reason);
- :class:`InferResult` per user scored (or not, with the error), and :class:`InferBatch`
  per owner call: the users and what the sink durably wrote for them (:class:`SinkWrite`);
- :class:`MessageResult` per control message, built by the router from the above;
- :class:`Progress`, the router's live counters the driver draws;
- :class:`RunSummary`, the driver's account of a whole run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from dfp_ray.autoencoder.calibration import Calibration
from dfp_ray.labels import LabelOutcome
from dfp_ray.messages import Rejection

MessageKind = Literal["training", "inference", "load_only", "label"]


def add_counts(into: dict[str, int], more: dict[str, int]) -> None:
    """Add per-reason counts into ``into``."""
    for reason, count in more.items():
        into[reason] = into.get(reason, 0) + count


class FileProblem(BaseModel):
    """A file that could not be read, and why (the reason says what to do)."""

    url: str
    reason: str


class LoadInfo(BaseModel):
    """One loader's chunk of a batch: files read, rows kept, and the users each owner received."""

    files: int = 0
    files_from_cache: int = 0
    rows: int = 0
    errors: list[FileProblem] = Field(default_factory=list)
    owner_users: list[list[str]] = Field(
        default_factory=list, description="Per owner index: the users whose rows went to that owner."
    )
    owner_rows: list[int] = Field(default_factory=list, description="Per owner index: rows sent to it.")
    skipped: dict[str, int] = Field(
        default_factory=dict, description="Records dropped, per reason (malformed, outside the time window)."
    )


class TrainResult(BaseModel):
    """One model's training: fitted and registered, or skipped with the reason."""

    user: str = Field(description="The user's name; 'generic_user' for the generic model.")
    generic: bool = Field(False, description="True for the all-users fallback model.")
    rows: int
    trained: bool
    model_version: str | None = None
    seconds: float = 0.0
    fit_seconds: float = 0.0
    register_seconds: float = 0.0
    reason: str = ""
    worker: int = -1
    epochs_run: int = 0
    best_val_loss: float | None = None
    fit_threads: int = 0  # intra-op threads at the end of the fit (more once widened)
    window_added: int = Field(0, description="Streaming: rows this batch added to the user's rolling window.")
    window_duplicates: int = Field(0, description="Streaming: rows the window already held (not counted again).")
    retryable: bool = Field(False, description="Failed for a reason outside the data (registry, storage): "
                            "processing the message again may succeed; a stream does not commit it.")
    holdout: Calibration | None = Field(
        None, description="A new user model's held-out scores; the router pools them into the source's "
        "population and drops them from the result.")


class InferResult(BaseModel):
    """One user's rows scored (``model_version`` names the model), or not (``error`` says why)."""

    user: str
    rows: int
    model_version: str | None
    seconds: float
    worker: int
    error: str = ""
    retryable: bool = Field(False, description="Failed for a reason outside the data (registry, storage).")
    held: int = Field(0, description="Streaming: rows held back by the inference window (scored when it emits).")


class SinkWrite(BaseModel):
    """Rows the sink durably wrote for one call."""

    detections: int = 0
    scores: int = 0


class InferBatch(BaseModel):
    """One owner's inference call: per-user results and what reached the sink."""

    users: list[InferResult] = Field(default_factory=list)
    written: SinkWrite = Field(default_factory=SinkWrite)

    @property
    def rows_scored(self) -> int:
        return sum(r.rows for r in self.users if not r.error)


class StageSeconds(BaseModel):
    load: float = 0.0
    train: float = 0.0
    infer: float = 0.0


class MessageResult(BaseModel):
    """Everything one control message did; ``rejection`` is set when it was refused."""

    message_id: str
    kind: MessageKind
    data_type: str
    files: int = 0
    files_from_cache: int = 0
    rows: int = 0
    skipped_records: dict[str, int] = Field(
        default_factory=dict, description="Records dropped while loading, per reason."
    )
    trained: list[TrainResult] = Field(default_factory=list)
    skipped_users: list[TrainResult] = Field(default_factory=list)
    inferred: list[InferResult] = Field(default_factory=list)
    scored: int = 0
    detections: int = 0
    rejection: Rejection | None = None
    failure: str | None = Field(
        None, description="The message could not be completed for a reason outside it (an output or state "
        "that could not be made durable, a registry that did not answer): run it again, never skip it.",
    )
    errors: list[str] = Field(default_factory=list)
    labels: LabelOutcome | None = Field(None, description="Label messages: what the verdicts did.")
    stage_seconds: StageSeconds = Field(default_factory=StageSeconds)
    seconds: float = 0.0
    generic_widened_at_s: float | None = Field(
        None, description="Seconds into the message when the generic fit moved to the pool's CPUs."
    )
    generic_widened_threads: int | None = Field(None, description="Threads the generic fit moved to.")

    def record_training(self, res: TrainResult) -> None:
        (self.trained if res.trained else self.skipped_users).append(res)

    @property
    def retryable_errors(self) -> list[str]:
        """Per-user failures that another attempt may fix (registry, storage), as ``user: reason``."""
        return ([f"{r.user}: {r.reason}" for r in self.skipped_users if r.retryable]
                + [f"{r.user}: {r.error}" for r in self.inferred if r.retryable])

    def record_inference(self, batch: InferBatch) -> None:
        """Count one owner's scoring call (``detections`` is counted from the sink's files)."""
        self.inferred.extend(batch.users)
        self.errors.extend(r.error for r in batch.users if r.error)
        self.scored += batch.rows_scored

    def record_load(self, infos: list[LoadInfo]) -> None:
        self.files += sum(i.files for i in infos)
        self.files_from_cache += sum(i.files_from_cache for i in infos)
        self.rows += sum(i.rows for i in infos)
        for i in infos:
            add_counts(self.skipped_records, i.skipped)


class Progress(BaseModel):
    """The router's live counters for the message in flight (what the driver's bars show)."""

    message_id: str = ""
    stage: str = "starting"
    kind: str = ""
    files_total: int = 0
    files_loaded: int = 0
    rows_loaded: int = 0
    users_total: int = 0
    users_done: int = 0


class RunSummary(BaseModel):
    """What a batch run did, message by message, and where its outputs are."""

    messages: int = 0
    rejected: int = 0
    files: int = 0
    rows: int = 0
    skipped_records: dict[str, int] = Field(default_factory=dict, description="Records dropped, per reason.")
    users_trained: int = 0
    users_skipped: int = 0
    users_scored: int = 0
    users_without_model: int = 0
    rows_scored: int = 0
    detections: int = 0
    seconds: float = 0.0
    detections_path: str | None = Field(None, description="The published detections file (None: nothing scored).")
    scores_path: str | None = None
    run_folder: str | None = Field(None, description="This run's own output folder (kept for output.keep_runs runs).")
    dead_letter_path: str | None = None
    rejections: list[Rejection] = Field(default_factory=list)
    messages_detail: list[MessageResult] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rejected == 0

    def add(self, res: MessageResult) -> None:
        """Count one message's result (a rejected message adds its rejection)."""
        if res.rejection is not None:
            self.rejections.append(res.rejection)
        self.files += res.files
        self.rows += res.rows
        add_counts(self.skipped_records, res.skipped_records)
        self.users_trained += len(res.trained)
        self.users_skipped += len(res.skipped_users)
        self.users_scored += sum(1 for r in res.inferred if not r.error)
        self.users_without_model += sum(1 for r in res.inferred if r.error)
        self.rows_scored += res.scored
        self.detections += res.detections
        self.messages_detail.append(res)

    def table(self) -> str:
        rows = [
            ("messages processed", self.messages), ("messages rejected", self.rejected),
            ("files loaded", self.files), ("rows loaded", self.rows),
            ("records skipped", sum(self.skipped_records.values())),
            ("users trained", self.users_trained), ("users skipped (too few rows)", self.users_skipped),
            ("users scored", self.users_scored), ("users without a model", self.users_without_model),
            ("rows scored", self.rows_scored),
            ("detections", self.detections), ("wall time (s)", f"{self.seconds:.1f}"),
        ]
        if self.detections_path:
            rows.append(("detections file", self.detections_path))
        if self.scores_path:
            rows.append(("scores file", self.scores_path))
        if self.run_folder:
            rows.append(("this run's files", self.run_folder))
        if self.rejected:
            rows.append(("dead letters", self.dead_letter_path))
        width = max(len(k) for k, _ in rows)
        lines = ["Run summary", "-" * (width + 30)] + [f"{k:<{width}}  {v}" for k, v in rows]
        for reason, count in sorted(self.skipped_records.items()):
            lines.append(f"SKIPPED  {count} records: {reason}")
        for r in self.rejections:
            field = f" [{r.field}]" if r.field else ""
            lines.append(f"REJECTED {r.message_id}{field}: {r.reason}")
        return "\n".join(lines)


class WorkKey(BaseModel):
    """Which run and message a training call belongs to; on a retry, which models are still owed."""

    run_id: str
    message_id: str
    retry: bool = False
    only: list[str | None] | None = None  # models still owed (None in it: the generic model)
    batch: int | None = None  # streaming: the batch of the message (one per period)

    @property
    def tag(self) -> str:
        """``<run>/<message>`` (``/<batch>`` for a streaming batch): the ``dfp_work`` tag of the
        versions it trains and the work item its rolling windows remember."""
        base = f"{self.run_id}/{self.message_id}"
        return base if self.batch is None else f"{base}/{self.batch}"

    def wants(self, user: str | None) -> bool:
        return self.only is None or user in self.only
