"""Detection quality on data sets we did not tune to: ours vs Morpheus's scoring rule, side by side.

Sets (each reported apart):

- ``default-duo`` / ``default-azure``: `dfp-ray datagen` (the default generator);
- ``habits-duo`` / ``habits-azure``: `dfp-ray datagen --family habits` (another generator: other
  archetypes and vocabularies, rare-but-normal events, single-feature attacks);
- ``roster-duo`` / ``roster-azure``: `dfp-ray datagen --family roster` (a third generator, written
  without looking at the detector: a distributed workforce in six zones, sessions, heavy-tailed
  volume, dormant accounts; attacks changing one or two features);
- ``lanl``: the real LANL authentication sample (days 0-1 train, day 2 infers): flagged share
  of day-2 events and the share of detections owned by the top user;
- ``lanl+redteam``: the same with the LANL red-team authentications of trained users replayed
  into day 2 (semi-synthetic, see :func:`dfp_ray.tools.quality.load_lanl_set`).

Profiles: ``ours`` (the shipped defaults: schemas, autoencoder, calibrated rule) and
``morpheus`` (what main did before: Morpheus's training recipe and feature lists, plain-std
z-scores, ``mean_abs_z > 2.0``). Within the ``ours`` profile the Morpheus rule (plain std,
fixed 2.0) is also applied to the SAME models (rule ``same+2.0``), so the scoring gain is
measured apart from the training and feature gains; the calibrated rule without the population
check (rule ``own-only``: ``detection.population_share: 0``, each user's own model alone); and
on the synthetic sets every event is
also scored by the generic model alone (rule ``generic``: how users without a model of their
own are caught).

Per set x kind: recall at the rule, AUROC of the rule's ranking score against every normal
event, recall at a 1% false-positive rate, and the rule's false-positive rate (over every
normal event, and over the ordinary ones: the set's rare-but-normal events left out); then the alert
rate per user percentile (are a few users producing most alerts?) and, at the shipped rule, how
the detections group into incidents (attacks, rare-but-normal and ordinary normal events).

Every model trains in-process with the pipeline's own steps (file to DataFrame, data prep,
training, inference, filter detections: :mod:`dfp_ray.tools.quality`), one thread, with the
settings of ``configs/<source>.yaml`` (LANL: ``min_train_rows: 100``). The user models of a
set are pooled for their thresholds as one user actor's call pools them.

    python benchmarks/bench_quality.py [--sets default-duo,habits-duo,lanl,...] [--profiles ours,morpheus]
                                       [--users 20] [--habits-users 72] [--roster-users 72] [--lanl PATH]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ALL_SETS = ("default-duo", "default-azure", "habits-duo", "habits-azure", "roster-duo", "roster-azure", "lanl",
            "lanl+redteam")
ROOT = Path(__file__).resolve().parents[1]
LANL_DIR = ROOT.parent / "shared" / "data" / "lanl"


def shipped_config(source: str):
    """configs/<source>.yaml: the settings a user running that source gets."""
    from dfp_ray.config import load_config

    path = ROOT / "configs" / f"{source}.yaml"
    return load_config(path if path.exists() else None, {"source": source})


def morpheus_schema(name: str):
    """The shipped schema with Morpheus's feature lists (no time, application or location
    features, Azure browser versions kept) and its two-sided z on every feature: what the
    pipeline modelled before."""
    from dfp_ray.schemas import load_schema

    schema = load_schema(name)
    morpheus = {
        "duo": (["accessdevicebrowser", "accessdeviceos", "authdevicename", "reason"], ["result"],
                ["locincrement", "logcount"]),
        "azure": (["appDisplayName", "clientAppUsed", "deviceDetailbrowser", "deviceDetaildisplayName",
                   "deviceDetailoperatingSystem", "statusfailureReason"], [], ["appincrement", "locincrement", "logcount"]),
    }
    data = schema.model_dump()
    if name not in morpheus:  # LANL: no Morpheus schema exists; the same features
        data["features"]["above_only"] = []
        return type(schema).model_validate(data)
    cat, binary, num = morpheus[name]
    data["time_features"] = []
    data["features"] = {"categorical": cat, "binary": binary, "numeric": num, "above_only": []}
    for field in data["fields"]:
        field["pattern"] = None
    return type(schema).model_validate(data)


def morpheus_params():
    from dfp_ray.autoencoder import AutoencoderParams

    return AutoencoderParams(optimizer="sgd", learning_rate=0.001, min_batches_per_epoch=1, loss_std_floor=0.0,
                             clip_inputs=False, other_input="echo", width_rule="fixed", epochs=30,
                             batch_size=512)


def load_set(name: str, work: Path, args, schema_for):
    from dfp_ray.tools import quality as Q
    from dfp_ray.tools.families import generate_family

    if name.startswith("lanl"):
        sample = Path(args.lanl) / "lanl_auth_sample_days0-2_from_safekit.csv.gz"
        redteam = Path(args.lanl) / "lanl_redteam.txt.gz" if name == "lanl+redteam" else None
        return Q.load_lanl_set(sample, redteam=redteam, schema=schema_for("lanl"))
    family, source = name.split("-")
    folder = work / name
    if not (folder / source).exists():
        options = {"out": str(folder), "sources": [source], "seed": args.seed}
        if family == "default":
            options["users"] = args.users
        else:  # half the users attacked: enough attack events per kind to read a recall from
            options.update(users=args.roster_users if family == "roster" else args.habits_users, attack_fraction=0.5)
        generate_family(family, **options)
    return Q.load_folder_set(name, folder, source, schema_for(source))


def plain_scores(scored, models, schema):
    """Morpheus's z on the same models: |loss - mean| / plain std, averaged over the features."""
    import numpy as np

    out = np.full(len(scored), np.nan)
    users = scored[schema.user_column].astype(str).to_numpy()
    for label, idx in scored.groupby("model_version", sort=False).indices.items():
        user = users[idx[0]]
        model = models.users.get(user) if "generic_user" not in label else models.generic
        if model is None:
            model = models.generic
        feats = model.feature_columns
        loss = scored.iloc[idx][[f"{f}_loss" for f in feats]].to_numpy(dtype=float)
        mean = np.array([model.loss_stats[f]["mean"] for f in feats])
        std = np.array([model.loss_stats[f]["std"] for f in feats])
        out[idx] = np.abs((loss - mean) / std).mean(axis=1)
    return out


def incident_line(scored, detected, qset, gap_hours: float) -> str:
    """How the rule's detections group into incidents (docs/scoring.md 5b): attacks, rare-but-normal
    and ordinary normal events, each as events and incidents."""
    from dfp_ray.pipeline.incidents import IncidentTracker, group_incidents

    found = group_incidents(scored[detected], qset.schema, IncidentTracker.with_gap_hours(gap_hours))
    ids = found["event_id"].astype(str)
    attack = ids.isin(set(qset.truth["event_id"].astype(str)))
    rare = ids.isin(set(qset.rare["event_id"].astype(str)) if qset.rare is not None else set())
    parts = []
    for what, mask in (("attacks", attack), ("rare-but-normal", rare & ~attack), ("ordinary normal", ~attack & ~rare)):
        parts.append(f"{what} {int(mask.sum())} events in {found.loc[mask.to_numpy(), 'incident_id'].nunique()}")
    owners = found.drop_duplicates("incident_id")[qset.schema.user_column].astype(str).value_counts()
    top = f"; top user {owners.index[0]} owns {owners.iloc[0] / owners.sum():.2f} of incidents" if len(owners) else ""
    return f"incidents at the rule ({gap_hours:g} h gap): " + ", ".join(parts) + top


def run_set(name: str, profile: str, work: Path, args) -> list:
    import numpy as np
    import yaml

    from dfp_ray.autoencoder import AutoencoderParams
    from dfp_ray.config import DetectionConfig
    from dfp_ray.schemas import load_schema
    from dfp_ray.tools import quality as Q

    schema_for = morpheus_schema if profile == "morpheus" else load_schema
    qset = load_set(name, work, args, schema_for)
    cfg = shipped_config(qset.schema.name)
    params = morpheus_params() if profile == "morpheus" else cfg.autoencoder
    overrides = {} if profile == "morpheus" else {
        k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    params = AutoencoderParams.model_validate(
        {**params.model_dump(), "device": "cpu", "num_threads": None, **overrides})
    min_rows = 10 if profile == "morpheus" else cfg.min_train_rows
    started = time.perf_counter()
    models = Q.train_models(qset, params, min_train_rows=min_rows)
    train_s = time.perf_counter() - started
    rule = DetectionConfig(rule="fixed", threshold=2.0) if profile == "morpheus" else cfg.detection
    scored = Q.score_set(qset, models, detection=rule)
    results = []
    label = "morpheus" if profile == "morpheus" else "ours"
    results.append(Q.measure(scored, qset.truth, score=scored["anomaly_score"].to_numpy(),
                             detected=(scored["anomaly_score"] > 1).to_numpy(), name=name, rule=label, rare=qset.rare))
    alone = None
    if profile == "ours":
        if rule.rule == "calibrated" and rule.population_share > 0:  # the same models without the check
            own_only = Q.score_set(qset, models, detection=rule.model_copy(update={"population_share": 0.0}))
            results.append(Q.measure(own_only, qset.truth, score=own_only["anomaly_score"].to_numpy(),
                                     detected=(own_only["anomaly_score"] > 1).to_numpy(), name=name,
                                     rule="own-only", rare=qset.rare))
        plain = plain_scores(scored, models, qset.schema)
        results.append(Q.measure(scored, qset.truth, score=plain, detected=plain > 2.0, name=name,
                                 rule="same+2.0", rare=qset.rare))
        if models.users and not name.startswith("lanl"):
            # every event scored by the generic model alone: users without a model of their own
            alone = Q.score_set(qset, Q.TrainedModels(generic=models.generic, users={}), detection=rule)
            results.append(Q.measure(alone, qset.truth, score=alone["anomaly_score"].to_numpy(),
                                     detected=(alone["anomaly_score"] > 1).to_numpy(), name=name,
                                     rule="generic", rare=qset.rare))
    detected = scored["anomaly_score"].to_numpy() > 1
    rates = Q.alert_rate_percentiles(scored, detected, qset.schema.user_column)
    normal = ~scored["event_id"].astype(str).isin(qset.truth["event_id"].astype(str)).to_numpy()
    normal_rates = Q.alert_rate_percentiles(scored[normal], detected[normal], qset.schema.user_column)
    if args.keep:
        keep = Path(args.keep)
        keep.mkdir(parents=True, exist_ok=True)
        scored.to_pickle(keep / f"scored_{label}_{name}.pkl")
        if alone is not None:
            alone.to_pickle(keep / f"scored_{label}-generic_{name}.pkl")
    sources = scored["threshold_source"].value_counts().to_dict() if "threshold_source" in scored else {}
    print(f"  {name} [{label}]: {len(models.users)} user models (>= {min_rows} rows) + generic trained in {train_s:.0f} s; "
          f"{len(scored)} events scored; thresholds {sources}", flush=True)
    print("    alert rate per user (share of the user's events flagged) at user percentiles: "
          + ", ".join(f"{k} {v:.3f}" for k, v in rates.items())
          + "; normal events only: " + ", ".join(f"{k} {v:.3f}" for k, v in normal_rates.items()), flush=True)
    if label == "ours":
        print("    " + incident_line(scored, detected, qset, rule.incident_gap_hours), flush=True)
    for r in results:
        rare = ", ".join(f"{k} {n} events {v:.3f} flagged" for k, (n, v) in r.rare_fpr.items())
        print(f"    {r.rule}: flagged {r.flagged} of {r.events} ({r.flagged / max(r.events, 1):.4f}); top user "
              f"{r.top_user} owns {r.top_user_share:.2f} of detections" + (f"; rare-but-normal: {rare}" if rare else ""),
              flush=True)
    del np
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(ALL_SETS))
    parser.add_argument("--profiles", default="ours,morpheus")
    parser.add_argument("--users", type=int, default=20, help="users of the default-generator sets (Morpheus's size)")
    parser.add_argument("--habits-users", type=int, default=72, help="users of the habits sets")
    parser.add_argument("--roster-users", type=int, default=72, help="users of the roster sets")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lanl", default=str(LANL_DIR), help="folder with the LANL sample and red-team file")
    parser.add_argument("--set", action="append", dest="overrides", default=[], metavar="KEY=VALUE",
                        help="autoencoder parameter of the 'ours' profile, e.g. --set width_rule=fixed (repeatable)")
    parser.add_argument("--keep", default=None, help="folder to keep every scored set in (pickles, and the generic-model-alone scoring of the synthetic sets), for analysis")
    args = parser.parse_args(argv)

    import logging

    import torch

    from dfp_ray.tools import quality as Q

    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    sets = [s for s in args.sets.split(",") if s]
    if not Path(args.lanl).exists():
        skipped = [s for s in sets if s.startswith("lanl")]
        if skipped:
            print(f"LANL sample not found at {args.lanl}: skipping {skipped}")
        sets = [s for s in sets if not s.startswith("lanl")]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dfp_quality_") as tmp:
        results = []
        for profile in args.profiles.split(","):
            print(f"\n== profile {profile}", flush=True)
            for name in sets:
                results += run_set(name, profile, Path(tmp), args)
    print("\nQuality table (recall and FPR at each rule; AUROC and recall at 1% FPR of its ranking score; "
          "FPR ord: the FPR over normal events that are not rare-but-normal)")
    print(Q.format_table(results))
    print(f"\nbench_quality: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
