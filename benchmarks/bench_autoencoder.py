"""dfp_ray's DFP autoencoder vs dfencoder 0.0.42, side by side, same data, same hyper-parameters.

Run in the benchmark environment (dfencoder must not enter the project's main venv):

    bash benchmarks/bench_env.sh && .venv-bench/bin/python benchmarks/bench_autoencoder.py
    .venv-bench/bin/python benchmarks/bench_autoencoder.py --rows 50000 --epochs 10

What is compared (printed with the figures):

- training: row-epochs/s = training rows x epochs run / wall seconds of the whole fit call.
  Both fits validate on the same held-out rows every epoch (dfencoder's ``fit(val=...)``);
  ours also computes its loss statistics inside fit (dfencoder 0.0.42 has none), so the
  comparison is tilted slightly against us.
- scoring: rows/s over the whole frame, best of 3. dfencoder 0.0.42 has no single call that
  returns what ``DFPAutoencoder.score`` returns (per-feature losses, z-scores, predictions);
  its closest equivalent is ``get_anomaly_score`` (losses) + ``df_predict`` (predictions),
  which is what Morpheus's ``get_results`` does too. Both that and the losses-only call are
  timed; the target is checked against the like-for-like pair and the other ratio is shown.
- validation loss: for both models, per-row per-feature losses on the SAME held-out rows,
  unswapped (MSE on standard-scaled numerics, BCE on binaries, cross-entropy on categoricals),
  averaged over rows per feature, then over features.
- physical limit: fp32 matrix-product rate measured now on exactly the products a training
  step of this network needs (batch x in -> out forward, and both backward products, for
  every layer), through torch.mm (torch's default CPU path, MKL) and through oneDNN (which
  dfp_ray uses on CPU, see dfp_ray/autoencoder/kernels.py); the faster is the limit, and our
  training FLOP rate is printed as a fraction of it. Model FLOPs per row-epoch = 3 x forward
  FLOPs (forward, input-gradient and weight-gradient products), forward FLOPs = 2 x sum(in x
  out) over the linear layers; embeddings, activations and losses are <1% and ignored.

The machine has 2 cores shared with other work: the load average is printed; figures taken
under load are noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

import numpy as np
import pandas as pd
import torch

from dfp_ray.autoencoder import AutoencoderParams, DFPAutoencoder, embedding_dim, kernels

CATEGORICAL = ["accessdevicebrowser", "accessdeviceos", "authdevicename", "reason"]
BINARY = ["result"]
NUMERIC = ["locincrement", "logcount"]

TARGET_TRAIN_RATIO = 3.0
TARGET_SCORE_RATIO = 4.0


# ---------------------------------------------------------------------------- data


def duo_like_frame(rows: int, seed: int = 0, users: int = 60) -> pd.DataFrame:
    """A deterministic Duo-like frame in time order (7 features, REFERENCE A2).

    Users have preferred browsers/OSes, 1-3 own devices and a home location; a few events
    are failures with their reasons. logcount / locincrement are the per-user-per-day running
    counters Morpheus derives. Cardinalities: ~12 browsers, ~8 OSes, ~2 devices per user
    (~120 device names), 7 reasons.
    """
    rng = np.random.default_rng(seed)
    browsers = np.array(
        ["Chrome", "Edge", "Safari", "Firefox", "Mobile Safari", "Chrome Mobile", "Samsung Internet",
         "Opera", "Brave", "Vivaldi", "IE", "Yandex"], dtype=object)  # fmt: skip
    oses = np.array(
        ["Windows", "Mac OS X", "iOS", "Android", "Linux", "Chrome OS", "Ubuntu", "Fedora"], dtype=object
    )
    browser_os = np.array([0, 0, 1, 0, 2, 3, 3, 0, 4, 4, 0, 3])
    reasons = np.array(
        ["user_approved", "valid_passcode", "trusted_network", "user_marked_fraud", "invalid_passcode",
         "deny_unenrolled_user", "user_cancelled"], dtype=object)  # fmt: skip
    success_reason = np.array([True, True, True, False, False, False, False])

    user_browser = rng.choice(len(browsers), size=users, p=_zipf(len(browsers), 1.3))
    user_devices = rng.integers(1, 4, size=users)
    device_names = [f"user{u:03d}-{kind}" for u in range(users) for kind in ("phone", "laptop", "tablet")]
    user_weight = _zipf(users, 0.8)

    user = rng.choice(users, size=rows, p=user_weight)
    seconds = np.sort(rng.integers(0, 30 * 86400, size=rows))
    own_browser = rng.random(rows) < 0.85
    browser = np.where(own_browser, user_browser[user], rng.choice(len(browsers), size=rows))
    os_idx = np.where(rng.random(rows) < 0.95, browser_os[browser], rng.choice(len(oses), size=rows))
    device = user * 3 + (rng.random(rows) * user_devices[user]).astype(int)
    reason = rng.choice(len(reasons), size=rows, p=[0.78, 0.1, 0.05, 0.01, 0.03, 0.01, 0.02])
    location = np.where(rng.random(rows) < 0.9, user * 7, rng.integers(0, 500, size=rows))

    df = pd.DataFrame(
        {
            "username": np.array([f"user{u:03d}@example.com" for u in range(users)], dtype=object)[user],
            "timestamp": pd.Timestamp("2022-08-01", tz="UTC") + pd.to_timedelta(seconds, unit="s"),
            "accessdevicebrowser": browsers[browser],
            "accessdeviceos": oses[os_idx],
            "authdevicename": np.array(device_names, dtype=object)[device],
            "reason": reasons[reason],
            "result": success_reason[reason],
            "location": location,
        }
    )
    day = seconds // 86400
    keys = [df["username"], pd.Series(day)]
    df["logcount"] = df.groupby(keys).cumcount().astype(float)
    first_seen = ~pd.DataFrame({"u": df["username"], "d": day, "l": location}).duplicated()
    df["locincrement"] = first_seen.astype(int).groupby(keys).cumsum().astype(float)
    return df.drop(columns=["location"])


def _zipf(n: int, a: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** a
    return p / p.sum()


# ---------------------------------------------------------------------------- dfencoder side


def _dfencoder_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The one shim dfencoder 0.0.42 needs under pandas 3.

    It finds categorical columns by ``dtype == 'object'``; pandas 3 reads strings as the new
    ``str`` dtype, so without this cast it would silently drop every categorical feature.
    """
    out = df[CATEGORICAL + BINARY + NUMERIC].copy()
    for column in CATEGORICAL:
        out[column] = out[column].astype(object)
    return out


def _dfencoder_feature_losses(model, df: pd.DataFrame) -> dict[str, float]:
    """Mean per-feature loss of a dfencoder model on ``df``, unswapped (its own formulas)."""
    model.eval()
    data = model.prepare_df(df)
    with torch.no_grad():
        num, binary, cat = model.forward(data)
        num_t, bin_t, codes = model.compute_targets(data)
        out = {}
        mse = model.mse(num, num_t).mean(dim=0)
        for i, name in enumerate(model.num_names):
            out[name] = float(mse[i])
        bce = model.bce(binary, bin_t).mean(dim=0)
        for i, name in enumerate(model.bin_names):
            out[name] = float(bce[i])
        for i, name in enumerate(model.categorical_fts):
            out[name] = float(model.cce(cat[i], codes[i].long()).mean())
    return out


def run_dfencoder(
    train: pd.DataFrame,
    val: pd.DataFrame,
    full: pd.DataFrame,
    p: AutoencoderParams,
    epochs: int,
    repeats: int,
):
    from dfencoder import AutoEncoder

    def new_model():
        return AutoEncoder(
            encoder_layers=list(p.encoder_layers),
            decoder_layers=list(p.decoder_layers),
            activation=p.activation,
            swap_p=p.swap_probability,
            lr=p.learning_rate,
            lr_decay=p.lr_decay,
            batch_size=p.batch_size,
            optimizer="sgd",
            scaler="standard",
            min_cats=p.min_category_count,
            progress_bar=False,
            verbose=False,
            device="cpu",
        )

    train_d, val_d, full_d = _dfencoder_frame(train), _dfencoder_frame(val), _dfencoder_frame(full)
    fit_s = fit_cpu = float("inf")
    for _ in range(repeats):  # same seeds every time: the same model, best times kept
        torch.manual_seed(p.seed or 0)
        np.random.seed(p.seed or 0)
        model = new_model()
        wall, cpu = _timed(lambda m=model: m.fit(train_d, epochs=epochs, val=val_d))
        fit_s, fit_cpu = min(fit_s, wall), min(fit_cpu, cpu)
    kinds = (len(model.categorical_fts), len(model.binary_fts), len(model.numeric_fts))
    if kinds != (len(CATEGORICAL), len(BINARY), len(NUMERIC)):
        raise RuntimeError(f"dfencoder typed the features as (categorical, binary, numeric) = {kinds}")
    loss_s, loss_cpu = _best_of(3, lambda: model.get_anomaly_score(full_d))
    predict_s, predict_cpu = _best_of(3, lambda: model.df_predict(full_d))
    losses = _dfencoder_feature_losses(model, val_d)
    return {
        "fit_s": fit_s,
        "fit_cpu": fit_cpu,
        "epochs": epochs,
        "train_rows": len(train),
        "score_losses_s": loss_s,
        "score_s": loss_s + predict_s,
        "score_cpu": loss_cpu + predict_cpu,
        "val_feature_loss": losses,
    }


# ---------------------------------------------------------------------------- our side


def run_ours(df: pd.DataFrame, val: pd.DataFrame, p: AutoencoderParams, repeats: int):
    fit_s = fit_cpu = float("inf")
    reports = []
    for _ in range(repeats):  # seeded: the same model every time, best times kept
        model = DFPAutoencoder(CATEGORICAL, NUMERIC, BINARY, p)
        wall, cpu = _timed(lambda m=model: reports.append(m.fit(df)))
        fit_s, fit_cpu = min(fit_s, wall), min(fit_cpu, cpu)
    report = reports[-1]
    score_s, score_cpu = _best_of(3, lambda: model.score(df))
    scored = model.score(val)
    losses = {f: float(scored[f"{f}_loss"].mean()) for f in model.feature_columns}
    return {
        "fit_s": fit_s,
        "fit_cpu": fit_cpu,
        "epochs": report.epochs_run,
        "train_rows": report.train_rows,
        "score_s": score_s,
        "score_cpu": score_cpu,
        "val_feature_loss": losses,
        "model": model,
    }


# ---------------------------------------------------------------------------- physical limit


def layer_shapes(model: DFPAutoencoder) -> list[tuple[int, int]]:
    return [
        (m.in_features, m.out_features) for m in model.network.modules() if isinstance(m, torch.nn.Linear)
    ]


def matmul_rate(shapes: list[tuple[int, int]], batch: int, kernel: str = "mm", windows: int = 12) -> float:
    """fp32 GFLOP/s of the forward + both backward products of every layer at this batch size.

    ``kernel="mm"``: torch.addmm/mm (torch's default CPU path, MKL); ``"onednn"``: oneDNN's
    linear operator, the transposition copies of the backward products included. Best of
    several short windows, so a burst of other work on the shared cores does not understate
    what the machine can do.
    """
    lp = torch.ops.mkldnn._linear_pointwise
    operands = []
    for i, o in shapes:
        x, w, b = torch.randn(batch, i), torch.randn(o, i), torch.randn(o)
        operands.append((x, w, b, torch.randn(batch, o)))

    def step_mm():
        for x, w, b, dy in operands:
            torch.addmm(b, x, w.t())
            dy.mm(w)
            dy.t().mm(x)

    def step_onednn():
        for x, w, b, dy in operands:
            lp(x, w, b, "none", [], "")
            lp(dy, w.t().contiguous(), None, "none", [], "")
            lp(dy.t().contiguous(), x.t().contiguous(), None, "none", [], "")

    step = step_mm if kernel == "mm" else step_onednn
    flops = sum(3 * 2 * batch * i * o for i, o in shapes)
    for _ in range(3):
        step()
    best = 0.0
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(5):
            step()
        best = max(best, 5 * flops / (time.perf_counter() - start) / 1e9)
    return best


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _best_of(n: int, fn) -> tuple[float, float]:
    """Best wall and best CPU seconds over n calls."""
    times = [_timed(fn) for _ in range(n)]
    return min(t[0] for t in times), min(t[1] for t in times)


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, default=20_000, help="rows in the generated frame (>= 20000 for the report)"
    )
    parser.add_argument("--epochs", type=int, default=5, help="training epochs for both models")
    parser.add_argument("--seed", type=int, default=0, help="seed for data and both models")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="fits per model; the best wall time is kept (shared cores)"
    )
    parser.add_argument("--no-dfencoder", action="store_true", help="time only dfp_ray (no dfencoder needed)")
    parser.add_argument(
        "--bf16",
        choices=["auto", "yes", "no"],
        default="auto",
        help="also time dfp_ray with precision=bf16 (auto: when the CPU has native bfloat16)",
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)

    if not args.no_dfencoder:
        try:
            import dfencoder  # noqa: F401
        except ImportError:
            print(
                "dfencoder is not installed in this interpreter. Run `bash benchmarks/bench_env.sh` and then "
                "`.venv-bench/bin/python benchmarks/bench_autoencoder.py` (or pass --no-dfencoder).",
                file=sys.stderr,
            )
            return 2

    df = duo_like_frame(args.rows, seed=args.seed)
    n_val = int(np.ceil(len(df) * 0.1))
    train, val = df.iloc[: len(df) - n_val], df.iloc[len(df) - n_val :]
    # Morpheus's DFP hyper-parameters; the same for both libraries.
    params = AutoencoderParams(epochs=args.epochs, seed=args.seed, device="cpu", validation_fraction=0.1)
    cards = [df[c].nunique() for c in CATEGORICAL]

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f} at start")  # fmt: skip
    print(
        f"data: {len(df)} Duo-like rows ({len(train)} train / {len(val)} validation, time order); "
        f"categorical cardinalities {dict(zip(CATEGORICAL, cards, strict=True))}"
    )
    print(
        f"hyper-parameters (both): layers {params.encoder_layers}+{params.decoder_layers} relu, SGD lr "
        f"{params.learning_rate} decay {params.lr_decay}/epoch, batch {params.batch_size}, swap "
        f"{params.swap_probability}, {args.epochs} epochs, min category count {params.min_category_count}, "
        f"validation every epoch"
    )

    ours = run_ours(df, val, params, args.repeats)
    model = ours.pop("model")
    shapes = layer_shapes(model)
    macs = sum(i * o for i, o in shapes)
    fwd_flops = 2 * macs
    train_flops = 3 * fwd_flops

    results = {"dfp_ray (fp32)": ours}
    want_bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if want_bf16:
        results["dfp_ray (bf16)"] = run_ours(
            df, val, params.model_copy(update={"precision": "bf16"}), args.repeats
        )
        results["dfp_ray (bf16)"].pop("model")
    if not args.no_dfencoder:
        results["dfencoder 0.0.42"] = run_dfencoder(train, val, df, params, args.epochs, args.repeats)

    mm_rate = matmul_rate(shapes, params.batch_size, "mm")
    onednn_rate = matmul_rate(shapes, params.batch_size, "onednn") if kernels.onednn_available() else 0.0
    fp32_rate = max(mm_rate, onednn_rate)
    print(
        f"network: linear layers {shapes}, embeddings {[embedding_dim(c + 1) for c in cards]}; "
        f"{fwd_flops / 1e6:.2f} MFLOP forward per row, {train_flops / 1e6:.2f} MFLOP per training row-epoch"
    )
    print(f"measured fp32 matmul rate for these layers at batch {params.batch_size}: torch.mm {mm_rate:.0f} GFLOP/s, "
          f"oneDNN {onednn_rate:.0f} GFLOP/s -> physical limit {fp32_rate * 1e9 / train_flops:,.0f} training "
          f"row-epochs/s, {fp32_rate * 1e9 / fwd_flops:,.0f} scored rows/s (forward only)")  # fmt: skip
    print()
    header = (
        f"{'':18} {'train row-epochs/s':>19} {'score rows/s':>13} {'val loss':>9}  (fit s, epochs, score s)"
    )
    print(header)
    for name, r in results.items():
        r["train_rate"] = r["train_rows"] * r["epochs"] / r["fit_s"]
        r["score_rate"] = args.rows / r["score_s"]
        r["val_loss"] = float(np.mean(list(r["val_feature_loss"].values())))
        print(
            f"{name:18} {r['train_rate']:>19,.0f} {r['score_rate']:>13,.0f} {r['val_loss']:>9.4f}  "
            f"({r['fit_s']:.2f}, {r['epochs']}, {r['score_s']:.3f})"
        )
    if "dfencoder 0.0.42" in results:
        d = results["dfencoder 0.0.42"]
        print(
            f"{'  dfencoder losses only (get_anomaly_score)':44} {args.rows / d['score_losses_s']:>,.0f} rows/s "
            f"({d['score_losses_s']:.3f} s)"
        )
    print()
    print(f"fp32 training at {ours['train_rate'] * train_flops / 1e9:.0f} GFLOP/s = "
          f"{ours['train_rate'] * train_flops / 1e9 / fp32_rate:.0%} of the faster measured fp32 matmul rate")  # fmt: skip
    per_cpu = ours["train_rows"] * ours["epochs"] * train_flops / ours["fit_cpu"] / 1e9
    threads = torch.get_num_threads()
    print(
        f"  by CPU time: {per_cpu:.0f} GFLOP per CPU-second = {per_cpu / (fp32_rate / threads):.0%} of the "
        f"limit per thread (validation passes, loss statistics and encoding included in the time)"
    )
    if "dfencoder 0.0.42" in results:
        d = results["dfencoder 0.0.42"]
        print(
            f"dfencoder trains at {d['train_rate'] * train_flops / 1e9:.0f} GFLOP/s = "
            f"{d['train_rate'] * train_flops / 1e9 / fp32_rate:.0%} of it"
        )
        for name, r in results.items():
            if name.startswith("dfp_ray"):
                train_ratio = r["train_rate"] / d["train_rate"]
                score_ratio = r["score_rate"] / d["score_rate"]
                loss_only_ratio = r["score_rate"] / (args.rows / d["score_losses_s"])
                ok = (
                    train_ratio >= TARGET_TRAIN_RATIO
                    and score_ratio >= TARGET_SCORE_RATIO
                    and r["val_loss"] <= d["val_loss"]
                )
                print(
                    f"{name}: training {train_ratio:.2f}x dfencoder (target {TARGET_TRAIN_RATIO:g}x), "
                    f"scoring {score_ratio:.2f}x (target {TARGET_SCORE_RATIO:g}x; {loss_only_ratio:.2f}x its "
                    f"losses-only call), validation loss {r['val_loss']:.4f} vs {d['val_loss']:.4f} "
                    f"({'no worse' if r['val_loss'] <= d['val_loss'] else 'WORSE'}) -> "
                    f"{'targets met' if ok else 'targets NOT all met'}"
                )
                print(
                    f"{'':{len(name)}}  by process CPU time (less sensitive to other work on the cores): training "
                    f"{d['fit_cpu'] / d['epochs'] / (r['fit_cpu'] / r['epochs']):.2f}x, scoring "
                    f"{d['score_cpu'] / r['score_cpu']:.2f}x"
                )
        print("per-feature validation loss (dfp_ray fp32 / dfencoder):")
        for f in CATEGORICAL + BINARY + NUMERIC:
            print(f"  {f:22} {ours['val_feature_loss'][f]:.4f} / {d['val_feature_loss'][f]:.4f}")
    print(f"load average {os.getloadavg()[0]:.2f} at end (2 cores: above ~0.5 means other work shared them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
