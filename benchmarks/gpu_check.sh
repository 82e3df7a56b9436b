#!/usr/bin/env bash
# GPU check in ONE call (~11 min): environment, the CUDA tests, then one reproduction window; small results to $OUT.
#
#   OUT=/path/to/results bash benchmarks/gpu_check.sh          # BUDGET_MIN=8 (reproduction window), PYTHON=python3
#
# The reproduction's run folders (checkpoints, too large to copy back) live in $REPRO_DIR (default runs/reproduce,
# git-ignored, so a warm machine keeps them between calls): calling this again resumes where the last window stopped.
# Data: $GLFUSE_SHARED, ./shared or ../shared (data/ and golden/); without it only the throughput stage runs.
# $OUT receives: env.txt, test_cuda.txt (+ junit XML), reproduce.txt (console), reproduce/ (summary.md, summary.json,
# state.json, per-run metrics/reports and job logs — no weights).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
PY=${PYTHON:-python3}
BUDGET_MIN=${BUDGET_MIN:-8}
REPRO_DIR=${REPRO_DIR:-runs/reproduce}
mkdir -p "$OUT" "$REPRO_DIR"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
t0=$(date +%s)

{
  date -u
  nvidia-smi || echo "nvidia-smi not found"
  "$PY" - <<'EOF'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "devices", torch.cuda.device_count(), "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
for m in ("glfuse", "monai", "torchmetrics", "safetensors", "rich", "yaml", "nibabel", "scipy", "PIL", "pytest"):
    try:
        importlib.import_module(m)
        print("ok     ", m)
    except Exception as e:  # noqa: BLE001
        print("MISSING", m, e)
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== CUDA tests"
timeout 200 "$PY" -m pytest -q -rs tests/test_cuda.py -p no:cacheprovider --junitxml "$OUT/test_cuda.xml" \
  > "$OUT/test_cuda.txt" 2>&1
echo "test_cuda exit $?" | tee -a "$OUT/test_cuda.txt"
tail -n 25 "$OUT/test_cuda.txt"

echo "== reproduction window (${BUDGET_MIN} min)"
timeout $((BUDGET_MIN * 60 + 90)) "$PY" benchmarks/reproduce.py --budget-min "$BUDGET_MIN" --out "$REPRO_DIR" \
  > "$OUT/reproduce.txt" 2>&1
rc=$?
echo "reproduce exit $rc" | tee -a "$OUT/reproduce.txt"
if [ "$rc" -ne 0 ]; then  # stopped from outside: the summary from what state.json recorded so far
  "$PY" benchmarks/reproduce.py --summary-only --out "$REPRO_DIR" >> "$OUT/reproduce.txt" 2>&1
fi

# small files only: summaries, state, metrics, reports, logs (no checkpoints)
(cd "$REPRO_DIR" && find . -type f \( -name '*.md' -o -name '*.json' -o -name '*.csv' -o -name '*.log' -o -name '*.png' \) \
   -not -path '*/best/*' -not -path '*/last/*' -not -path '*/epoch_*' -not -path '*/fused/*' -size -2M -print0 |
   while IFS= read -r -d '' f; do mkdir -p "$OUT/reproduce/$(dirname "$f")" && cp "$f" "$OUT/reproduce/$f"; done)
cat "$REPRO_DIR/summary.md" 2>/dev/null || tail -n 40 "$OUT/reproduce.txt"
echo "gpu_check wall $(( $(date +%s) - t0 )) s"
