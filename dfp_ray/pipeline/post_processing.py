"""Post-processing (Morpheus's ``DFPPostprocessing``): stamp each scored row with when and by which model."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd


def add_postprocessing(
    scored: pd.DataFrame, *, model_version: str | pd.Series, detected_at: datetime | None = None
) -> pd.DataFrame:
    """Add ``event_time`` (ISO-8601 UTC, when scored) and ``model_version`` (``name:version``).

    >>> import pandas as pd
    >>> from datetime import datetime, timezone
    >>> out = add_postprocessing(pd.DataFrame({"mean_abs_z": [3.0]}), model_version="DFP-duo-alice:3",
    ...                          detected_at=datetime(2022, 8, 30, 12, tzinfo=timezone.utc))
    >>> out[["event_time", "model_version"]].iloc[0].tolist()
    ['2022-08-30T12:00:00.000Z', 'DFP-duo-alice:3']
    """
    when = (detected_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    out = scored.copy()
    out["event_time"] = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    out["model_version"] = model_version
    return out
