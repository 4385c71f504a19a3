#!/usr/bin/env bash
# Run on a lent GPU machine (see DEVELOPERS notes in benchmarks/README.md), from the repository root,
# after the offline kit (onnxruntime-gpu, transformers 4.57, Optimum) was installed to /tmp/site.
#   bash benchmarks/gpu/session.sh tests        CUDA tests + GPU parity tests -> $OUT/cuda-tests.log
#   bash benchmarks/gpu/session.sh bench MODEL  GPU benchmark of MODEL -> $OUT/gpu-MODEL.{json,md,png}
set -uo pipefail
[ -f /tmp/site/cuda-env.sh ] && source /tmp/site/cuda-env.sh
# `ortdecode_export` is the export/ folder under its import name (pip's package-dir mapping, by hand).
mkdir -p /tmp/links && ln -sfn "$PWD/export" /tmp/links/ortdecode_export
export PYTHONPATH=/tmp/site:/tmp/links:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export ORTDECODE_COMMIT=$(cat .commit 2>/dev/null || echo unknown)
case "$1" in
  tests)
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
      python3 -c "import onnxruntime as o, torch, transformers; print('onnxruntime', o.__version__, o.get_available_providers()); print('torch', torch.__version__, 'transformers', transformers.__version__)"
      git rev-parse --short HEAD 2>/dev/null || cat .commit 2>/dev/null
    } > "$OUT/environment.txt" 2>&1
    cat "$OUT/environment.txt"
    python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_parity.py tests/test_runner.py \
      tests/test_default_model.py -k "not non_editable" 2>&1 | tee "$OUT/cuda-tests.log" | tail -25
    ;;
  bench)
    python3 -m benchmarks.run --device cuda --models "$2" --engines ortdecode transformers optimum \
      --repeats "${REPEATS:-3}" --out "$OUT" --tag "gpu-$2" 2>&1 | grep -v "run/s\|s/run" | tee "$OUT/gpu-$2.log" | tail -30
    ;;
esac
