"""The sink actor: writes detections (and optionally all scores) durably.

A write returns only after the rows are on disk (fsync) or stored in the object store, so
the router may treat a message as done once its sink writes have returned. The rows arrive
already filtered (filter detections runs once, in the user actor that scored them).
"""

from __future__ import annotations

import ray

from dfp_ray.config import DFPConfig
from dfp_ray.pipeline.frames import DetectionFrame, ScoredFrame
from dfp_ray.pipeline.serialize import serialize
from dfp_ray.pipeline.write_to_file import TableWriter, output_path
from dfp_ray.results import SinkWrite


@ray.remote(num_cpus=0)
class SinkActor:
    def __init__(self, cfg: DFPConfig):
        self.cfg = cfg
        out = cfg.output
        self.detections = TableWriter(output_path(out, cfg.source), out.format, out, cfg.storage_options)
        self.scores = (
            TableWriter(output_path(out, cfg.source, scores=True), out.format, out, cfg.storage_options)
            if out.write_all_scores else None
        )

    def write(self, detections: DetectionFrame | None, scores: ScoredFrame | None = None) -> SinkWrite:
        """Write the detections (and every scored row, when all scores are kept)."""
        written = SinkWrite()
        if detections is not None and len(detections):
            written.detections = self.detections.write(serialize(detections, self.cfg.output))
        if self.scores is not None and scores is not None and len(scores):
            written.scores = self.scores.write(serialize(scores, self.cfg.output))
        return written

    def paths(self) -> dict[str, str | None]:
        return {"detections": self.detections.url, "scores": self.scores.url if self.scores else None}
