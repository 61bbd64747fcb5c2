#!/usr/bin/env bash
# The one job for the GPU machine (one H200, 16 cores, no network, at most 10 minutes a command): installs the bundle
# that benchmarks/gpu/bundle.sh built, measures throughput, runs the AgentPRM loop of configs/alfworld-gpu.yaml
# inside a fixed time box, and writes what it measured under OUT. Every phase has its own deadline, so the job ends
# within BUDGET_S (470 s, under 8 minutes) whatever the machine's speed; a phase cut short keeps what it wrote.
#
#   bash benchmarks/gpu/bundle.sh .whl                 # here, on a CPU machine (.whl is git-ignored)
#   bash benchmarks/gpu/run.sh "$OUT"                  # there, from the repository root, with .whl carried
#   KIT_SIZE=toy DEVICE=cpu bash benchmarks/gpu/run.sh OUT   # the same job at toy size on a CPU (the kit's test)
#
# What comes back (8 files, one folder, as the device tool returns them): environment.txt (GPU, versions, where each
# package was imported from), gpu_throughput.json and throughput.log (benchmarks/gpu/throughput.py), summary.json,
# report.md and run.log of the loop, run_files.tar.gz (its config.yaml, manifest.json and per-stage diagnostics),
# job.json (each phase's seconds and exit status: 124 means its time box ended it).
#
# Variables: BUNDLE (wheel folder, .whl), SITE (install target), WORK (scratch), PYTHON (python3), BUDGET_S (470),
# DEVICE (auto), PRECISION (bf16), LOOP_PRECISION (the loop's; PRECISION), KIT_SIZE (gpu | toy), LOOP_OVERRIDES
# (replace the loop's time-box overrides).
set -uo pipefail

OUT=${1:-${OUT:?usage: run.sh OUT_DIR (or set OUT)}}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUNDLE=${BUNDLE:-$ROOT/.whl}
SITE=${SITE:-/tmp/agentprm-site}
WORK=${WORK:-/tmp/agentprm-gpu}
PYTHON=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-470}
DEVICE=${DEVICE:-auto}
PRECISION=${PRECISION:-bf16}
LOOP_PRECISION=${LOOP_PRECISION:-$PRECISION}
KIT_SIZE=${KIT_SIZE:-gpu}
START=$(date +%s)
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT"

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
PHASES=()
phase() {  # phase NAME SECONDS CMD...: run CMD under a time box of SECONDS (at most what is left), record it
  local name=$1 box=$2; shift 2
  local rest; rest=$(( $(left) - 10 ))
  (( box > rest )) && box=$rest
  if (( box < 5 )); then PHASES+=("\"$name\": {\"status\": \"skipped\", \"seconds\": 0}"); return; fi
  local t0; t0=$(date +%s)
  timeout --kill-after=10 "$box" "$@"
  local rc=$?
  PHASES+=("\"$name\": {\"status\": $rc, \"seconds\": $(( $(date +%s) - t0 )), \"box\": $box}")
}

if [[ $KIT_SIZE == toy ]]; then  # the CPU test: every phase, seconds each
  TP_ARGS=(--presets tiny --steps 2 --batch-size 4 --games 4 --max-steps 4 --num-envs 4 --workers 0)
  LOOP=(model.preset=tiny games.train=6 games.seen=3 games.unseen=3 monitor.games=3 monitor.states=8 model.vocab_size=1024
        sft.max_steps=10 sft.eval_every=10 sft.save_every=10 sft.batch_size=8 sft.val_fraction=0 iterations=1
        rollouts.games=6
        rollouts.episodes_per_game=1 rollouts.max_steps=5 prm.max_steps=2 prm.batch_size=4 kl.steps=1
        kl.states_per_step=4 kl.monitor_every=0 eval.max_steps=5 eval.bon_n=2 'eval.bon_curve=[1,2]' num_envs=6
        workers=0)
  TP_BOX=240; LOOP_BOX=400
else  # the H200: three presets, then the loop boxed to what is left (about 5 minutes)
  TP_ARGS=(--presets tiny,small,base --steps 20 --games 64 --num-envs 64 --workers 16)
  LOOP=(iterations=1 games.train=400 rollouts.games=200 sft.max_steps=2000 kl.steps=100 'eval.bon_curve=[1,4,16]')
  TP_BOX=150; LOOP_BOX=400
fi
if [[ -n ${LOOP_OVERRIDES:-} ]]; then read -r -a LOOP <<< "$LOOP_OVERRIDES"; fi

# 1. the bundle, installed without network; PYTHONPATH puts it before anything the machine has
phase install 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" "$BUNDLE"/*.whl
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

{
  date -u +"job started %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi: not available"
  "$PYTHON" - <<'EOF'
import importlib, platform, os
print("python", platform.python_version(), platform.machine(), "cpus", len(os.sched_getaffinity(0)))
for name in ["agentprm", "torch", "transformers", "tokenizers", "huggingface_hub", "safetensors", "regex",
             "accelerate", "alfworld", "textworld", "fast_downward"]:
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')} from {os.path.dirname(module.__file__)}")
    except Exception as error:  # the file records what is missing; the phases below fail on it visibly
        print(f"{name}: {type(error).__name__}: {error}")
import torch
print("cuda", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
} > "$OUT/environment.txt" 2>&1

# 2. throughput: SFT, PRM, DPO, KL tokens/s and agent steps/s per preset (results written after every preset)
phase throughput "$TP_BOX" "$PYTHON" benchmarks/gpu/throughput.py --work "$WORK/throughput" "${TP_ARGS[@]}" \
  --device "$DEVICE" --precision "$PRECISION" --results "$OUT/gpu_throughput.json" > "$OUT/throughput.log" 2>&1

# 3. the AgentPRM loop of configs/alfworld-gpu.yaml, with the overrides that fit it in its box
phase loop "$LOOP_BOX" "$PYTHON" -m agentprm.cli run configs/alfworld-gpu.yaml --out "$WORK/run" \
  device="$DEVICE" precision="$LOOP_PRECISION" progress=false "${LOOP[@]}" > "$OUT/run.log" 2>&1

# 4. what the loop left, whether it finished or not
RUN=$WORK/run
for f in summary.json report.md; do [[ -f $RUN/$f ]] && cp "$RUN/$f" "$OUT/$f"; done
if [[ -d $RUN ]]; then
  (cd "$RUN" && find . -maxdepth 3 \( -name config.yaml -o -name manifest.json -o -name '*summary.json' \
     -o -name targets.json \) -print0 | tar czf "$OUT/run_files.tar.gz" --null -T -)
fi
IFS=,; echo "{\"kit_size\": \"$KIT_SIZE\", \"budget_s\": $BUDGET_S, \"seconds\": $(( $(date +%s) - START )), \
\"loop_overrides\": \"${LOOP[*]}\", ${PHASES[*]}}" > "$OUT/job.json"
unset IFS
cat "$OUT/job.json"
