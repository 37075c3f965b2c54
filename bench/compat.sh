#!/usr/bin/env bash
# Does an ensemble exported here run under another torch / numpy / pandas, as in a Kaggle kernel?
#
#   bench/compat.sh                              # torch 2.6.0 (Kaggle's in 2025) with the newest numpy, pandas
#   bench/compat.sh 2.6.0 "numpy<2" "pandas<2"   # the same with numpy 1.x and pandas 1.x
#   bench/compat.sh 2.1.0 "numpy<2"              # the oldest torch infer.py supports (built for numpy 1.x)
#
# 1. With the project's environment (PY, default .venv/bin/python): export a 3-model ensemble (random weights,
#    three mel settings; the third a RegNetY with the SED head on 20-s windows) and 3 synthetic soundscapes, and write a reference submission per installed backend (f32).
# 2. A throwaway venv (COMPAT_DIR, default /tmp/birdclef-compat; reused when it exists) gets torch==VERSION and
#    the given extra requirements from the package registry, then OpenVINO and ONNX Runtime if they install.
# 3. infer.py, copied alone into an empty folder, runs there with every backend that installed; each submission
#    is compared with the reference of the same backend. One line per version and backend:
#    compat torch=... numpy=... pandas=... backend=... max_abs_diff=... OK|FAIL  (OK: <= 1e-4)
# Exits non-zero if any backend fails. Downloads about 3 GB the first time; never part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=${1:-2.6.0}
shift || true
EXTRAS=("$@")
PY=${PY:-.venv/bin/python}
COMPAT_DIR=${COMPAT_DIR:-/tmp/birdclef-compat}
TOLERANCE=1e-4
tag=$(printf '%s' "$TORCH_VERSION ${EXTRAS[*]:-}" | tr -c 'A-Za-z0-9.' '_')
venv="$COMPAT_DIR/venv-$tag"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. the ensemble, the audio and the reference submissions, made with the project's torch
"$PY" - "$work" <<'EOF'
import os, sys
import numpy as np
sys.path.insert(0, os.getcwd())
import common, export, files, infer
from demo_data import write_ogg
work = sys.argv[1]
classes = [f"{i:04d}" for i in range(12)]  # numeric labels with leading zeros, as iNat ids are
for k, (n_mels, hop, h, w, backbone, head, seconds) in enumerate([(64, 1024, 64, 128, None, "gem5", 5),
                                                                 (128, 512, 96, 96, None, "gem5", 5),
                                                                 (64, 1250, 64, 256, "regnety_002", "sed", 20)]):
    import torch
    torch.manual_seed(k)
    model = common.MelModel(len(classes), h, w, backbone=backbone, head=head).eval()
    last = model.head.classifier if head == "sed" else model.head
    with torch.no_grad():  # bring an untrained net's logits into the range where sigmoids are not saturated
        last.weight.mul_(0.2 / last.weight.abs().sum(1, keepdim=True).mean())
    export.export_artifact(model, common.MelSettings(n_mels=n_mels, hop_length=hop), classes,
                           os.path.join(work, "ensemble"), f"model{k}", value=0.7, window_seconds=seconds)
files.save_json(infer.ensemble_manifest(["model0", "model1", "model2"]),
                os.path.join(work, "ensemble", "manifest.json"))
rng = np.random.default_rng(0)
os.makedirs(os.path.join(work, "audio"))
for k in range(3):
    write_ogg(os.path.join(work, "audio", f"sc{k}.ogg"), (rng.standard_normal(32000 * 37) * 0.05).astype(np.float32))
EOF
backends=$("$PY" -c "import sys; sys.path.insert(0, '.'); import infer; d = sys.argv[1]; \
print(' '.join(infer.available_backends(d, infer.read_specs(d))))" "$work/ensemble")
for backend in $backends; do
  "$PY" infer.py --ensemble "$work/ensemble" --audio "$work/audio" --out "$work/reference-$backend.csv" \
    --backend "$backend" --precision f32 --threads 2 > /dev/null 2>&1
done
echo "reference: torch $("$PY" -c 'import torch; print(torch.__version__)'), backends: $backends"

# 2. the throwaway environment
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  PIP_CONSTRAINT=/dev/null "$venv/bin/pip" install -q "torch==$TORCH_VERSION" "${EXTRAS[@]}" numpy pandas soundfile scipy tqdm
  PIP_CONSTRAINT=/dev/null "$venv/bin/pip" install -q onnxruntime "${EXTRAS[@]}" || echo "onnxruntime does not install here"
  PIP_CONSTRAINT=/dev/null "$venv/bin/pip" install -q openvino "${EXTRAS[@]}" || echo "openvino does not install here"
fi
versions=$("$venv/bin/python" -c 'import torch, numpy, pandas; print(f"torch={torch.__version__} numpy={numpy.__version__} pandas={pandas.__version__}")')

# 3. infer.py alone in an empty folder, every backend, compared with the reference
mkdir "$work/kernel"
cp infer.py "$work/kernel/"
failed=0
for backend in torch onnx openvino; do
  [ -f "$work/reference-$backend.csv" ] || continue
  module=$backend; [ "$backend" = onnx ] && module=onnxruntime
  if ! "$venv/bin/python" -c "import $module" 2>/dev/null; then
    echo "compat $versions backend=$backend not installed"; continue
  fi
  if (cd "$work/kernel" && PYTHONPATH= "$venv/bin/python" infer.py --ensemble "$work/ensemble" --audio "$work/audio" \
        --out "$work/out-$backend.csv" --backend "$backend" --precision f32 --threads 2 > "$work/log-$backend" 2>&1); then
    "$venv/bin/python" - "$work/reference-$backend.csv" "$work/out-$backend.csv" "$TOLERANCE" "$versions" "$backend" <<'EOF' || failed=1
import sys
import pandas as pd
ref, got = (pd.read_csv(p, dtype={"row_id": str}) for p in sys.argv[1:3])
same_shape = list(ref.columns) == list(got.columns) and list(ref["row_id"]) == list(got["row_id"])
diff = abs(ref.iloc[:, 1:].values - got.iloc[:, 1:].values).max() if same_shape else float("inf")
ok = diff <= float(sys.argv[3])
print(f"compat {sys.argv[4]} backend={sys.argv[5]} rows={len(got)} max_abs_diff={diff:.2e} {'OK' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
EOF
  else
    echo "compat $versions backend=$backend FAIL: $(grep -v '^soundscapes' "$work/log-$backend" | tail -n 1)"
    failed=1
  fi
done
exit $failed
