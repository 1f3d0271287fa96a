"""The sink actor: writes detections (and optionally all scores) durably.

A write returns only after the rows are on disk (fsync) or stored in the object store, so
the router may treat a message as done once its sink writes have returned.
"""

from __future__ import annotations

import pandas as pd
import ray

from dfp_ray.config import DFPConfig
from dfp_ray.detections import filter_detections
from dfp_ray.output import TableWriter, output_path


@ray.remote(num_cpus=0)
class SinkActor:
    def __init__(self, cfg: dict):
        self.cfg = DFPConfig.model_validate(cfg)
        out = self.cfg.output
        self.detections = TableWriter(
            output_path(out, self.cfg.source), out.format, out, self.cfg.storage_options
        )
        self.scores = (
            TableWriter(output_path(out, self.cfg.source, scores=True), out.format, out, self.cfg.storage_options)
            if out.write_all_scores else None
        )

    def write(self, *frames: pd.DataFrame | None) -> dict:
        """Write scored rows (or only detections: the filter is applied here either way)."""
        frames = [f for f in frames if f is not None and len(f)]
        if not frames:
            return {"detections": 0}
        scored = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        detections = filter_detections(scored, self.cfg.detection)
        self.detections.write(detections)
        if self.scores is not None:
            self.scores.write(scored)
        return {"detections": len(detections)}

    def paths(self) -> dict:
        return {"detections": self.detections.url, "scores": self.scores.url if self.scores else None}
