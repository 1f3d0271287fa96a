"""Per-user rolling windows for streaming messages (REFERENCE A4 step 7).

Training messages in streaming mode do not train on each batch alone: a user's rows
accumulate in a window of the last ``max_history_days`` days, and a model is trained only
once the window holds ``min_history`` rows and ``min_increment`` rows arrived since the last
training. (Morpheus's "aggregate" mode.) Inference in streaming mode scores each batch as it
arrives (Morpheus's batch mode with min history 1 and increment 0), so it needs no window.

Windows are checkpointed as Parquet so a restarted user actor resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dfp_ray.config import WindowConfig


@dataclass
class RollingWindow:
    cfg: WindowConfig
    time_column: str
    id_column: str | None = None
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)
    new_since_emit: int = 0

    def append(self, frame: pd.DataFrame) -> pd.DataFrame | None:
        """Add a batch; return the window's rows when a training is due, else None."""
        combined = pd.concat([self.rows, frame], ignore_index=True) if len(self.rows) else frame.copy()
        before = len(self.rows)
        if self.id_column and self.id_column in combined.columns:
            ids = combined[self.id_column]
            combined = combined[ids.isna() | ~ids.duplicated(keep="first")]  # re-delivered rows
        combined = combined.sort_values(self.time_column, kind="stable").reset_index(drop=True)
        newest = combined[self.time_column].max()
        cutoff = newest - pd.Timedelta(days=self.cfg.max_history_days)
        self.new_since_emit += max(0, len(combined) - before)
        self.rows = combined[combined[self.time_column] >= cutoff].reset_index(drop=True)
        if len(self.rows) >= self.cfg.min_history and self.new_since_emit >= self.cfg.min_increment:
            self.new_since_emit = 0
            return self.rows.copy()
        return None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        frame = self.rows.copy()
        frame.attrs = {}
        frame["__new_since_emit"] = self.new_since_emit
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)  # atomic: a crash never leaves a half-written checkpoint

    @classmethod
    def load(cls, path: Path, cfg: WindowConfig, time_column: str, id_column: str | None) -> RollingWindow:
        frame = pd.read_parquet(path)
        new = int(frame["__new_since_emit"].iloc[0]) if len(frame) else 0
        return cls(cfg, time_column, id_column, frame.drop(columns="__new_since_emit"), new)
