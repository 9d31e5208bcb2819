#!/usr/bin/env bash
# The attack runs behind docs/RESULTS.md (the paper's Tables 4-5 shape): the same seeded examples in every cell.
#   bash experiments/attack_tables.sh DATA_DIR RUNS_DIR CELL ...
# A cell is DATASET:RUN:RECIPE:DEFENSE[:NUM], e.g. ag_news:agnews-rho0:deepwordbug:none or
# ag_news:agnews-rho0.9:textfooler:vote:50. Every cell draws the same NUM_EXAMPLES (default 100) seeded test texts;
# NUM attacks only NUM of them (--limit: a seeded subset, the same in every cell with that NUM, extended in place
# when NUM is raised later). DEFENSE: none (the plain model), vote / logit (RanMASK, 100 copies
# per query), lm-vote / lm-logit (RanMASK with LM-based sampling), adaptive (RanMASK vote, the search reading the
# mean probabilities), maskpure-MODE (MODE: prob, majority, onehot, vote, logit; MaskPure: 30% of words masked and
# refilled by the masked LM, 11 voters), safer-vote / safer-logit (SAFER: 100 substitution copies from SAFER_TABLE,
# default RUNS_DIR/RUN/safer-table.json). The adversarially trained baselines (train.py --defense) are runs attacked
# with DEFENSE none, e.g. sst2:sst2-pgd10:textfooler:none. ORACLE (default cache, the paper's; fresh, common, shared) answers the
# smoothed classifier's queries; a cell under another oracle than cache writes to attack-RECIPE-DEFENSE-ORACLE.
# GROW_FROM=100 with NUM_EXAMPLES=200: the 200 texts contain the 100 of the cells drawn with NUM_EXAMPLES=100. The masked-LM run of a
# dataset (LM sampling, MaskPure, bert-attack's candidates) is RUNS_DIR/agnews-mlm or RUNS_DIR/sst2-mlm unless
# MLM_RUN names another. Rows go to RUNS_DIR/RUN/attack-RECIPE-DEFENSE/ and, with the summary, are copied to
# docs/runs/RUN/ every PUBLISH_EVERY seconds (default 120) and when the cell ends. Every cell resumes when rerun,
# from RUNS_DIR's rows or, on a fresh machine, from those in docs/runs/ (accepted only if the retrained weights are
# bit-identical, as they are on the same CPU type). ATTACK_ARGS: extra flags for every cell.
set -euo pipefail
DATA_DIR="$1"; RUNS="$2"; shift 2
cd "$(dirname "$0")/.."
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$RUNS/.jax-cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
for cell in "$@"; do
    IFS=: read -r ds run recipe defense num <<< "$cell"
    mlm="$RUNS/${MLM_RUN:-${ds//_/}-mlm}"
    case "$defense" in
        none|vote|logit) flags=(--ensemble "$defense" --n 100) ;;
        adaptive) flags=(--ensemble vote --n 100 --search-ensemble prob) ;;
        lm-*) flags=(--ensemble "${defense#lm-}" --n 100 --sampling lm --lm "$mlm") ;;
        maskpure-*) flags=(--ensemble "${defense#maskpure-}" --n 11 --rho 0.3 --purifier "$mlm") ;;
        safer-*) flags=(--ensemble "${defense#safer-}" --n 100 --safer-table "${SAFER_TABLE:-$RUNS/$run/safer-table.json}") ;;
        *) echo "unknown defense $defense in $cell" >&2; exit 2 ;;
    esac
    [ "$recipe" != bert-attack ] || flags+=(--attack-mlm "$mlm")
    oracle="${ORACLE:-cache}"
    suffix=""
    if [ "$defense" != none ]; then
        flags+=(--oracle "$oracle")
        [ "$oracle" = cache ] || suffix="-$oracle"
    fi
    out="$RUNS/$run/attack-$recipe-$defense$suffix"
    dest="${PUBLISH_DIR:-docs/runs}/$run/attack-$recipe-$defense$suffix"
    mkdir -p "$dest" "$out"
    # rows published by an earlier machine resume here too (the run refuses them if the weights differ)
    if [ -f "$dest/attack.jsonl" ] && [ ! -f "$out/attack.jsonl" ]; then
        cp "$dest/attack.jsonl" "$dest/attack_config.json" "$out/"
    fi
    publish_rows() { for f in attack.jsonl attack_config.json summary.json table.md; do
        [ -f "$out/$f" ] && cp "$out/$f" "$dest/"; done; return 0; }
    ( while sleep "${PUBLISH_EVERY:-120}"; do publish_rows; done ) &  # partial rows reach docs/ as they come
    copier=$!
    trap 'kill "$copier" 2>/dev/null || true' EXIT
    status=
    ranmask-attack --run-dir "$RUNS/$run" --data-dir "$DATA_DIR" --dataset "$ds" --split test \
        --recipe "$recipe" --num-examples "${NUM_EXAMPLES:-100}" ${num:+--limit "$num"} --seed 0 --out "$out" "${flags[@]}" \
        ${GROW_FROM:+--grow-from "$GROW_FROM"} ${ATTACK_ARGS:-} || status=$?
    kill "$copier" 2>/dev/null || true
    publish_rows
    [ -z "$status" ] || exit "$status"
done
