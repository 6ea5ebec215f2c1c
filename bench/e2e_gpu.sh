#!/usr/bin/env bash
# lorakit on the GPU, end to end through the CLI, as a user would run it: a ChatGLM3-6B-shaped random
# checkpoint in the official safetensors-shard layout with the official tokenizer files, a huanhuan-shaped
# dataset, then `lorakit doctor run.yaml --json` and `lorakit train` (smoke run on) for the Self-LLM recipe
# and for `train.pack_tokens: 8192` (and on 2 GPUs with --gpus 2); the adapter reload check's planted faults
# on CUDA; the kernels' rounding noise on the 6B shape; a table of exit codes, tokens/s, peak memory measured
# against the doctor's estimate, and error findings. Under ~9 minutes on one H200.
#
#   bench/e2e_gpu.sh --tokenizer DIR [--pack DIR] [--gpus 2] [--steps 40] [--pack-steps 12] [--stages LIST]
#   bench/e2e_gpu.sh --dry --tokenizer DIR          (here, on the CPU: the same script at a tiny shape)
#
# --tokenizer: a folder with the official tokenizer.model and tokenizer_config.json (and config.json): the
#   device copies only the repository, so carry a copy of ../shared/models/chatglm3-6b (bench/e2e_prepare.sh
#   puts one in .e2e/tokenizer).
# --pack: what bench/e2e_prepare.sh wrote (default .e2e): node.xz (Node 20, the machine has none),
#   node_modules.tar.xz (the production dependencies). dist/ must be built (npm run build) and carried.
#   The machine's own python3 (CUDA torch, transformers, peft) is the engine's interpreter (LORAKIT_PYTHON):
#   lorakit names any package it lacks, with the one command that adds only those.
# --dry: the same script on the CPU with a tiny shape (2 layers, hidden 64), fp32, a few steps: the plumbing.
# --stages: a comma list of recipe, pack, resume, faults, noise, gpus (default: all but gpus; --gpus 2 adds gpus).
#   On a 2-GPU machine, `--gpus 2 --stages gpus` runs the data-parallel pack run alone.
# $OUT (the device call's output folder, at most 8 files come back; else /tmp/lorakit-e2e-out) receives
# summary.txt, summary.json, e2e.log and logs.tar.gz (every log: doctor JSON, train output, engine.log, the
# fault test, the noise table). Work files (checkpoint, data, runs) go to $E2E_WORK or /tmp/lorakit-e2e.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TOKENIZER="" PACK=.e2e GPUS=1 DRY=0 STEPS=40 PACK_STEPS=12 STAGES=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tokenizer) TOKENIZER=$2; shift 2 ;;
    --pack) PACK=$2; shift 2 ;;
    --gpus) GPUS=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --pack-steps) PACK_STEPS=$2; shift 2 ;;
    --stages) STAGES=$2; shift 2 ;;
    --dry) DRY=1; shift ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -n "$TOKENIZER" ] && [ -f "$TOKENIZER/tokenizer.model" ] || { echo "--tokenizer DIR with tokenizer.model is required" >&2; exit 2; }
TOKENIZER=$(cd "$TOKENIZER" && pwd)
[ -n "$STAGES" ] || { STAGES=recipe,pack,resume,faults,noise; [ "$GPUS" -ge 2 ] && STAGES=$STAGES,gpus; }
want() { [[ ",$STAGES," == *",$1,"* ]]; }
OUTDIR=${OUT:-/tmp/lorakit-e2e-out}
WORK=${E2E_WORK:-/tmp/lorakit-e2e}
LOGS=$WORK/logs
rm -rf "$LOGS" && mkdir -p "$OUTDIR" "$LOGS"
export PYTHONUNBUFFERED=1
log() { echo "[e2e $(date +%T) +${SECONDS}s] $*" | tee -a "$LOGS/e2e.log" >&2; }
# A stage starts only while the 9 minutes leave it room (seconds elapsed below its own start limit).
before() { [ "$DRY" = 1 ] || [ "$SECONDS" -lt "$1" ]; }

# ---------------------------------------------------------------- Node and the built CLI
if ! command -v node >/dev/null; then
  [ -f "$PACK/node.xz" ] || { log "no node on PATH and no $PACK/node.xz (bench/e2e_prepare.sh)"; exit 2; }
  mkdir -p /tmp/nodebin && xz -dc "$PACK/node.xz" >/tmp/nodebin/node && chmod +x /tmp/nodebin/node
  export PATH=/tmp/nodebin:$PATH
fi
if [ ! -d node_modules/better-sqlite3 ]; then
  [ -f "$PACK/node_modules.tar.xz" ] || { log "no node_modules and no $PACK/node_modules.tar.xz"; exit 2; }
  tar -xJf "$PACK/node_modules.tar.xz"
fi
[ -f dist/cli/main.js ] || { log "dist/ is not built: npm run build, and carry dist"; exit 2; }
LORAKIT=(node "$ROOT/bin/lorakit.js")
log "node $(node --version), lorakit CLI from dist/"

# ---------------------------------------------------------------- the machine's own Python
PY=$(command -v python3)
export LORAKIT_PYTHON=$PY
if [ "$DRY" = 1 ] && [ -x "${LORAKIT_DRY_PYTHON:-}" ]; then export LORAKIT_PYTHON=$LORAKIT_DRY_PYTHON PY=$LORAKIT_DRY_PYTHON; fi
"$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'peft', peft.__version__)" 2>&1 | tee -a "$LOGS/e2e.log"

# ---------------------------------------------------------------- checkpoint, data, configs
if [ "$DRY" = 1 ]; then SHAPE=tiny DEVICE=cpu SHARDS=2 RECORDS=400 STEPS=4 PACK_STEPS=3 TINY=--tiny
else SHAPE=6b DEVICE=cuda SHARDS=7 RECORDS=3729 TINY=""; fi
MODEL=$WORK/chatglm3-6b-$SHAPE
log "checkpoint ($SHAPE) → $MODEL"
"$PY" bench/e2e_make.py checkpoint --tokenizer "$TOKENIZER" --out "$MODEL" --shape $SHAPE --device $DEVICE \
  --shards $SHARDS 2>&1 | tee -a "$LOGS/e2e.log" || { log "checkpoint failed"; exit 1; }
"$PY" bench/e2e_make.py dataset --tokenizer "$TOKENIZER" --out "$WORK/huanhuan.json" --records $RECORDS 2>&1 \
  | tee -a "$LOGS/e2e.log"
RUNS=$("$PY" bench/e2e_make.py configs --work "$WORK" --model "$MODEL" --data "$WORK/huanhuan.json" \
  --steps "$STEPS" --pack-steps "$PACK_STEPS" --gpus "$GPUS" $TINY)
log "runs: $RUNS"

# A user's shell often sets PYTHONPATH: lorakit keeps it, behind the engine's own folder (issue 12, item 6c).
mkdir -p "$WORK/user-site" && export PYTHONPATH="$WORK/user-site"
log "PYTHONPATH=$PYTHONPATH for every lorakit command (as a user's shell may set it)"

# ---------------------------------------------------------------- doctor, then train, through the CLI
run_cli() {  # doctor --json, then train --fresh (the smoke run on), for one run config
  local run=$1 skip=()
  [ "$run" != recipe ] && skip=(--skip-model)  # the model check loads the 12 GB base: once is enough here
  log "lorakit doctor $run.yaml --json ${skip[*]}"
  (cd "$WORK" && "${LORAKIT[@]}" doctor "$run.yaml" --json "${skip[@]}" >"$LOGS/doctor-$run.json" 2>"$LOGS/doctor-$run.err")
  echo $? >"$LOGS/doctor-$run.rc"
  log "lorakit train $run.yaml --fresh (smoke run on)"
  # E2E_TRAIN_ARGS: extra `lorakit train` arguments (--force to get past a doctor error while testing here)
  (cd "$WORK" && "${LORAKIT[@]}" train "$run.yaml" --fresh ${E2E_TRAIN_ARGS:-} >"$LOGS/train-$run.log" 2>&1)
  echo $? >"$LOGS/train-$run.rc"
  log "  exit $(cat "$LOGS/train-$run.rc"): $(grep -E '^run  ' "$LOGS/train-$run.log" | tail -1)"
  [ -f "$WORK/runs/$run/engine.log" ] && cp "$WORK/runs/$run/engine.log" "$LOGS/engine-$run.log"
}
want recipe && run_cli recipe
if want pack; then if before 330; then run_cli pack; else log "time: pack skipped"; fi; fi

# ---------------------------------------------------------------- kill -9 mid-run, then --resume (issue 10 on CUDA)
# The recipe with checkpoints (resume.yaml) is started in its own process group; once its second checkpoint is
# on disk the whole group (the CLI and the engine) gets SIGKILL, as a crash would; then `lorakit train --resume`
# must settle the dead run, take over its lock and finish it from the last checkpoint, with the numbers of the
# recipe run never interrupted (bench/e2e_make.py resume-compare).
if want resume && before 380; then
  if [ -f "$LOGS/train-recipe.rc" ]; then
    log "lorakit train resume.yaml --fresh, killed (-9, CLI and engine) after its second checkpoint"
    CK=$(python3 -c "import json;t=json.load(open('$WORK/resume.yaml'))['train'];print(t['save_every']*2)")
    # setsid runs in place (a background job is no group leader): KPID leads the new group, the engine is in it.
    (cd "$WORK" && exec setsid "${LORAKIT[@]}" train resume.yaml --fresh >"$LOGS/train-resume-killed.log" 2>&1) &
    KPID=$!
    for _ in $(seq 1 3000); do
      [ -d "$WORK/runs/resume/checkpoints/step-$CK" ] && break
      kill -0 $KPID 2>/dev/null || break
      sleep 0.1
    done
    [ "$(ps -o pgid= -p $KPID 2>/dev/null | tr -d ' ')" = "$KPID" ] && kill -9 -- "-$KPID" 2>/dev/null
    wait $KPID 2>/dev/null
    log "  killed at: $(ls "$WORK/runs/resume/checkpoints" 2>/dev/null | paste -sd' ') on disk; store says: $(python3 -c "
import sqlite3;c=sqlite3.connect('file:$WORK/runs/lorakit.db?mode=ro',uri=True);print(c.execute(\"SELECT status FROM runs WHERE name='resume'\").fetchone())")"
    log "lorakit train resume.yaml --resume"
    (cd "$WORK" && "${LORAKIT[@]}" train resume.yaml --resume >"$LOGS/train-resume.log" 2>&1)
    echo $? >"$LOGS/train-resume.rc"
    log "  exit $(cat "$LOGS/train-resume.rc"): $(grep -E '^run  ' "$LOGS/train-resume.log" | tail -1)"
    [ -f "$WORK/runs/resume/engine.log" ] && cp "$WORK/runs/resume/engine.log" "$LOGS/engine-resume.log"
    "$PY" bench/e2e_make.py resume-compare --work "$WORK" --killed-at "$CK" >"$LOGS/resume-compare.txt" 2>&1
    grep -E '^(  max|resume:)' "$LOGS/resume-compare.txt" | tee -a "$LOGS/e2e.log"
  else log "resume: needs the recipe run (its reference numbers)"; fi
elif want resume; then log "time: resume skipped"; fi

# ---------------------------------------------------------------- the reload check's planted faults, on CUDA
if want faults && before 420; then
  log "planted faults: pytest engine/tests/test_reload_check.py (CUDA cases when a GPU is there)"
  PYTHONPATH=engine "$PY" -m pytest engine/tests/test_reload_check.py -q -p no:cacheprovider \
    >"$LOGS/faults.log" 2>&1
  echo $? >"$LOGS/faults.rc"
  log "  exit $(cat "$LOGS/faults.rc"): $(tail -1 "$LOGS/faults.log")"
elif want faults; then log "time: planted faults skipped"; fi

# ---------------------------------------------------------------- why the fast path strayed: the kernels' noise at 6B
if want noise && before 470; then
  log "rounding noise of each fast-path piece on $MODEL (bench/reload_noise.py)"
  "$PY" bench/reload_noise.py --model "$MODEL" --device "$DEVICE" --lengths 512,400,300,200 \
    --out "$LOGS/reload_noise.json" >"$LOGS/reload_noise.txt" 2>&1
  tail -19 "$LOGS/reload_noise.txt" | tee -a "$LOGS/e2e.log"
elif want noise; then log "time: noise table skipped"; fi

# ---------------------------------------------------------------- two GPUs, data parallel (--gpus 2)
for run in $RUNS; do
  case "$run" in pack*gpu) if ! want gpus; then :; elif before 380 || [ "$STAGES" = gpus ]; then run_cli "$run"; else log "time: $run skipped"; fi ;; esac
done

# ---------------------------------------------------------------- the table
log "summary ($SECONDS s)"
DONE=$(for r in $RUNS; do [ -f "$LOGS/train-$r.rc" ] && echo "$r"; done | paste -sd,)
"$PY" bench/e2e_make.py report --work "$WORK" --logs "$LOGS" --runs "${DONE:-recipe}" | tee -a "$LOGS/e2e.log"
[ -f "$LOGS/resume-compare.txt" ] && grep -E '^(  max|resume:)' "$LOGS/resume-compare.txt" | tee -a "$LOGS/e2e.log"
[ -f "$LOGS/faults.rc" ] && echo "planted-fault test: exit $(cat "$LOGS/faults.rc"), $(tail -1 "$LOGS/faults.log")" | tee -a "$LOGS/e2e.log"
log "done in $SECONDS s"
cp "$LOGS/summary.txt" "$LOGS/summary.json" "$LOGS/e2e.log" "$OUTDIR/" 2>/dev/null
tar -czf "$OUTDIR/logs.tar.gz" -C "$WORK" logs
echo "logs: $OUTDIR/{summary.txt,summary.json,e2e.log,logs.tar.gz}"
