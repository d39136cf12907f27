#!/usr/bin/env bash
# One prepared accelerator check (docs/accelerators.md, "Checking a machine"): fits in 8 minutes
# on one GPU or TPU chip and downloads nothing.
#
#   bash bench/accelerator_check.sh                          # on the accelerator machine
#   JAX_PLATFORMS=cpu bash bench/accelerator_check.sh --small   # reduced sizes, on a CPU
#
# 1. environment: versions, devices, device kind (and the modules the checkout needs);
# 2. bench/throughput.py --parts=sweep,command: ViT-S all-exit (12 exits + 12 ATTN) images/s at
#    batch 256 and 1024 in float32 and bfloat16, against the chip's bf16 peak (bench/peaks.py)
#    and a measured matmul; then the scoring command vs its own program (bf16, batch 256);
# 3. bench/edc.py: the EDC engine at IJB-C size (15,658,489 pairs, 26 quality sets).
# Needs jax, flax, optax, orbax-checkpoint (usually installed) plus pillow, ml-collections and
# tqdm: if they are missing, put their wheels in $WHEELS (default ./wheels) and they are
# installed from there (pip --no-index). The checkout itself is used from PYTHONPATH.
# Outputs: $OUT (default a new temporary folder): env.txt, throughput.md, edc.md, summary.md.
# Every step has its own time limit; the whole check stops before 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
SMALL=0
[[ "${1:-}" == "--small" ]] && SMALL=1
OUT=${OUT:-$(mktemp -d /tmp/accelerator_check.XXXXXX)}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false     # the score command runs beside the benchmark
PY=${PYTHON:-python3}
START=$(date +%s)

missing=$($PY - <<'EOF'
import importlib.util
need = {"jax": "jax", "flax": "flax", "optax": "optax", "orbax": "orbax-checkpoint",
        "PIL": "pillow", "ml_collections": "ml-collections", "tqdm": "tqdm", "absl": "absl-py"}
print(" ".join(p for m, p in need.items() if importlib.util.find_spec(m) is None))
EOF
)
if [[ -n "$missing" ]]; then
  WHEELS=${WHEELS:-wheels}
  echo "missing: $missing; installing from $WHEELS (no index)"
  $PY -m pip install --no-index --find-links "$WHEELS" $missing || exit 1
fi

if [[ $SMALL == 1 ]]; then
  SWEEP=8:float32,8:bfloat16
  THROUGHPUT=(--repeats=2 --command_images=48 --command_batch=16 --command_rounds=1)
  EDC=(--pairs=300000 --genuine=400 --sets=2)
else
  SWEEP=256:float32,256:bfloat16,1024:float32,1024:bfloat16
  THROUGHPUT=(--repeats=5 --dtype=bfloat16 --command_images=8192 --command_batch=256
              --command_rounds=2 --decode_threads=8)
  EDC=()
fi

$PY - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import os, platform, jax, flax, optax
print(f"python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, "
      f"optax {optax.__version__}; {os.cpu_count()} CPU cores")
print(f"devices: {jax.devices()}; kind {jax.devices()[0].device_kind!r}")
EOF

echo "== throughput (limit 300 s)"
timeout 300 $PY -m bench.throughput --parts=sweep,command --sweep=$SWEEP "${THROUGHPUT[@]}" \
    2>"$OUT/throughput.log" | tee "$OUT/throughput.md"
echo "throughput exit status ${PIPESTATUS[0]}"

left=$(( 450 - ($(date +%s) - START) ))
(( left < 60 )) && left=60
echo "== EDC at IJB-C size (limit ${left} s)"
timeout "$left" $PY -m bench.edc "${EDC[@]}" 2>"$OUT/edc.log" | tee "$OUT/edc.md"
echo "edc exit status ${PIPESTATUS[0]}"

{
  echo "# accelerator check ($(date -u +%FT%TZ), $(( $(date +%s) - START )) s)"
  cat "$OUT/env.txt"
  echo
  grep -E "^(matmul|device kind)" "$OUT/throughput.md"
  echo
  # the tables, without the known-peaks table (from "Known peaks" to the next blank line)
  awk '/^Known peaks/ {skip = 1} skip && /^$/ {skip = 0; next} !skip && /^\|/' \
      "$OUT/throughput.md"
  grep -E "^command / program" "$OUT/throughput.md"
  echo
  cat "$OUT/edc.md"
} > "$OUT/summary.md"
echo "== summary: $OUT/summary.md"
cat "$OUT/summary.md"
