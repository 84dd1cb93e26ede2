#!/usr/bin/env bash
# Rebuild the bundled default model from scratch, on this machine's CPU (or a CUDA GPU).
#   bash training/default_model/v1/build.sh [WORKDIR]
# 1. synthetic training data (template-based + procedural, deterministic),
# 2. the shared preprocessing, cached once (training/prepare.py),
# 3. training with the project's own trainer (training/train.py),
# 4. copying the best checkpoint into the package and scoring it on held-out real scans.
set -euo pipefail
cd "$(dirname "$0")/../../.."
WORK=${1:-build/default-model}
PY=${PY:-.venv/bin/python}
mkdir -p "$WORK"
$PY training/generate_training_data.py --out "$WORK/data" \
    --templates LiverTumorSegLib/resources/templates/totalseg_example_ct_sm --n-template 44 --n-procedural 12 --seed 1
$PY training/prepare.py "$WORK/data" --out "$WORK/cache" \
    --preprocessing training/default_model/v1/preprocessing.json --ratios 0.9 0.1 0.0 \
    --dataset-name synthetic-template-v1
$PY training/train.py --config training/default_model/v1/train.json --cache "$WORK/cache" --out "$WORK/run"
# The bundled weights had 12 more epochs (a cosine warm restart), as recorded in the model card:
$PY training/train.py --config training/default_model/v1/train.json --cache "$WORK/cache" --out "$WORK/run" \
    --resume "$WORK/run/last.safetensors" --epochs 36
$PY training/default_model/v1/finalize.py --run "$WORK/run" --work "$WORK"
