"""`dfp-ray demo`: the whole product on an embedded default, nothing to install.

Generates Duo and Azure data sets with labelled anomalies, trains per-user models through
the Ray pipeline (local Ray, sqlite MLflow), scores the inference window, evaluates the
detections against the ground truth and writes an HTML report per source.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

DESCRIPTION = """\
Run the end-to-end demo: datagen -> training -> inference -> evaluation -> HTML report,
on local Ray with an embedded sqlite MLflow registry. Everything is written under --out:
  data/                 generated raw logs, ground truth and control messages
  state/                MLflow database + artifacts, caches
  <source>/             detections, all scores, report.html
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate data, train, infer, evaluate, report (no servers needed)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_output", help="output folder (default: demo_output; replaced)")
    p.add_argument("--sources", default="duo,azure", help="comma-separated sources (default: duo,azure)")
    p.add_argument("--users", type=int, default=None, help="users per source (default: datagen's default)")
    p.add_argument("--seed", type=int, default=7, help="datagen seed (default: 7)")
    p.add_argument("--epochs", type=int, default=None, help="autoencoder epochs (default: 30)")
    p.add_argument("--keep", action="store_true", help="keep an existing --out folder instead of replacing it")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dfp_ray.config import load_config
    from dfp_ray.runner import Pipeline, init_ray
    from dfp_ray.runner import run as run_pipeline
    from dfp_ray.tools.datagen import DatagenConfig, generate
    from dfp_ray.tools.evaluation import (
        default_rule,
        evaluate,
        format_evaluation,
        load_ground_truth,
        load_scores,
        meets_quality_bar,
    )
    from dfp_ray.tools.report import write_html_report

    out = Path(args.out)
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    data_dir = out / "data"
    print(f"[1/4] generating synthetic logs for {', '.join(sources)} into {data_dir}")
    gen_kwargs = {"out": str(data_dir), "sources": sources, "seed": args.seed}
    if args.users:
        gen_kwargs["users"] = args.users
    generate(DatagenConfig(**gen_kwargs))

    t0 = time.perf_counter()
    init_ray(None)
    print(f"      Ray started in {time.perf_counter() - t0:.1f} s")
    all_ok = True
    for source in sources:
        overrides = {
            "source": source, "state_dir": str(out / "state"), "output.directory": str(out / source),
            "output.write_all_scores": True, "autoencoder.epochs": args.epochs,
        }
        cfg = load_config(None, overrides)
        pipe = Pipeline(cfg)
        messages = data_dir / "control_messages"
        print(f"[2/4] {source}: training per-user models + generic model")
        train = run_pipeline(cfg, [str(messages / f"{source}_payload_training.json")], pipeline=pipe)
        print(train.table())
        print(f"[3/4] {source}: scoring the inference window")
        infer = run_pipeline(cfg, [str(messages / f"{source}_payload_inference.json")], pipeline=pipe)
        print(infer.table())
        pipe.shutdown()
        if not (train.ok and infer.ok):
            all_ok = False
            continue
        print(f"[4/4] {source}: evaluation against the injected ground truth")
        scores = load_scores(infer.scores_path)
        truth = load_ground_truth(data_dir / source / "ground_truth.csv")
        # the rule the pipeline detected with: anomaly_score > 1 (each row's own threshold)
        column, threshold = default_rule(scores, None, None)
        result = evaluate(scores, truth, threshold=threshold, score_column=column)
        print(format_evaluation(result))
        ok, reasons = meets_quality_bar(result)
        print("quality bar (precision>=0.9, recall>=0.9, FPR<=1%):", "MET" if ok else "NOT MET: " + "; ".join(reasons))
        report = write_html_report(scores, out / source / "report.html", threshold=threshold, score_column=column,
                                   ground_truth=truth, title=f"dfp_ray demo: {source}",
                                   evaluation=result)
        print(f"      report: {report}")
        print(f"      Train: {train.seconds:.1f} s, inference: {infer.seconds:.1f} s "
              f"({infer.rows_scored / max(infer.seconds, 1e-9):,.0f} events/s)")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(run(argparse.Namespace(out="demo_output", sources="duo,azure", users=None, seed=7,
                                    epochs=None, keep=False)))
