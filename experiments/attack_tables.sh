#!/usr/bin/env bash
# The attack runs behind docs/RESULTS.md (the paper's Tables 4-5 shape): the same seeded examples in every cell.
#   bash experiments/attack_tables.sh DATA_DIR RUNS_DIR CELL ...
# A cell is DATASET:RUN:RECIPE:ENSEMBLE[:NUM], e.g. ag_news:agnews-rho0:deepwordbug:none or
# ag_news:agnews-rho0.9:deepwordbug:vote:100. Rows go to RUNS_DIR/RUN/attack-RECIPE-ENSEMBLE/ and, with the
# summary, are copied to docs/runs/RUN/ as they are written. Every cell resumes when rerun.
set -euo pipefail
DATA_DIR="$1"; RUNS="$2"; shift 2
cd "$(dirname "$0")/.."
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$RUNS/.jax-cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
for cell in "$@"; do
    IFS=: read -r ds run recipe ensemble num <<< "$cell"
    out="$RUNS/$run/attack-$recipe-$ensemble"
    dest="${PUBLISH_DIR:-docs/runs}/$run/attack-$recipe-$ensemble"
    mkdir -p "$dest"
    python -m attacks --run-dir "$RUNS/$run" --data-dir "$DATA_DIR" --dataset "$ds" --split test \
        --recipe "$recipe" --ensemble "$ensemble" --n 100 --num-examples "${num:-100}" --seed 0 --out "$out" \
        ${ATTACK_ARGS:-} || status=$?
    for f in attack.jsonl attack_config.json summary.json table.md; do [ -f "$out/$f" ] && cp "$out/$f" "$dest/"; done
    [ -z "${status:-}" ] || exit "$status"
done
