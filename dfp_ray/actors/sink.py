"""The sink actor: writes detections (and optionally all scores) durably, each row once per run.

A write returns only after the rows are on disk (fsync) or stored in the object store, so
the router may treat a message as done once its sink writes have returned. The rows arrive
already filtered (filter detections runs once, in the user actor that scored them). Writes
are keyed by run: a restarted sink (``ray.max_restarts``) reopens the run's files and the
event ids they hold, so a write retried after a crash adds no duplicate row.
"""

from __future__ import annotations

import ray

from dfp_ray import metrics
from dfp_ray.config import DFPConfig
from dfp_ray.pipeline.frames import DetectionFrame, ScoredFrame
from dfp_ray.pipeline.serialize import serialize
from dfp_ray.pipeline.write_to_file import RunOutput
from dfp_ray.results import SinkWrite


@ray.remote(num_cpus=0)
class SinkActor:
    def __init__(self, cfg: DFPConfig):
        self.cfg = cfg
        self.runs: dict[str, RunOutput] = {}

    def _run(self, run_id: str) -> RunOutput:
        if run_id not in self.runs:
            self.runs[run_id] = RunOutput(self.cfg.output, self.cfg.source, run_id, self.cfg.storage_options)
        return self.runs[run_id]

    @ray.method(max_task_retries=-1)  # idempotent: rows already in the run's files are skipped
    def write(self, run_id: str, detections: DetectionFrame | None, scores: ScoredFrame | None = None) -> SinkWrite:
        """Write the detections (and every scored row, when all scores are kept) of ``run_id``;
        returns the rows that were new."""
        run = self._run(run_id)
        written = SinkWrite()
        if detections is not None and len(detections):
            written.detections = run.detections.write(serialize(detections, self.cfg.output))
        if run.scores is not None and scores is not None and len(scores):
            written.scores = run.scores.write(serialize(scores, self.cfg.output))
        return metrics.rows_written(written, self.cfg.source)

    def publish(self, run_id: str) -> dict[str, str | None]:
        """Switch the published files to this run's (atomically); see :class:`RunOutput`."""
        paths = self._run(run_id).publish()
        self.runs.pop(run_id, None)
        return paths

    def rows(self, run_id: str) -> SinkWrite:
        """Rows durably in the run's files so far (counted from the files after a restart)."""
        run = self._run(run_id)
        return SinkWrite(detections=run.detections.rows_written,
                         scores=run.scores.rows_written if run.scores is not None else 0)
