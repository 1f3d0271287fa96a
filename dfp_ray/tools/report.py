"""A self-contained HTML report of one run's scores: plots, detections and their explanations.

One file a reviewer can open anywhere (mail it, attach it to a ticket): plots are PNGs embedded
as base64 and there is no JavaScript, external CSS or network access. Every value that comes
from data is HTML-escaped, because usernames and categorical features come from logs an
attacker can write into.

Sections: run summary (and the evaluation when ground truth is given), the distribution of
``mean_abs_z``, a per-user timeline for the users with most detections, a detections table
that names the features each detection's score came from, and recall per anomaly kind.

Why over ~400 lines: the HTML report's template and its tables are one page.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from dfp_ray.tools.evaluation import (
    EvaluationResult,
    default_rule,
    evaluate,
    meets_quality_bar,
    normalise_ground_truth,
    normalise_scores,
)

_Z_SUFFIX = "_z_loss"
_COLOURS = {
    "normal": "#4C72B0",
    "anomalous": "#C44E52",
    "threshold": "#333333",
    "detected": "#C44E52",
    "false_positive": "#DD8452",
    "missed": "#000000",
}


def feature_names(scores: pd.DataFrame) -> list[str]:
    """The model's features, read from the ``<f>_z_loss`` columns the scorer writes."""
    return [c[: -len(_Z_SUFFIX)] for c in scores.columns if c.endswith(_Z_SUFFIX)]


def top_contributing_features(scores: pd.DataFrame, top_n: int = 3) -> list[pd.DataFrame]:
    """For every row, its ``top_n`` features by ``<f>_z_loss``, highest first.

    Returns one frame per rank (index aligned with ``scores``) with columns ``feature``,
    ``z``, ``value`` and ``pred`` (``value``/``pred`` are ``None`` where the scores lack the
    ``<f>``/``<f>_pred`` column). One argsort over the z matrix; no per-row work.
    """
    feats = feature_names(scores)
    k = min(top_n, len(feats))
    if k == 0 or scores.empty:
        return []
    z = scores[[f + _Z_SUFFIX for f in feats]].to_numpy(dtype=float, na_value=np.nan)
    order = np.argsort(-np.nan_to_num(z, nan=-np.inf), axis=1, kind="stable")[:, :k]

    def matrix(suffix: str) -> np.ndarray:
        cols = [
            scores[f + suffix].to_numpy(dtype=object)
            if f + suffix in scores.columns
            else np.full(len(scores), None, dtype=object)
            for f in feats
        ]
        return np.column_stack(cols)

    values, preds = matrix(""), matrix("_pred")
    names = np.asarray(feats, dtype=object)
    ranks = []
    for rank in range(k):
        idx = order[:, rank : rank + 1]
        computed = pd.DataFrame(
            {
                "feature": names[idx[:, 0]],
                "z": np.take_along_axis(z, idx, axis=1)[:, 0],
                "value": np.take_along_axis(values, idx, axis=1)[:, 0],
                "pred": np.take_along_axis(preds, idx, axis=1)[:, 0],
            },
            index=scores.index,
        )
        ranks.append(_pipeline_drivers(scores, rank + 1, computed))
    return ranks


def _pipeline_drivers(scores: pd.DataFrame, rank: int, computed: pd.DataFrame) -> pd.DataFrame:
    """The pipeline's own explanation (``driver_<rank>``...) where the row has one: it groups a
    cyclic time feature into one driver shown as clock times. Computed drivers elsewhere."""
    name = f"driver_{rank}"
    if name not in scores.columns:
        return computed
    given = scores[name].astype(object).where(scores[name].notna(), "").astype(str).to_numpy() != ""
    if not given.any():
        return computed
    out = computed.copy()
    for target, column in (("feature", name), ("value", f"{name}_value"), ("pred", f"{name}_expected"), ("z", f"{name}_z")):
        if column in scores.columns:
            source = scores[column].to_numpy(dtype=float if target == "z" else object)
            out[target] = np.where(given, source, out[target].to_numpy(dtype=float if target == "z" else object))
    return out


# --------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    # A bare Figure renders through Agg without touching pyplot's global state, so
    # reports can be written from threads or Ray workers and need no display.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _score_distribution_png(
    score: np.ndarray, labelled: np.ndarray | None, threshold: float, column: str
) -> str:
    fig = _figure(9, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    finite = score[np.isfinite(score)]
    top = max(float(finite.max()) if finite.size else 1.0, threshold * 1.2, 1e-9)
    bins = np.linspace(0.0, top * 1.001, 80)
    if labelled is None:
        ax.hist(finite, bins=bins, color=_COLOURS["normal"], label=f"all events ({finite.size})")
    else:
        ok = np.isfinite(score)
        normal, anomalous = score[ok & ~labelled], score[ok & labelled]
        ax.hist(normal, bins=bins, color=_COLOURS["normal"], alpha=0.75, label=f"normal ({normal.size})")
        ax.hist(
            anomalous,
            bins=bins,
            color=_COLOURS["anomalous"],
            alpha=0.75,
            label=f"injected anomalies ({anomalous.size})",
        )
    ax.set_yscale("log")
    ax.axvline(threshold, color=_COLOURS["threshold"], linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel(column)
    ax.set_ylabel("events (log scale)")
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig)


def _timeline_png(
    frame: pd.DataFrame, users: list[str], threshold: float, label: str, has_truth: bool
) -> str:
    """Small multiples, one panel per user; reads the score from the frame's ``_score`` column."""
    ncols = 1 if len(users) == 1 else 2 if len(users) <= 4 else 3
    nrows = math.ceil(len(users) / ncols)
    fig = _figure(4.2 * ncols, 2.4 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    groups = dict(tuple(frame[frame["username"].isin(users)].groupby("username", sort=False)))
    for ax, user in zip(axes.flat, users, strict=False):
        rows = groups[user].sort_values("timestamp")
        t, s = rows["timestamp"].dt.tz_localize(None), rows["_score"].to_numpy(dtype=float)
        det = rows["_detected"].to_numpy(dtype=bool)
        ax.plot(t, s, color=_COLOURS["normal"], linewidth=0.8, marker=".", markersize=2)
        ax.axhline(threshold, color=_COLOURS["threshold"], linestyle="--", linewidth=0.8)
        if has_truth:
            lab = rows["_labelled"].to_numpy(dtype=bool)
            ax.scatter(t[det & lab], s[det & lab], s=18, color=_COLOURS["detected"], zorder=3)
            ax.scatter(
                t[det & ~lab], s[det & ~lab], s=22, marker="^", color=_COLOURS["false_positive"], zorder=3
            )
            ax.scatter(t[~det & lab], s[~det & lab], s=26, marker="x", color=_COLOURS["missed"], zorder=3)
        else:
            ax.scatter(t[det], s[det], s=18, color=_COLOURS["detected"], zorder=3)
        # parse_math=False: a username with "$" must not be read as mathtext (or crash it).
        ax.set_title(f"{user}  ({int(det.sum())} detections)", fontsize=9, parse_math=False)
        ax.tick_params(axis="both", labelsize=7)
        ax.tick_params(axis="x", labelrotation=30)
    for ax in list(axes.flat)[len(users) :]:
        ax.set_visible(False)
    legend = [
        ("line", _COLOURS["normal"], label),
        ("dash", _COLOURS["threshold"], f"threshold {threshold:g}"),
    ]
    if has_truth:
        legend += [
            ("o", _COLOURS["detected"], "detected injected anomaly"),
            ("^", _COLOURS["false_positive"], "detection not in ground truth"),
            ("x", _COLOURS["missed"], "missed injected anomaly"),
        ]
    else:
        legend += [("o", _COLOURS["detected"], "detection")]
    from matplotlib.lines import Line2D

    handles = [
        Line2D(
            [],
            [],
            color=c,
            linestyle="-" if m == "line" else "--" if m == "dash" else "",
            marker=None if m in ("line", "dash") else m,
            label=label,
        )
        for m, c, label in legend
    ]
    fig.legend(
        handles=handles, loc="outside lower center", ncol=len(handles) if ncols >= 3 else 3, fontsize=8
    )
    return _png(fig)


# --------------------------------------------------------------------------- html


def _e(value: object) -> str:
    """HTML-escape anything that came from data."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float | np.floating):
        return html.escape(f"{value:.4g}")
    if isinstance(value, pd.Timestamp):
        return html.escape(value.strftime("%Y-%m-%d %H:%M:%S"))
    return html.escape(str(value), quote=True)


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Rows are already-escaped cell HTML; headers are literal and escaped here."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _evaluation_html(result: EvaluationResult) -> str:
    ok, reasons = meets_quality_bar(result)
    metrics = _table(
        ["metric", "value"],
        [
            ["precision", f"{result.precision:.4f}"],
            ["recall", f"{result.recall:.4f}"],
            ["F1", f"{result.f1:.4f}"],
            ["false-positive rate", f"{result.false_positive_rate:.4f}"],
            ["anomalous events (labelled)", str(result.anomalous)],
            ["normal events", str(result.normal)],
            ["true positives", str(result.tp)],
            ["false positives", str(result.fp)],
            ["false negatives", str(result.fn)],
            ["true negatives", str(result.tn)],
            ["labelled ids never scored", str(result.missing_ground_truth_ids)],
        ],
        "metrics",
    )
    verdict = (
        '<p class="ok">Quality bar met (precision &ge; 0.9, recall &ge; 0.9, FPR &le; 1%).</p>'
        if ok
        else '<p class="bad">Quality bar not met: ' + "; ".join(html.escape(r) for r in reasons) + "</p>"
    )
    return metrics + verdict


def _per_kind_html(result: EvaluationResult) -> str:
    if not result.per_kind:
        return "<p>The ground truth lists no anomalies for these scores.</p>"
    rows = [[_e(k.kind), str(k.events), str(k.detected), f"{k.recall:.4f}"] for k in result.per_kind]
    return _table(["kind", "events", "detected", "recall"], rows, "per-kind")


def _detections_html(
    frame: pd.DataFrame, column: str, top_features: int, limit: int, truth_kind: pd.Series | None
) -> str:
    det = frame[frame["_detected"]].sort_values(column, ascending=False, kind="stable")
    total = len(det)
    if total == 0:
        return "<p>No detections at this threshold.</p>"
    shown = det.head(limit)
    ranks = top_contributing_features(shown, top_features)
    feature_cells = [
        (
            '<span class="feat">'
            + r["feature"].map(_e)
            + "</span> z="
            + r["z"].map(_e)
            + "<br><small>"
            + r["value"].map(_e)
            + " &rarr; expected "
            + r["pred"].map(_e)
            + "</small>"
        ).tolist()
        for r in ranks
    ]
    kinds = (
        shown["event_id"].map(truth_kind).fillna("(not in ground truth)").tolist()
        if truth_kind is not None
        else None
    )
    cols = {
        "time": shown["timestamp"].map(_e).tolist() if "timestamp" in shown else [""] * len(shown),
        "user": shown["username"].map(_e).tolist(),
        "event_id": shown["event_id"].map(_e).tolist(),
        column: shown[column].map(lambda v: f"{v:.3f}").tolist(),
        "model_version": shown["model_version"].map(_e).tolist()
        if "model_version" in shown
        else [""] * len(shown),
    }
    threshold_cells = (
        (shown["alert_threshold"].map(lambda v: f"{v:.3g}") + "<br><small>" + shown["threshold_source"].map(_e)
         + "</small>").tolist()
        if {"alert_threshold", "threshold_source"} <= set(shown.columns)
        else None
    )
    incident_cells = (
        [("" if pd.isna(r) else f"#{int(r)} of {_e(i)}") for i, r in zip(shown["incident_id"], shown["incident_rank"],
                                                                        strict=True)]
        if {"incident_id", "incident_rank"} <= set(shown.columns)
        else None
    )
    headers = ["time (UTC)", "user", "event_id", column]
    if threshold_cells is not None:
        headers.append("mean_abs_z threshold (how set)")
    if incident_cells is not None:
        headers.append("incident (detection # of its first event)")
    headers += [f"driver #{i + 1} (observed \u2192 expected)" for i in range(len(feature_cells))]
    headers += ["model_version"] + (["ground truth"] if kinds is not None else [])
    rows = []
    for i in range(len(shown)):
        row = [cols["time"][i], cols["user"][i], cols["event_id"][i], cols[column][i]]
        if threshold_cells is not None:
            row.append(threshold_cells[i])
        if incident_cells is not None:
            row.append(incident_cells[i])
        row += [cells[i] for cells in feature_cells]
        row.append(cols["model_version"][i])
        if kinds is not None:
            row.append(_e(kinds[i]))
        rows.append(row)
    note = (
        f"<p>Showing the {len(shown)} highest-scoring of {total} detections.</p>"
        if total > len(shown)
        else f"<p>{total} detections, highest score first.</p>"
    )
    if "incident_id" in det.columns and det["incident_id"].notna().any():
        note += (f"<p>They form {det['incident_id'].nunique()} incidents (one user, one driving value, "
                 "detections within the incident gap of each other; #1 is where an incident starts).</p>")
    return note + _table(headers, rows, "detections")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}tbody tr:nth-child(even){background:#fafafa}
.feat{font-weight:600}.ok{color:#1a7f37;font-weight:600}.bad{color:#b42318;font-weight:600}
img{max-width:100%}small{color:#555}
"""


def write_html_report(
    scores: pd.DataFrame,
    out_path: str | Path,
    *,
    threshold: float | None = None,
    ground_truth: pd.DataFrame | None = None,
    title: str = "dfp_ray detection report",
    top_users: int = 12,
    top_features: int = 3,
    max_detections_listed: int = 200,
    score_column: str | None = None,
    evaluation: EvaluationResult | None = None,
) -> Path:
    """Write the report for ``scores`` to ``out_path`` and return its path.

    ``score_column`` / ``threshold`` default to the rule the pipeline wrote the scores with
    (``anomaly_score > 1``, or ``mean_abs_z > 2`` for files without calibrated scores).

    ``evaluation`` may pass a result already computed from the same inputs (the CLI does) so
    the work is not repeated; otherwise it is computed when ``ground_truth`` is given.
    """
    out_path = Path(out_path)
    frame = normalise_scores(scores)
    score_column, threshold = default_rule(frame, score_column, threshold)
    for name in ("event_id", "username", score_column):
        if name not in frame.columns:
            raise ValueError(f"scores have no {name!r} column; cannot build the report")
    frame["_score"] = pd.to_numeric(frame[score_column], errors="coerce").astype(float)
    frame["_detected"] = frame["_score"].gt(threshold)

    truth_kind = None
    if ground_truth is not None:
        gt = normalise_ground_truth(ground_truth)
        if evaluation is None:
            evaluation = evaluate(frame, gt, threshold=threshold, score_column=score_column)
        truth_kind = gt.set_index("event_id")["kind"]
        frame["_labelled"] = frame["event_id"].isin(truth_kind.index)

    detections = int(frame["_detected"].sum())
    users = frame["username"].nunique()
    summary_rows = [
        ["rows scored", str(len(frame))],
        ["detections", f"{detections} ({_e(score_column)} &gt; {_e(threshold)})"],
        ["users", str(users)],
        ["users with detections", str(frame.loc[frame["_detected"], "username"].nunique())],
    ]
    if "timestamp" in frame.columns and frame["timestamp"].notna().any():
        summary_rows.append(
            ["events from", f"{_e(frame['timestamp'].min())} to {_e(frame['timestamp'].max())} UTC"]
        )
    if "model_version" in frame.columns:
        generic = frame["model_version"].str.contains("generic_user", regex=False).sum()
        summary_rows.append(
            ["models used", f"{frame['model_version'].nunique()} ({int(generic)} rows by a generic model)"]
        )
    summary_rows.append(["features", _e(", ".join(feature_names(frame))) or "(none found)"])

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p><small>Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S')} UTC by dfp_ray.</small></p>",
        "<h2>Run summary</h2>",
        _table(["", ""], summary_rows, "summary"),
    ]
    if evaluation is not None:
        parts += ["<h2>Evaluation against injected ground truth</h2>", _evaluation_html(evaluation)]

    parts.append("<h2>1. Score distribution</h2>")
    if len(frame):
        labelled = frame["_labelled"].to_numpy(dtype=bool) if truth_kind is not None else None
        png = _score_distribution_png(
            frame["_score"].to_numpy(dtype=float), labelled, threshold, score_column
        )
        parts.append(f'<img alt="histogram of {_e(score_column)}" src="data:image/png;base64,{png}">')
    else:
        parts.append("<p>No rows were scored.</p>")

    parts.append("<h2>2. Per-user timeline</h2>")
    if len(frame) and "timestamp" in frame.columns and frame["timestamp"].notna().any():
        timed = frame[frame["timestamp"].notna()]
        stats = timed.groupby("username", sort=False).agg(det=("_detected", "sum"), peak=("_score", "max"))
        chosen = stats.sort_values(["det", "peak"], ascending=False).head(max(top_users, 1)).index.tolist()
        png = _timeline_png(timed, chosen, threshold, score_column, truth_kind is not None)
        parts.append(
            f"<p>{_e(score_column)} over event time for the {len(chosen)} user(s) with the most detections.</p>"
            f'<img alt="per-user timeline" src="data:image/png;base64,{png}">'
        )
    else:
        parts.append("<p>No timestamps to plot.</p>")

    parts.append("<h2>3. Detections and what drove them</h2>")
    parts.append(
        "<p>Each detection's top drivers: the features whose z-scored reconstruction loss "
        "(<code>&lt;f&gt;_z_loss</code>) contributed most to its score, with the observed value &rarr; "
        "what the model expected (its most likely value; for the hour of day and the day of week, "
        "the time it expected). The threshold column says which <code>mean_abs_z</code> the row's model "
        "alerts above and how it was set (own: the model's held-out rows; population: the held-out rows "
        "of all user models; blend: both, by the user's history; fixed: a configured value).</p>"
    )
    parts.append(_detections_html(frame, score_column, top_features, max_detections_listed, truth_kind))

    parts.append("<h2>4. Recall per anomaly kind</h2>")
    parts.append(_per_kind_html(evaluation) if evaluation is not None else "<p>No ground truth given.</p>")
    parts.append("</body></html>\n")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("".join(parts), encoding="utf-8")
    return out_path
