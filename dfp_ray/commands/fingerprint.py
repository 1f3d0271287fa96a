"""`dfp-ray fingerprint`: create model fingerprints and score data against them.

Thin wrapper over :mod:`dfp_ray.fingerprint`; heavy imports (torch, keras) happen inside
the handlers so that ``dfp-ray --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

NAME = "fingerprint"
DEFAULT_PERCENTILE = 95.0  # mirrors dfp_ray.fingerprint.DEFAULT_PERCENTILE without importing torch


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,28,28, got {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive dimensions, got {text!r}")
    return dims


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _percentile(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 100.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100 (exclusive), got {value}")
    return value


def _add_model_options(p: argparse.ArgumentParser, *, for_score: bool) -> None:
    what = "the model the fingerprint was created from (required for layered fingerprints)" if for_score else (
        "trained model to fingerprint; omit for a non-layered fingerprint of the raw data"
    )
    p.add_argument("--model", help=f"{what}: Keras .h5/.keras, or PyTorch .pt2 (torch.export), TorchScript .pt, "
                   "or a state dict (.pt/.safetensors) with --model-def")
    p.add_argument("--model-type", choices=["keras", "pytorch"],
                   help="framework of --model; recognised from the file's content when omitted, checked when given")
    p.add_argument("--model-def", help="Python file that builds the PyTorch module for a state dict: must define "
                   "build_model(), a class Model, or exactly one nn.Module subclass (needs --allow-model-code)")
    p.add_argument("--allow-model-code", action="store_true",
                   help="allow executing --model-def (it is Python code that runs with your rights; "
                   "only for files you trust). Without it a --model-def is refused")
    p.add_argument("--dataset", required=True,
                   help="numpy data: .npy, .npz (see --dataset-key) or a pickled numpy array (only numpy arrays are "
                   "admitted; anything else in a pickle is refused, never executed)")
    p.add_argument("--dataset-key", help="name of the array inside an .npz or a pickled dict")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N] (default: auto)")
    _add_key_option(p, signs=not for_score)


def _add_key_option(p: argparse.ArgumentParser, *, signs: bool) -> None:
    what = "sign the fingerprint with it (HMAC-SHA256)" if signs else (
        "accept only fingerprints signed with it")
    p.add_argument("--key-env", metavar="NAME",
                   help=f"name of an environment variable holding an HMAC key: {what} "
                   "(conventionally DFP_RAY_FINGERPRINT_KEY; the key itself never goes on the command line)")


def _key(args: argparse.Namespace) -> bytes | None:
    """The HMAC key named by --key-env; an unset variable is an error (not a silent unsigned run)."""
    import os

    name = getattr(args, "key_env", None)
    if not name:
        return None
    value = os.environ.get(name, "")
    if not value:
        raise ValueError(f"--key-env {name}: environment variable {name} is not set (or empty)")
    return value.encode()


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        NAME,
        help="model fingerprints: out-of-distribution detection for trained models (NeuralFP-style)",
        description=(
            "Create a fingerprint of a trained model (one autoencoder per layer on its activations for the training "
            "data) or of raw data, and score new data against it: the percentage of samples deemed outliers. "
            "See docs/fingerprint.md."
        ),
    )
    sub = parser.add_subparsers(dest="fingerprint_command", metavar="ACTION")
    parser.set_defaults(handler=lambda args: (parser.print_help(), 2)[1])

    create = sub.add_parser("create", help="create a fingerprint zip from a model and its training data",
                            description="Create a fingerprint zip from a model and its training data.")
    _add_model_options(create, for_score=False)
    create.add_argument("--out", required=True, help="path of the fingerprint zip to write")
    create.add_argument("--partial-activations", type=_fraction, default=1.0,
                        help="fraction of each layer's (mapped) units kept, chosen at random with --seed and "
                        "stored in the fingerprint (default: 1.0 = all)")
    create.add_argument("--activation-mapping", action=argparse.BooleanOptionalAction, default=True,
                        help="map conv/pool feature maps to the mean and max of each cell of a "
                        "--mapping-grid grid per channel (default: on); --no-activation-mapping uses every unit")
    create.add_argument("--mapping-grid", type=int, default=4,
                        help="grid cells per spatial dimension for activation mapping (default: 4)")
    create.add_argument("--layers", help="comma-separated layer names to fingerprint (default: every layer with "
                        "weights or pooling)")
    create.add_argument("--input-shape", type=_shape,
                        help="per-sample model input shape such as 1,28,28, for models that do not declare one "
                        "(TorchScript, state dicts)")
    create.add_argument("--epochs", type=int, default=30, help="training epochs per layer autoencoder (default: 30)")
    create.add_argument("--batch-size", type=int, default=128, help="autoencoder training batch size (default: 128)")
    create.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate (default: 0.001)")
    create.add_argument("--calibration-fraction", type=float, default=0.3,
                        help="share of the rows held out to normalise and calibrate scores (default: 0.3)")
    create.add_argument("--combine", choices=["max", "mean"], default="max",
                        help="how normalised per-layer scores combine into one (default: max)")
    create.add_argument("--percentile", type=_percentile, default=DEFAULT_PERCENTILE,
                        help=f"default threshold percentile stored in the fingerprint (default: {DEFAULT_PERCENTILE:g})")
    create.add_argument("--seed", type=int, default=0, help="seed for unit choice, split and training (default: 0)")
    create.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    create.set_defaults(handler=run_create)

    score = sub.add_parser("score", help="score a dataset against a fingerprint: percent of samples deemed outliers",
                           description="Score a dataset against a fingerprint and print the percentage of samples "
                           "deemed outliers.")
    score.add_argument("--fingerprint", required=True, help="fingerprint zip made by 'fingerprint create'")
    _add_model_options(score, for_score=True)
    score.add_argument("--percentile", type=_percentile, default=None,
                       help="threshold percentile of the calibration scores; in-distribution data is flagged at "
                       "about 100 - percentile percent (default: the fingerprint's, normally "
                       f"{DEFAULT_PERCENTILE:g})")
    score.add_argument("--num-layers", type=int,
                       help="expected number of fingerprinted layers; an error if the fingerprint has another number")
    score.add_argument("--activation-mapping", action=argparse.BooleanOptionalAction, default=None,
                       help="state whether the fingerprint used activation mapping; an error if it did not "
                       "(default: take it from the fingerprint)")
    score.add_argument("--batch-size", type=int, default=256, help="batch size when running the model (default: 256)")
    score.add_argument("--json", action="store_true",
                       help="print one JSON object: score, threshold, per-sample flags and scores, per-layer scores")
    score.set_defaults(handler=run_score)

    info = sub.add_parser("info", help="print a fingerprint's manifest summary as JSON",
                          description="Validate a fingerprint zip and print its settings and layers as JSON.")
    info.add_argument("--fingerprint", required=True, help="fingerprint zip to describe")
    _add_key_option(info, signs=False)
    info.set_defaults(handler=run_info)


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def run_create(args: argparse.Namespace) -> int:
    from dfp_ray import fingerprint as nfp

    try:
        key = _key(args)
        fp = nfp.create(
            args.dataset,
            args.model,
            model_type=args.model_type,
            model_def=args.model_def,
            allow_model_code=args.allow_model_code,
            dataset_key=args.dataset_key,
            partial_activations=args.partial_activations,
            activation_mapping=args.activation_mapping,
            mapping_grid=args.mapping_grid,
            layers=[name.strip() for name in args.layers.split(",") if name.strip()] if args.layers else None,
            input_shape=args.input_shape,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            calibration_fraction=args.calibration_fraction,
            combine=args.combine,
            default_percentile=args.percentile,
            seed=args.seed,
            device=args.device,
            progress=not args.no_progress,
        )
        out = fp.save(args.out, key=key)
    except nfp.FingerprintError as exc:
        return _fail(exc)
    except ValueError as exc:  # pydantic validation of the settings
        return _fail(exc)
    layers = ", ".join(f"{layer.name}({len(layer.units_kept)})" for layer in fp.manifest.layers)
    print(f"wrote {fp.kind} fingerprint with {fp.num_layers} layers [{layers}] to {out}")
    return 0


def run_score(args: argparse.Namespace) -> int:
    from dfp_ray import fingerprint as nfp

    if args.model is None and (args.model_type or args.model_def):
        return _fail(ValueError("--model-type/--model-def need --model"))
    try:
        key = _key(args)
        result = nfp.score(
            args.fingerprint,
            args.dataset,
            args.model,
            model_type=args.model_type,
            model_def=args.model_def,
            allow_model_code=args.allow_model_code,
            dataset_key=args.dataset_key,
            percentile=args.percentile,
            num_layers=args.num_layers,
            activation_mapping=args.activation_mapping,
            device=args.device,
            batch_size=args.batch_size,
            key=key,
        )
    except ValueError as exc:  # FingerprintError is a ValueError; so is an unset --key-env
        return _fail(exc)
    if args.json:
        print(result.model_dump_json())
    else:
        print(
            f"score: {result.score:.2f} (% of {result.n_samples} samples deemed outliers; "
            f"percentile {result.percentile:g}, threshold {result.threshold:.4f})"
        )
    return 0


def run_info(args: argparse.Namespace) -> int:
    from dfp_ray import fingerprint as nfp

    try:
        fp = nfp.load_fingerprint(args.fingerprint, key=_key(args))
    except ValueError as exc:
        return _fail(exc)
    m = fp.manifest
    summary = {
        "kind": m.kind,
        "num_layers": m.num_layers,
        "created_at": m.created_at.isoformat(),
        "format_version": m.format_version,
        "signed": bool(m.integrity and m.integrity.hmac_sha256),
        "input_shape": m.input_shape,
        "default_percentile": m.default_percentile,
        "settings": m.settings.model_dump(),
        "model": m.model.model_dump() if m.model else None,
        "calibration": {"fit_rows": m.calibration.fit_rows, "calibration_rows": m.calibration.calibration_rows,
                        "thresholds": m.calibration.thresholds},
        "layers": [
            {"name": layer.name, "kind": layer.kind, "raw_shape": layer.raw_shape, "mapped_size": layer.mapped_size,
             "units_kept": len(layer.units_kept)}
            for layer in m.layers
        ],
    }
    print(json.dumps(summary, indent=2))
    return 0
