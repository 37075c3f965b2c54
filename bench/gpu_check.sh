#!/usr/bin/env bash
# Every GPU check in one run, for a machine with one CUDA GPU whose python (PY) has torch and timm: make
# bench-gpu (train.py's CUDA-graph step beside the eager one, every model), the GPU tests (the graph trains as
# the eager step does and never waits; the eager step never waits), make round2 on a small demo with
# DEVICE=cuda (one model a round, so the check stays short), then two training jobs sharing the GPU on the 64x64
# model. Each check has its own time limit; its log goes to OUT and its last lines to the screen.
#
#   bash bench/gpu_check.sh                          # python3, logs in /tmp/gpu-check
#   PY=.venv/bin/python OUT=/tmp/check bash bench/gpu_check.sh
set -u
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-check}
THREADS=$(nproc)
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

check() {  # name, seconds, command...
    local name=$1 limit=$2 began rc
    shift 2
    began=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "== $name: exit $rc, $(($(date +%s) - began)) s"
    grep -v -i -E "warn|^ *$" "$OUT/$name.log" | tail -n 16
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
check gpu-tests ${TESTS_SECONDS:-90} $PY -m pytest -q -p no:cacheprovider tests/test_augment.py -k "never_waits or cuda_graph"
check bench-gpu ${BENCH_SECONDS:-200} $PY bench/gpu.py --device cuda --threads "$THREADS" --models ${BENCH_MODELS:-models.csv} \
    --steps 12 --pseudo-batches 4
(grep -v '^[0-9]' models-demo.csv; grep '^1,' models-demo.csv) >"$OUT/one-model.csv"
check round2 ${ROUND2_SECONDS:-130} bash -c "$PY demo_data.py --out /tmp/gpu-demo --per-species 8 --unlabeled 6 \
    --test 4 --soundscape-seconds 30 --labelled-soundscapes 3 && make round2 DATA=/tmp/gpu-demo WORK=/tmp/gpu-work \
    MODELS=$OUT/one-model.csv EPOCHS=3 TRAIN_ARGS='--preset demo' DEVICE=cuda PRETRAINED=none PY=$PY \
    THREADS=$THREADS && grep -h . /tmp/gpu-work/round*/model1/metrics.csv"
(grep -v '^[0-9]' models.csv; grep '^6,' models.csv) >"$OUT/model6.csv"
check slots 80 $PY bench/gpu.py --device cuda --threads "$THREADS" --models "$OUT/model6.csv" --steps 10 \
    --repeats 2 --slots 2 --pseudo-batches 1
