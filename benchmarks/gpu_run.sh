#!/usr/bin/env bash
# The speed benchmarks on a GPU, with more work per timing than on a CPU (a GPU finishes the CPU
# settings in milliseconds). One log, LOG, holds every benchmark's output; the benchmarks' own
# files go to WORK.
#   usage: [ONLY="name ..."] benchmarks/gpu_run.sh LOG [DATA] [WORK]
#   e.g.   benchmarks/gpu_run.sh /tmp/gpu_run.log ../shared/data /tmp/gpu_run
set -u
LOG=$1
DATA=${2:-../shared/data}
WORK=${3:-/tmp/bioflow_gpu_run}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$WORK"
: >"$LOG"

run() {  # run NAME SECONDS SCRIPT ARGS...: one benchmark, its output into the log, cut at SECONDS
    local name=$1 secs=$2
    shift 2
    [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $name "* ]] || return 0
    echo "== $name ($(date -u +%H:%M:%S) UTC): $PY $*" | tee -a "$LOG"
    timeout "$secs" "$PY" "$@" 2>&1 | grep -v -e "Warning" -e "warnings.warn" | tee -a "$LOG"
    echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
run classification_infer_b256 100 benchmarks/classification_infer_speed.py --out "$WORK" --batch 256 --reps 5 \
    --cudnn-benchmark
run classification_infer_b1024 80 benchmarks/classification_infer_speed.py --out "$WORK" --batch 1024 --reps 5
run inference_speed 150 benchmarks/inference_speed.py --out "$WORK" --reps 5 --n-images 16
run inference_speed_b32 90 benchmarks/inference_speed.py --out "$WORK/b32" --reps 5 --n-images 16 --batch 32 \
    --cases 2d_3ch,3d
run train_throughput 110 benchmarks/train_throughput.py --out "$WORK/train" --data "$DATA" --steps 60 --skip 10
run predict_dsb2018 100 benchmarks/predict_dsb2018.py --out "$WORK/predict" --data "$DATA" --train-steps 1000 --reps 3
run tiling_overhead 90 benchmarks/tiling_overhead.py --reps 3 --n-images 8
