"""`dfp-ray report`: evaluate a run's scores against ground truth and write the HTML report."""

from __future__ import annotations

import argparse
import json
import logging
import sys

NAME = "report"
log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        NAME,
        help="evaluate scores against injected ground truth and write an HTML report",
        description=(
            "Read the scores the pipeline wrote (dfp_scores_<source>.csv or .jsonl: every scored "
            "inference event), print event-level precision, recall, false-positive rate and recall "
            "per anomaly kind when a ground-truth file is given, and write a self-contained HTML "
            "report (score distribution, per-user timelines, detections with their top features)."
        ),
    )
    parser.add_argument(
        "--scores",
        required=True,
        help="scores file (CSV, JSON lines or JSON array), or a directory holding exactly one dfp_scores_* file",
    )
    parser.add_argument(
        "--ground-truth",
        default=None,
        help="ground_truth.csv written by `dfp-ray datagen` (event_id,source,username,timestamp,kind)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="an event is detected when its score is strictly greater than this (default: 1 for "
        "anomaly_score, the pipeline's calibrated rule; 2.0 for mean_abs_z, Morpheus's)",
    )
    parser.add_argument(
        "--score-column", default=None,
        help="score column to threshold (default: anomaly_score when the file has it, else mean_abs_z)"
    )
    parser.add_argument(
        "--source",
        default=None,
        help="evaluate only this source's ground truth (needed when the file covers several sources "
        "and the scores' model_version does not say which)",
    )
    parser.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    parser.add_argument("--title", default="dfp_ray detection report", help="title of the HTML report")
    parser.add_argument(
        "--top-users", type=int, default=12, help="users shown in the timeline plot (default: 12)"
    )
    parser.add_argument(
        "--top-features", type=int, default=3, help="contributing features listed per detection (default: 3)"
    )
    parser.add_argument(
        "--max-detections",
        type=int,
        default=200,
        help="detections listed in the report's table, highest score first (default: 200)",
    )
    parser.add_argument("--json", action="store_true", help="print the evaluation as JSON instead of a table")
    parser.add_argument(
        "--fail-below-bar",
        action="store_true",
        help="exit 1 when the quality bar (see --min-precision/--min-recall/--max-fpr) is not met; "
        "needs --ground-truth",
    )
    parser.add_argument(
        "--min-precision", type=float, default=0.9, help="quality bar: precision (default 0.9)"
    )
    parser.add_argument("--min-recall", type=float, default=0.9, help="quality bar: recall (default 0.9)")
    parser.add_argument(
        "--max-fpr",
        type=float,
        default=0.01,
        help="quality bar: false-positive rate on normal events (default 0.01)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dfp_ray.tools.evaluation import (
        default_rule,
        evaluate,
        format_evaluation,
        load_ground_truth,
        load_scores,
        meets_quality_bar,
    )
    from dfp_ray.tools.report import write_html_report

    if args.fail_below_bar and not args.ground_truth:
        print("dfp-ray report: --fail-below-bar needs --ground-truth to measure against", file=sys.stderr)
        return 2
    try:
        scores = load_scores(args.scores)
        args.score_column, args.threshold = default_rule(scores, args.score_column, args.threshold)
        truth = load_ground_truth(args.ground_truth) if args.ground_truth else None
        result = (
            evaluate(
                scores, truth, threshold=args.threshold, score_column=args.score_column, source=args.source
            )
            if truth is not None
            else None
        )
        if truth is not None and args.source is not None and "source" in truth.columns:
            truth = truth[truth["source"] == args.source]
        out = write_html_report(
            scores,
            args.out,
            threshold=args.threshold,
            ground_truth=truth,
            title=args.title,
            top_users=args.top_users,
            top_features=args.top_features,
            max_detections_listed=args.max_detections,
            score_column=args.score_column,
            evaluation=result,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"dfp-ray report: {exc}", file=sys.stderr)
        return 2

    ok, reasons = (
        meets_quality_bar(result, args.min_precision, args.min_recall, args.max_fpr) if result else (None, [])
    )
    if args.json:
        payload = {
            "scores": str(args.scores),
            "report": str(out),
            "rows": int(len(scores)),
            "detections": int((scores[args.score_column] > args.threshold).sum()),
            "evaluation": result.model_dump() if result else None,
            "quality_bar": {"met": ok, "reasons": reasons} if result else None,
        }
        print(json.dumps(payload, indent=2))
    else:
        detections = int((scores[args.score_column] > args.threshold).sum())
        print(
            f"{len(scores)} rows scored, {detections} detections ({args.score_column} > {args.threshold:g})"
        )
        if result is not None:
            print(format_evaluation(result))
            print("quality bar: met" if ok else "quality bar: NOT met\n  " + "\n  ".join(reasons))
        print(f"report written to {out}")
    if args.fail_below_bar and not ok:
        return 1
    return 0
