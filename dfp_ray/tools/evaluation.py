"""Evaluate scored events against the ground truth that `dfp-ray datagen` injected.

The pipeline writes every scored inference row (``dfp_scores_{source}.csv``); datagen writes
``ground_truth.csv`` listing each injected anomalous event by ``event_id``. Evaluation is
event-level: an event is *detected* when its score is strictly greater than the threshold
(the same rule as the pipeline's detection filter), and *anomalous* when its id is in the
ground truth. Everything is computed with ``isin``/``merge``/``groupby`` so it stays fast on
millions of rows.

Labelled ids that never reached the scores (dropped by a filter, a date range, a crash) are
counted as misses and reported separately: silently evaluating only what was scored would
flatter recall.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)

# Columns whose values are identifiers or text, whatever they look like.
_TEXT_COLUMNS = ("event_id", "username", "model_version", "source", "kind", "threshold_source", "explanation")


def _is_text_column(name: str) -> bool:
    """Identifiers, and the explanation columns (``driver_1``, ``driver_1_value``, ...: a value
    such as "False" or "03:12" must stay as written)."""
    return name in _TEXT_COLUMNS or (name.startswith("driver_") and not name.endswith("_z"))


def default_rule(scores: pd.DataFrame, score_column: str | None, threshold: float | None) -> tuple[str, float]:
    """The detection rule a scores file was written with, unless the caller names one:
    ``anomaly_score > 1`` (the calibrated rule; also the fixed rule's rows carry it) when the
    file has that column, else Morpheus's ``mean_abs_z > 2``."""
    column = score_column or ("anomaly_score" if "anomaly_score" in scores.columns else "mean_abs_z")
    if threshold is None:
        threshold = 1.0 if column == "anomaly_score" else 2.0
    return column, float(threshold)
# Columns holding times; parsed to tz-aware UTC datetimes when present.
_TIME_COLUMNS = ("timestamp", "event_time")
_GROUND_TRUTH_REQUIRED = ("event_id", "kind")


class KindResult(BaseModel):
    """Recall for one kind of injected anomaly (only anomalies have a kind)."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    events: int
    detected: int
    recall: float


class EvaluationResult(BaseModel):
    """Event-level confusion counts and rates at one threshold.

    ``anomalous`` counts every labelled id (including ``missing_ground_truth_ids`` that were never
    scored, which are also in ``fn``); ``normal`` counts scored events that are not labelled.
    Rates whose denominator is zero are reported as 0.0.
    """

    model_config = ConfigDict(extra="forbid")

    threshold: float
    score_column: str = "mean_abs_z"
    events: int
    anomalous: int
    normal: int
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float
    recall: float
    f1: float
    false_positive_rate: float
    per_kind: list[KindResult]
    missing_ground_truth_ids: int


# --------------------------------------------------------------------------- loading


def _coerce_column(col: pd.Series) -> pd.Series:
    """Turn a column read as text into numbers or booleans when every value allows it."""
    text = col.astype(str)
    non_empty = text[text != ""]
    if non_empty.empty:
        return pd.to_numeric(text.replace("", np.nan), errors="coerce")
    if non_empty.isin(["True", "False", "true", "false"]).all() and len(non_empty) == len(text):
        return text.str.lower().eq("true")
    try:
        return pd.to_numeric(text.replace("", np.nan))
    except (ValueError, TypeError):
        return col


def _to_utc(col: pd.Series) -> pd.Series:
    """Parse ISO strings or epoch numbers (seconds or milliseconds) to UTC datetimes."""
    if pd.api.types.is_datetime64_any_dtype(col):
        return col.dt.tz_localize("UTC") if col.dt.tz is None else col.dt.tz_convert("UTC")
    if pd.api.types.is_numeric_dtype(col):
        values = pd.to_numeric(col, errors="coerce")
        unit = "ms" if values.abs().max(skipna=True) > 1e11 else "s"
        return pd.to_datetime(values, unit=unit, utc=True)
    return pd.to_datetime(col, utc=True, format="ISO8601", errors="coerce")


def normalise_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """Give a scores frame the types the evaluation and the report rely on.

    ``event_id``/``username``/``model_version`` become strings, ``timestamp``/``event_time``
    UTC datetimes and the score columns floats. Returns a copy; the input is left alone.
    """
    df = scores.copy()
    for name in df.columns:
        if name in _TEXT_COLUMNS[:5]:
            df[name] = df[name].astype(str)
        elif _is_text_column(name):  # explanations: empty for rows that are not detections
            df[name] = df[name].astype(object).where(df[name].notna(), "").astype(str)
    for name in _TIME_COLUMNS:
        if name in df.columns:
            df[name] = _to_utc(df[name])
    score_like = [
        c for c in df.columns
        if c.endswith(("_loss", "_z_loss")) or c in ("max_abs_z", "mean_abs_z", "anomaly_score", "alert_threshold")
        or (c.startswith("driver_") and c.endswith("_z"))
    ]
    for name in score_like:
        df[name] = pd.to_numeric(df[name], errors="coerce").astype(float)
    return df


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with path.open("r", encoding="utf-8") as fh:
            head = fh.read(4096).lstrip()
        lines = not head.startswith("[")
        df = pd.read_json(path, lines=lines, orient="records", dtype=False, convert_dates=False)
        return df
    if suffix in (".csv", ".txt", ".gz"):
        # Read as text first: ids such as "00042" and categories such as the literal "nan"
        # must survive; numeric columns are converted afterwards, column by column.
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
        for name in raw.columns:
            if not _is_text_column(name):
                raw[name] = _coerce_column(raw[name])
        return raw
    raise ValueError(
        f"{path}: unsupported file type {suffix!r}; scores must be CSV (.csv) or JSON lines (.jsonl/.json)"
    )


def load_scores(path: str | Path) -> pd.DataFrame:
    """Load a scores (or detections) file written by the pipeline: CSV, JSON lines or a JSON array.

    ``path`` may also be a directory holding exactly one ``dfp_scores_*`` file.
    """
    path = resolve_scores_path(path)
    df = _read_table(path)
    if "event_id" not in df.columns and "mean_abs_z" in df.columns:
        log.warning("%s has no event_id column: numbering the rows (ground truth cannot be matched to them; "
                    "declare an event id in the source schema, e.g. a `hash:` field)", path)
        df.insert(0, "event_id", [f"row-{i}" for i in range(len(df))])
    missing = [c for c in ("event_id", "mean_abs_z") if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: not a scores file, missing column(s) {missing}; expected the pipeline's "
            "dfp_scores_<source>.csv (event_id, username, timestamp, <f>_z_loss ..., mean_abs_z)"
        )
    return normalise_scores(df)


def resolve_scores_path(path: str | Path) -> Path:
    """Accept a scores file, or a directory that holds exactly one ``dfp_scores_*`` file."""
    path = Path(path)
    if path.is_dir():
        found = sorted(
            p for p in path.glob("dfp_scores_*") if p.suffix.lower() in (".csv", ".jsonl", ".json")
        )
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise FileNotFoundError(
                f"{path} is a directory with {len(found)} dfp_scores_* files ({names}); pass one file"
            )
        return found[0]
    if not path.exists():
        raise FileNotFoundError(f"scores file {path} does not exist")
    return path


def load_ground_truth(path: str | Path) -> pd.DataFrame:
    """Load ``ground_truth.csv`` (``event_id,source,username,timestamp,kind``; one row per anomaly)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ground-truth file {path} does not exist (written by `dfp-ray datagen`)")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in _GROUND_TRUTH_REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; a ground-truth file has columns "
            "event_id,source,username,timestamp,kind"
        )
    return normalise_ground_truth(df)


def normalise_ground_truth(ground_truth: pd.DataFrame) -> pd.DataFrame:
    """String ids and kinds, one row per id (a repeated id would count an anomaly twice)."""
    df = ground_truth.copy()
    df["event_id"] = df["event_id"].astype(str)
    df["kind"] = df["kind"].astype(str)
    if "timestamp" in df.columns:
        df["timestamp"] = _to_utc(df["timestamp"])
    dup = df["event_id"].duplicated()
    if dup.any():
        log.warning("ground truth lists %d event id(s) more than once; keeping the first", int(dup.sum()))
        df = df[~dup]
    return df.reset_index(drop=True)


# --------------------------------------------------------------------------- evaluation


def _ratio(num: int, den: int) -> float:
    return float(num) / float(den) if den else 0.0


def sources_in_scores(scores: pd.DataFrame) -> list[str]:
    """Sources named by ``model_version`` (``DFP-<source>-<user>:<version>``)."""
    if "model_version" not in scores.columns:
        return []
    found = scores["model_version"].astype(str).str.extract(r"^DFP-([^-:]+)-", expand=False).dropna()
    return sorted(found.unique().tolist())


def _select_source(scores: pd.DataFrame, ground_truth: pd.DataFrame, source: str | None) -> pd.DataFrame:
    """Keep the ground truth of the scored source, so another source's anomalies are not misses."""
    if "source" not in ground_truth.columns:
        return ground_truth
    if source is not None:
        return ground_truth[ground_truth["source"] == source]
    gt_sources = sorted(ground_truth["source"].unique().tolist())
    if len(gt_sources) <= 1:
        return ground_truth
    scored = [s for s in sources_in_scores(scores) if s in gt_sources]
    if len(scored) == 1:
        log.info("ground truth covers %s; evaluating source %r named by model_version", gt_sources, scored[0])
        return ground_truth[ground_truth["source"] == scored[0]]
    raise ValueError(
        f"the ground truth covers several sources {gt_sources} and the scores do not say which one "
        "they are; pass source=... (CLI: --source)"
    )


def event_scores(scores: pd.DataFrame, score_column: str = "mean_abs_z") -> pd.Series:
    """One score per event id (the highest, when an event was scored more than once)."""
    for name in ("event_id", score_column):
        if name not in scores.columns:
            raise ValueError(f"scores have no {name!r} column; columns are {list(scores.columns)[:12]} ...")
    values = pd.to_numeric(scores[score_column], errors="coerce").astype(float)
    per_event = values.groupby(scores["event_id"].astype(str), sort=False).max()
    if len(per_event) != len(scores):
        log.info("%d rows share an event id; using each event's highest score", len(scores) - len(per_event))
    return per_event


def evaluate(
    scores: pd.DataFrame,
    ground_truth: pd.DataFrame,
    threshold: float = 2.0,
    score_column: str = "mean_abs_z",
    *,
    source: str | None = None,
) -> EvaluationResult:
    """Event-level precision, recall, FPR and per-kind recall of ``score > threshold``.

    ``source`` picks one source's rows from a ground truth that covers several; without it the
    source is read from ``model_version`` when the ground truth needs it.
    """
    gt = normalise_ground_truth(ground_truth)
    gt = _select_source(scores, gt, source)
    per_event = event_scores(scores, score_column)
    detected = per_event.gt(threshold).fillna(False).astype(bool)  # strict, NaN never detects
    labelled = per_event.index.isin(gt["event_id"])

    tp = int((detected & labelled).sum())
    fp = int((detected & ~labelled).sum())
    tn = int((~detected & ~labelled).sum())
    missing = int((~gt["event_id"].isin(per_event.index)).sum())
    fn = int((~detected & labelled).sum()) + missing

    gt_detected = gt["event_id"].map(detected).fillna(False).astype(bool)
    by_kind = (
        pd.DataFrame({"kind": gt["kind"].to_numpy(), "detected": gt_detected.to_numpy()})
        .groupby("kind", sort=True)["detected"]
        .agg(["size", "sum"])
    )
    per_kind = [
        KindResult(kind=str(k), events=int(n), detected=int(d), recall=_ratio(int(d), int(n)))
        for k, n, d in zip(by_kind.index, by_kind["size"], by_kind["sum"], strict=True)
    ]

    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    if missing:
        log.warning("%d labelled event id(s) are not in the scores; counted as misses", missing)
    return EvaluationResult(
        threshold=float(threshold),
        score_column=score_column,
        events=tp + fp + fn + tn,
        anomalous=tp + fn,
        normal=fp + tn,
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
        precision=precision,
        recall=recall,
        f1=f1,
        false_positive_rate=_ratio(fp, fp + tn),
        per_kind=per_kind,
        missing_ground_truth_ids=missing,
    )


def meets_quality_bar(
    result: EvaluationResult,
    min_precision: float = 0.9,
    min_recall: float = 0.9,
    max_fpr: float = 0.01,
) -> tuple[bool, list[str]]:
    """Whether the project's quality bar holds; the reasons (one per failed criterion) when not."""
    reasons: list[str] = []
    if result.anomalous == 0:
        reasons.append("the ground truth labels no anomalous events for these scores: nothing to measure")
    if result.normal == 0:
        reasons.append("no normal events were scored: the false-positive rate cannot be measured")
    if result.precision < min_precision:
        reasons.append(f"precision {result.precision:.4f} < {min_precision} ({result.fp} false positives)")
    if result.recall < min_recall:
        reasons.append(
            f"recall {result.recall:.4f} < {min_recall} ({result.fn} missed, "
            f"{result.missing_ground_truth_ids} of them never scored)"
        )
    if result.false_positive_rate > max_fpr:
        reasons.append(
            f"false-positive rate {result.false_positive_rate:.4f} > {max_fpr} "
            f"({result.fp} of {result.normal} normal events)"
        )
    return (not reasons, reasons)


def format_evaluation(result: EvaluationResult) -> str:
    """A fixed-width table for terminals: headline rates, confusion counts, recall per kind."""
    r = result
    lines = [
        f"Evaluation: detected = {r.score_column} > {r.threshold:g}",
        f"  events {r.events}  (anomalous {r.anomalous}, normal {r.normal})",
        "",
        f"  {'metric':<22}{'value':>10}",
        f"  {'-' * 32}",
        f"  {'precision':<22}{r.precision:>10.4f}",
        f"  {'recall':<22}{r.recall:>10.4f}",
        f"  {'f1':<22}{r.f1:>10.4f}",
        f"  {'false-positive rate':<22}{r.false_positive_rate:>10.4f}",
        "",
        f"  {'':<12}{'detected':>10}{'missed':>10}",
        f"  {'anomalous':<12}{r.tp:>10}{r.fn:>10}",
        f"  {'normal':<12}{r.fp:>10}{r.tn:>10}",
    ]
    if r.missing_ground_truth_ids:
        lines.append(f"  ({r.missing_ground_truth_ids} labelled id(s) never scored, counted as missed)")
    if r.per_kind:
        width = max(12, *(len(k.kind) + 2 for k in r.per_kind))
        lines += [
            "",
            f"  {'kind':<{width}}{'events':>8}{'detected':>10}{'recall':>9}",
            f"  {'-' * (width + 27)}",
        ]
        lines += [f"  {k.kind:<{width}}{k.events:>8}{k.detected:>10}{k.recall:>9.4f}" for k in r.per_kind]
    return "\n".join(lines)
