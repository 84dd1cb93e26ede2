#!/usr/bin/env bash
# Build the v2 default model (two stages: liver locator + fine segmenter) from scratch.
#   bash training/default_model/v2/build.sh [WORKDIR]            # the real build (hours on CPU)
#   SMOKE=1 bash training/default_model/v2/build.sh /tmp/v2-smoke  # the whole chain on tiny data, minutes
# Steps: 1 generate synthetic data -> 2 prepare two caches (4 mm locator grid, 1.5 x 1.5 x 2 mm
# segmenter grid) -> 3 train stage 1 -> 4 train stage 2 (from v1's weights when present; 54
# epochs, then a warm restart to 88 with shading augmentation) ->
# 5 assemble the bundle -> 6 evaluate (finalize.py; INSTALL=1 installs it as the package default).
# Environment: PY (python), GEN_ARGS (data generator options), INIT (v1 weights to start stage 2
# from; "" for none), REAL_DATA (folder of real scans, default ../shared/data), INSTALL=1, SMOKE=1.
set -euo pipefail
cd "$(dirname "$0")/../../.."
V2=training/default_model/v2
WORK=${1:-build/default-model-v2}
PY=${PY:-.venv/bin/python}
SMOKE=${SMOKE:-0}
V1=training/default_model/v1/weights/default-v1.safetensors  # the retired v1 (stage 2 starts from it)
INIT=${INIT-$V1}
mkdir -p "$WORK"

if [ "$SMOKE" = 1 ]; then
    GEN_ARGS=${GEN_ARGS:-"--n-wholefov 3 --n-template 2 --n-procedural 1 --max-matrix 96"}
    # tiny patches, 1 epoch of 2 iterations; keys this checkout's TrainConfig lacks are dropped (said so)
    $PY - "$V2" "$WORK" <<'PYEOF'
import dataclasses, json, sys
from pathlib import Path
sys.path.insert(0, "training")
from ltstrain.config import TrainConfig
v2, work = Path(sys.argv[1]), Path(sys.argv[2])
known = {f.name for f in dataclasses.fields(TrainConfig)}
for stage, patch in (("locator", [16, 32, 32]), ("segmenter", [16, 48, 48])):
    cfg = json.loads((v2 / f"{stage}_train.json").read_text())
    cfg.update({"epochs": 1, "max_iters_per_epoch": 2, "patch_size": patch, "val_every": 1, "val_max_cases": 1,
                "val_window": [64, 160, 160]})  # few validation windows: seconds, not minutes
    for k in sorted(set(cfg) - known - {"_comment"}):
        print(f"smoke: this checkout's TrainConfig has no '{k}': dropped from the {stage} smoke config")
        cfg.pop(k)
    (work / f"{stage}_train.smoke.json").write_text(json.dumps(cfg, indent=1))
PYEOF
    LOC_CFG=$WORK/locator_train.smoke.json
    SEG_CFG=$WORK/segmenter_train.smoke.json
    FIN_ARGS="--n-template 1 --n-procedural 1 --n-wholefov 1 --n-wholefov-clean 1"
    SEG_EPOCHS2=2
else
    # The data of the v2 run: whole fields of view (chest, abdomen, pelvis; every phase incl. CTA;
    # no-liver cases) plus the v1 kinds, in-plane matrix capped at 320 for CPU practicality.
    GEN_ARGS=${GEN_ARGS:-"--n-wholefov 96 --n-template 12 --n-procedural 6 --max-matrix 320"}
    LOC_CFG=$V2/locator_train.json
    SEG_CFG=$V2/segmenter_train.json
    FIN_ARGS=""
    SEG_EPOCHS2=88
fi

echo "== 1/6 generate"
$PY training/generate_training_data.py --out "$WORK/data" --seed 0 --workers 2 $GEN_ARGS
echo "== 2/6 prepare (locator grid, segmenter grid)"
$PY training/prepare.py "$WORK/data" --out "$WORK/cache-locator" --preprocessing $V2/locator_preprocessing.json \
    --ratios 0.9 0.1 0.0 --dataset-name synthetic-v2-locator --quiet
$PY training/prepare.py "$WORK/data" --out "$WORK/cache-segmenter" --preprocessing $V2/segmenter_preprocessing.json \
    --ratios 0.9 0.1 0.0 --dataset-name synthetic-v2-segmenter --quiet
echo "== 3/6 train stage 1 (locator)"
$PY training/train.py --config "$LOC_CFG" --cache "$WORK/cache-locator" --out "$WORK/run-locator" --no-progress \
    --training-data-kind synthetic
echo "== 4/6 train stage 2 (segmenter)"
INIT_ARGS=()
if [ -n "$INIT" ] && [ -f "$INIT" ]; then INIT_ARGS=(--init-weights "$INIT"); fi
$PY training/train.py --config "$SEG_CFG" --cache "$WORK/cache-segmenter" --out "$WORK/run-segmenter" \
    --no-progress --training-data-kind synthetic "${INIT_ARGS[@]}"
# part 2 (epochs 55-88): a warm restart of the cosine schedule with low-frequency shading
# augmentation (uneven enhancement / beam hardening of real CT); SEG_EPOCHS2 in the smoke build
$PY training/train.py --cache "$WORK/cache-segmenter" --out "$WORK/run-segmenter" --resume "$WORK/run-segmenter" \
    --epochs "$SEG_EPOCHS2" --no-progress --training-data-kind synthetic --set augment.shading_prob=0.5
echo "== 5/6 assemble the bundle"
$PY $V2/assemble_bundle.py --locator-run "$WORK/run-locator" --segmenter-run "$WORK/run-segmenter" \
    --out "$WORK/bundle" --name default
echo "== 6/6 evaluate"
INSTALL_ARGS=()
if [ "${INSTALL:-0}" = 1 ] && [ "$SMOKE" != 1 ]; then INSTALL_ARGS=(--install); fi
if [ -n "${REAL_DATA:-}" ]; then FIN_ARGS="$FIN_ARGS --real-data $REAL_DATA"; fi
$PY $V2/finalize.py --bundle "$WORK/bundle/default.json" --work "$WORK" $FIN_ARGS "${INSTALL_ARGS[@]}"
