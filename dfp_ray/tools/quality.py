"""Detection quality on labelled data sets, in-process: load, train, score, measure.

The same pipeline steps the actors run (file to DataFrame, data prep, training, inference,
filter detections), called directly so a quality table over several data sets takes minutes
on a laptop. Used by ``benchmarks/bench_quality.py`` and the quality tests.

Measures, per data set and attack kind: recall at the configured detection rule, AUROC of
the kind's events against all normal events, recall at a 1% false-positive rate, and the
false-positive rate of the rule; and the share of alerts per user (are a few users producing
most alerts?).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder
from dfp_ray.schemas import SourceSchema, load_schema

log = logging.getLogger(__name__)


@dataclass
class QualitySet:
    """One labelled data set: mapped training and inference rows, anomalies by event id."""

    name: str
    schema: SourceSchema
    train: pd.DataFrame
    infer: pd.DataFrame
    truth: pd.DataFrame  # event_id, kind: the anomalous inference events
    rare: pd.DataFrame | None = None  # event_id, kind: normal but rare inference events
    notes: dict = field(default_factory=dict)


def _read_window(folder: Path, schema: SourceSchema) -> pd.DataFrame:
    from dfp_ray.messages import FileToDfOptions
    from dfp_ray.pipeline.file_to_df import read_and_map

    files = sorted(str(p) for p in folder.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no *.json files in {folder}")
    opts = FileToDfOptions(parser_kwargs={"lines": False, "orient": "records"})
    loaded = read_and_map(files, schema, options=opts)  # type: ignore[arg-type]
    if loaded.errors:
        raise ValueError(f"unreadable files in {folder}: {[e.url for e in loaded.errors][:3]}")
    return loaded.frame


def load_folder_set(name: str, folder: str | Path, source: str, schema: str | SourceSchema | None = None) -> QualitySet:
    """A data set in the layout `dfp-ray datagen` writes (either family)."""
    folder = Path(folder)
    sch = schema if isinstance(schema, SourceSchema) else load_schema(schema or source)
    truth = pd.read_csv(folder / source / "ground_truth.csv", dtype=str, keep_default_na=False)
    rare_path = folder / source / "rare_normal.csv"
    rare = pd.read_csv(rare_path, dtype=str, keep_default_na=False) if rare_path.exists() else None
    return QualitySet(
        name=name, schema=sch,
        train=_read_window(folder / source / "training", sch),
        infer=_read_window(folder / source / "inference", sch),
        truth=truth[["event_id", "kind"]], rare=rare,
    )


# --------------------------------------------------------------------------- train and score


@dataclass
class TrainedModels:
    generic: DFPAutoencoder | None
    users: dict[str, DFPAutoencoder]
    seconds: float = 0.0


def train_models(
    qset: QualitySet, params: AutoencoderParams, *, min_train_rows: int = 10, train_generic: bool = True
) -> TrainedModels:
    """The generic model on every training row, one model per user with enough rows."""
    import time

    from dfp_ray.pipeline.split_users import split_by_user
    from dfp_ray.pipeline.training import too_few_rows, train_model, train_models

    started = time.perf_counter()
    generic = train_model(qset.train, qset.schema, params)[0] if train_generic else None
    todo = [(user, frame) for user, frame in split_by_user(qset.train, qset.schema.user_column)
            if not too_few_rows(len(frame), min_train_rows)]
    fitted = train_models([f for _, f in todo], qset.schema, params, prior=generic)
    users: dict[str, DFPAutoencoder] = {user: model for (user, _), (model, _, _) in zip(todo, fitted, strict=True)}
    return TrainedModels(generic=generic, users=users, seconds=time.perf_counter() - started)


def score_set(
    qset: QualitySet, models: TrainedModels, frame: pd.DataFrame | None = None, detection=None
) -> pd.DataFrame:
    """Score ``frame`` (default: the set's inference rows) as the pipeline does: each user's
    own model, else the generic model (which also gives the population check of the rows of user
    models: ``detection.population_share``); every result column, calibration included."""
    from dfp_ray.pipeline.data_prep import prepare_features
    from dfp_ray.pipeline.inference import score_groups

    s = qset.schema
    prepared = prepare_features(qset.infer if frame is None else frame, s).reset_index(drop=True)
    users = prepared[s.user_column].astype(str)
    groups = []
    own = users.isin(list(models.users))
    own_positions = np.flatnonzero(own.to_numpy())
    for user, idx in users[own].groupby(users[own], sort=False).indices.items():
        groups.append((models.users[user], f"DFP-{s.name}-{user}:1", own_positions[idx], False))
    if models.generic is not None and (~own).any():
        groups.append((models.generic, f"DFP-{s.name}-generic_user:1", np.flatnonzero(~own.to_numpy()), True))
    return score_groups(prepared, s, groups, detection=detection, population_model=models.generic)


# --------------------------------------------------------------------------- metrics


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count half."""
    positive, negative = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if not len(positive) or not len(negative):
        return float("nan")
    both = np.concatenate([positive, negative])
    ranks = pd.Series(both).rank(method="average").to_numpy()
    r_pos = ranks[: len(positive)].sum()
    return float((r_pos - len(positive) * (len(positive) + 1) / 2) / (len(positive) * len(negative)))


def recall_at_fpr(positive: np.ndarray, negative: np.ndarray, fpr: float = 0.01) -> float:
    """Share of positives strictly above the score that at most ``fpr`` of negatives exceed."""
    if not len(positive) or not len(negative):
        return float("nan")
    negative = np.sort(np.asarray(negative, dtype=float))
    allowed = int(np.floor(fpr * len(negative)))
    cut = negative[len(negative) - 1 - allowed] if allowed < len(negative) else -np.inf
    return float((np.asarray(positive, dtype=float) > cut).mean())


@dataclass
class KindQuality:
    kind: str
    events: int
    recall: float
    auroc: float
    recall_at_1pct_fpr: float


@dataclass
class SetQuality:
    name: str
    rule: str
    events: int
    anomalous: int
    normal: int
    flagged: int
    fpr: float  # over every normal event, the rare-but-normal ones included
    fpr_ordinary: float  # over the normal events that are not rare-but-normal (= fpr without a rare list)
    precision: float
    recall: float
    auroc: float
    recall_at_1pct_fpr: float
    kinds: list[KindQuality]
    rare_fpr: dict[str, tuple[int, float]]  # rare-but-normal kind -> (events, share flagged)
    top_user_share: float  # share of all detections owned by the user with most detections
    top_user: str | None


def measure(
    scored: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    score: np.ndarray,
    detected: np.ndarray,
    name: str,
    rule: str,
    rare: pd.DataFrame | None = None,
    user_column: str = "username",
) -> SetQuality:
    """Quality of one ranking score and one detection rule over scored inference events."""
    ids = scored["event_id"].astype(str).to_numpy()
    kind_of = dict(zip(truth["event_id"].astype(str), truth["kind"].astype(str), strict=True))
    kinds = np.array([kind_of.get(i, "") for i in ids], dtype=object)
    anomalous = kinds != ""
    score = np.nan_to_num(np.asarray(score, dtype=float), nan=-np.inf)
    detected = np.asarray(detected, dtype=bool)
    neg = score[~anomalous]
    per_kind = []
    for k in sorted(set(kinds[anomalous].tolist())):
        mask = kinds == k
        per_kind.append(KindQuality(
            kind=k, events=int(mask.sum()), recall=float(detected[mask].mean()),
            auroc=auroc(score[mask], neg), recall_at_1pct_fpr=recall_at_fpr(score[mask], neg),
        ))
    tp, fp = int((detected & anomalous).sum()), int((detected & ~anomalous).sum())
    rare_fpr: dict[str, tuple[int, float]] = {}
    ordinary = ~anomalous
    if rare is not None and len(rare):
        rare_kind = dict(zip(rare["event_id"].astype(str), rare["kind"].astype(str), strict=True))
        labels = np.array([rare_kind.get(i, "") for i in ids], dtype=object)
        ordinary &= labels == ""
        for k in sorted(set(labels[labels != ""].tolist())):
            mask = (labels == k) & ~anomalous
            rare_fpr[k] = (int(mask.sum()), float(detected[mask].mean()) if mask.any() else 0.0)
    users = scored[user_column].astype(str).to_numpy()
    det_users = pd.Series(users[detected]).value_counts()
    return SetQuality(
        name=name, rule=rule, events=len(scored), anomalous=int(anomalous.sum()), normal=int((~anomalous).sum()),
        flagged=int(detected.sum()), fpr=fp / max(int((~anomalous).sum()), 1),
        fpr_ordinary=int((detected & ordinary).sum()) / max(int(ordinary.sum()), 1),
        precision=tp / max(tp + fp, 1), recall=tp / max(int(anomalous.sum()), 1),
        auroc=auroc(score[anomalous], neg), recall_at_1pct_fpr=recall_at_fpr(score[anomalous], neg),
        kinds=per_kind, rare_fpr=rare_fpr,
        top_user_share=float(det_users.iloc[0] / det_users.sum()) if len(det_users) else 0.0,
        top_user=str(det_users.index[0]) if len(det_users) else None,
    )


def alert_rate_percentiles(scored: pd.DataFrame, detected: np.ndarray, user_column: str = "username",
                           percentiles: tuple[float, ...] = (50, 90, 99, 100)) -> dict[str, float]:
    """Per-user alert rate (share of the user's events flagged), at user percentiles."""
    rates = pd.Series(np.asarray(detected, dtype=float)).groupby(scored[user_column].astype(str).to_numpy()).mean()
    return {f"p{p:g}": float(np.percentile(rates, p)) for p in percentiles}


def format_table(results: list[SetQuality]) -> str:
    """Set x kind: events, recall, AUROC, recall at 1% FPR; and the rule's FPR (every normal event,
    then the ordinary ones: rare-but-normal events left out) and precision per set."""
    lines = [f"{'set':<22}{'rule':<12}{'kind':<20}{'events':>7}{'recall':>8}{'AUROC':>8}{'R@1%':>7}{'FPR':>8}{'prec':>7}"
             f"{'FPR ord':>9}"]
    for r in results:
        lines.append(f"{r.name:<22}{r.rule:<12}{'(all)':<20}{r.anomalous:>7}{r.recall:>8.3f}{r.auroc:>8.3f}"
                     f"{r.recall_at_1pct_fpr:>7.3f}{r.fpr:>8.4f}{r.precision:>7.3f}{r.fpr_ordinary:>9.4f}")
        for k in r.kinds:
            lines.append(f"{'':<22}{'':<12}{k.kind:<20}{k.events:>7}{k.recall:>8.3f}{k.auroc:>8.3f}"
                         f"{k.recall_at_1pct_fpr:>7.3f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- LANL

LANL_COLUMNS = ("time", "src_user", "dst_user", "src_computer", "dst_computer", "auth_type", "logon_type",
                "auth_orientation", "outcome", "redteam")
DAY_S = 86_400


def read_lanl(path: str | Path) -> pd.DataFrame:
    """The raw LANL auth lines (headerless CSV, optionally gzip), with the sample's red-team flag."""
    raw = pd.read_csv(path, header=None, names=list(LANL_COLUMNS), dtype=str, keep_default_na=False)
    raw["_source_file"] = str(path)
    return raw


def load_lanl_set(
    path: str | Path,
    *,
    redteam: str | Path | None = None,
    train_days: tuple[int, ...] = (0, 1),
    infer_day: int = 2,
    schema: str | SourceSchema = "lanl",
) -> QualitySet:
    """The LANL sample split by the rows' own day: train on ``train_days``, infer on ``infer_day``.

    With ``redteam`` (the data set's red-team file: ``time,user@domain,src,dst``), the red-team
    authentications of users seen in training are replayed into the inference day, labelled
    ``redteam_replay``: user, source and destination computers from the red-team file; the
    fields that file does not have (auth type, logon type, orientation, outcome) are the user's
    most frequent training values, so only the computers differ. Replayed rows come after the
    user's real rows of that day, so no real row's counters include them. Semi-synthetic:
    report it apart from the real rows.
    """
    from dfp_ray.pipeline.data_prep import frame_from_records

    sch = schema if isinstance(schema, SourceSchema) else load_schema(schema)
    raw = read_lanl(path)
    day = raw["time"].astype(np.int64) // DAY_S
    train_raw, infer_raw = raw[day.isin(train_days)], raw[day == infer_day]
    truth = pd.DataFrame({"event_id": pd.Series(dtype=str), "kind": pd.Series(dtype=str)})
    notes: dict = {}
    if redteam is not None:
        rt = pd.read_csv(redteam, header=None, names=["time", "user", "src", "dst"], dtype=str)
        seen = set(train_raw["src_user"])
        rt = rt[rt["user"].isin(seen)].drop_duplicates(["user", "src", "dst"])
        cols = ["auth_type", "logon_type", "auth_orientation", "outcome"]
        usual = train_raw[train_raw["src_user"].isin(rt["user"])].groupby("src_user")[cols].agg(
            lambda v: v.value_counts().index[0])
        last = int(infer_raw["time"].astype(np.int64).max()) if len(infer_raw) else infer_day * DAY_S
        replay = pd.DataFrame({
            "time": (last + 1 + np.arange(len(rt))).astype(str), "src_user": rt["user"].to_numpy(),
            "dst_user": rt["user"].to_numpy(), "src_computer": rt["src"].to_numpy(), "dst_computer": rt["dst"].to_numpy(),
            **{c: usual.loc[rt["user"], c].to_numpy() for c in cols}, "redteam": "1", "_source_file": "redteam",
        })
        infer_raw = pd.concat([infer_raw, replay], ignore_index=True)
        notes["redteam_users"] = int(rt["user"].nunique())
    train, _ = frame_from_records(train_raw, sch, derive=False)
    infer, _ = frame_from_records(infer_raw, sch, derive=False)
    if redteam is not None:
        flagged = infer_raw["redteam"].to_numpy() == "1"
        truth = pd.DataFrame({"event_id": infer[sch.event_id_column].to_numpy()[flagged], "kind": "redteam_replay"})
    name = "lanl+redteam" if redteam is not None else "lanl"
    return QualitySet(name=name, schema=sch, train=train.drop(columns=["_source_file"], errors="ignore"),
                      infer=infer.drop(columns=["_source_file"], errors="ignore"), truth=truth, notes=notes)
