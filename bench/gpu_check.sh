#!/usr/bin/env bash
# The engine on CUDA, end to end through its own modules (issue 13: the engine split into run/loop/parallel/
# batches/…, behaviour unchanged). On the GPU machine, from the repository root, with the image's own python3
# (nothing to carry; the test fixtures are built on the spot):
#
#   bash bench/gpu_check.sh            # about 4 minutes on one H200
#
# 1. fast path vs padded loop: bench/check_fast_train.py, a tiny ChatGLM3 in bf16 through both (and the fast
#    path with its own checkpointing): losses within 2% step by step, no error finding.
# 2. throughput and memory of `lorakit train`'s own loop: bench/bench.py --variants lk_packed_8k (28 layers,
#    ChatGLM3-6B shape, rows of ≤ 8,192 tokens) against bench/RESULTS.md: 22,807 real tokens/s and 36.34 GiB
#    peak; within noise means ≥ 97% of the tokens/s and ≤ 0.5 GiB more memory.
# 3. the engine's CUDA test cases: pytest engine/tests -k cuda.
#
# Prints one verdict line per part and `gpu check: PASS` or `gpu check: FAIL`; $OUT (else /tmp/lorakit-gpu-check)
# receives gpu_check.txt, the bench's results.json and the pytest log.
set -u
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-/tmp/lorakit-gpu-check}
mkdir -p "$OUTDIR"
PY=$(command -v python3)
LOG="$OUTDIR/gpu_check.txt"
: >"$LOG"
say() { echo "$*" | tee -a "$LOG"; }
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$LOG"
status=0

say "== 1. fast path vs padded loop (bf16)"
"$PY" bench/check_fast_train.py 2>"$OUTDIR/check_fast_train.err" | tee -a "$LOG"
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] && say "fast path vs padded loop: PASS" || { say "fast path vs padded loop: FAIL (exit $rc)"; status=1; }

say "== 2. lk_packed_8k through the engine's loop"
"$PY" bench/bench.py --variants lk_packed_8k --out "$OUTDIR" >"$OUTDIR/bench.log" 2>&1
rc=$?
"$PY" - "$OUTDIR/results.json" <<'EOF' | tee -a "$LOG"
import json, sys
REF_TOK_S, REF_GIB = 22807, 36.34  # bench/RESULTS.md, lorakit packed ≤ 8,192 tok/row, H200
try:
    run = json.load(open(sys.argv[1]))["runs"]["lk_packed_8k"]
except (OSError, KeyError, ValueError) as e:
    print(f"lk_packed_8k: FAIL (no result: {e})")
    raise SystemExit(1)
if "error" in run:
    print(f"lk_packed_8k: FAIL ({run['error']})")
    raise SystemExit(1)
tok, gib = run["real_tok_s"], run["peak_mem_gib"]
ok = tok >= 0.97 * REF_TOK_S and gib <= REF_GIB + 0.5
print(f"lk_packed_8k: {tok:,} real tok/s ({tok / REF_TOK_S:.1%} of {REF_TOK_S:,}), {gib} GiB peak "
      f"(RESULTS.md {REF_GIB}), step {run['step_s']} s, loop {run.get('loop')}: {'PASS' if ok else 'FAIL'}")
raise SystemExit(0 if ok else 1)
EOF
[ "${PIPESTATUS[0]}" = 0 ] && [ "$rc" = 0 ] || { status=1; tail -20 "$OUTDIR/bench.log" | tee -a "$LOG"; }

say "== 3. pytest engine/tests -k cuda"
# test_schema_check.py compares the engine's schema checker with jsonschema, a test-only reference the GPU image
# does not have (the engine itself needs none); it has no CUDA case and runs in CI.
PYTHONPATH=engine "$PY" -m pytest engine/tests -k cuda -q -p no:cacheprovider \
  --ignore=engine/tests/test_schema_check.py >"$OUTDIR/pytest_cuda.log" 2>&1
rc=$?
say "pytest -k cuda: $(tail -1 "$OUTDIR/pytest_cuda.log") (exit $rc)"
[ "$rc" = 0 ] || { status=1; grep -E "^(FAILED|ERROR)" "$OUTDIR/pytest_cuda.log" | head -20 | tee -a "$LOG"; }

[ "$status" = 0 ] && say "gpu check: PASS" || say "gpu check: FAIL"
exit "$status"
