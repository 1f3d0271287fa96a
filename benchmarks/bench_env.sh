#!/usr/bin/env bash
# Creates .venv-bench at the repository root: dfp_ray plus dfencoder==0.0.42, the original
# tabular-autoencoder library that Morpheus forked, so benchmarks/bench_autoencoder.py can
# time both side by side. dfencoder lives ONLY here, never in the project's .venv.
#
# Idempotent: a stamp file records a finished install; delete .venv-bench to rebuild.
# Usage: bash benchmarks/bench_env.sh   (PY=python3.11 to choose the interpreter)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-bench"
PY="${PY:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
STAMP="$VENV/.stamp-bench-torch$TORCH_VERSION-dfencoder0.0.42"

if [[ -f "$STAMP" ]]; then
    echo "bench_env: $VENV is ready (stamp $(basename "$STAMP")); nothing to do."
    exit 0
fi

echo "bench_env: creating $VENV with $($PY --version)"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip

# torch first and pinned: an unpinned torch (pulled in by dfencoder's bare `torch`
# requirement) would download several GB of CUDA wheels.
echo "bench_env: installing torch==$TORCH_VERSION"
"$VENV/bin/pip" install -q "torch==$TORCH_VERSION"

# dfencoder 0.0.42 declares torch, numpy, pandas, tqdm, scikit-learn, tensorboardX,
# matplotlib, wheel and dill. It imports dill and scikit-learn at import time; the rest are
# optional loggers. Its declared requirements are unpinned and resolve against current
# pandas 3 / numpy 2; the two pandas-3 incompatibilities it has are handled in
# bench_autoencoder.py (see `_dfencoder_frame`), not by pinning old pandas.
echo "bench_env: installing dfp_ray (editable) + dfencoder==0.0.42"
"$VENV/bin/pip" install -q -e "$ROOT" "dfencoder==0.0.42" "torch==$TORCH_VERSION"

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("torch", "numpy", "pandas", "dfencoder", "dill", "scikit-learn", "dfp-ray"):
    print(f"bench_env:   {name}=={md.version(name)}")
import dfencoder  # noqa: F401  (fails loudly here rather than in the benchmark)
PY
touch "$STAMP"
echo "bench_env: done. Run: $VENV/bin/python benchmarks/bench_autoencoder.py"
