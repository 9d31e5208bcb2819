#!/usr/bin/env bash
# The main job: fine-tune MiniLM-L6 on SST-2 with 30% of the words masked (a step cap keeps it to minutes on a
# CPU), then certify 30 random test sentences and print the table.
#   bash examples/quickstart.sh [DATA_DIR] [RUN_DIR]
# Without DATA_DIR (and without $RANMASK_DATA_DIR) the SST-2 split shipped with the package is read.
set -euo pipefail
DATA_DIR="${1:-${RANMASK_DATA_DIR:-}}"
RUN="${2:-runs/quickstart}"
cd "$(dirname "$0")/.."
DATA=()
if [ -n "$DATA_DIR" ]; then DATA=(--data-dir "$DATA_DIR"); fi
echo "training on SST-2 (rho = 0.3, 150 steps) into $RUN ..."
mkdir -p "$RUN"
python train.py --out-dir "$RUN" "${DATA[@]}" --dataset sst2 --rho 0.3 --max-len 64 \
    --max-steps 150 --epochs 1 --eval-examples 100 --eval-n 16 --checkpoint-every 50 > "$RUN/train_result.json"
echo "certifying 30 SST-2 test sentences ..."
python certify.py --run-dir "$RUN" "${DATA[@]}" --dataset sst2 --split test \
    --num-examples 30 --n0 100 --n 1000 --alpha 0.05 --beta pc --out "$RUN/certify-test"
