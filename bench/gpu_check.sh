#!/usr/bin/env bash
# Every GPU check in one run, for a machine with one CUDA GPU whose python (PY) has torch and timm: make
# bench-gpu, the test that a training step never waits for the GPU, make round2 on a small demo with DEVICE=cuda,
# then torch.compile on and off and two training jobs sharing the GPU, on the 64x64 model. Each check has its
# own time limit; its log goes to OUT and its last lines to the screen.
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
    grep -v -i -E "warn|^ *$" "$OUT/$name.log" | tail -n 12
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
check bench-gpu 200 $PY bench/gpu.py --device cuda --threads "$THREADS" --models models.csv
check no-waits 90 $PY -m pytest -q -p no:cacheprovider tests/test_augment.py -k never_waits
check round2 240 bash -c "$PY demo_data.py --out /tmp/gpu-demo --per-species 6 --unlabeled 6 --test 4 \
    --soundscape-seconds 30 --labelled-soundscapes 3 && make round2 DATA=/tmp/gpu-demo WORK=/tmp/gpu-work \
    MODELS=models-demo.csv EPOCHS=3 TRAIN_ARGS='--preset demo' DEVICE=cuda PRETRAINED=none PY=$PY THREADS=$THREADS"
(grep -v '^[0-9]' models.csv; grep '^6,' models.csv) >"$OUT/model6.csv"
check compile-slots 200 $PY bench/gpu.py --device cuda --threads "$THREADS" --models "$OUT/model6.csv" \
    --with-compile --slots 2 --pseudo-batches 1
