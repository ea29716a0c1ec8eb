#!/usr/bin/env bash
# The main job, from nothing: install, get Multi30k, prepare, train, evaluate test_2016_flickr, print BLEU.
#   bash scripts/run_multi30k.sh                       # downloads Multi30k (sha256-checked)
#   SOURCE=/path/to/multi30k bash scripts/run_multi30k.sh    # a local copy, no network
#   CONFIG=configs/multi30k_en_de.yaml MAX_MINUTES=60 bash scripts/run_multi30k.sh
# TORCH_SPEC picks the torch build (default torch==2.13.0; see the README for CPU/CUDA builds).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/multi30k_en_de.yaml}
NAME=$(basename "$CONFIG" .yaml)
RUN_DIR=${RUN_DIR:-runs/$NAME}
if [ ! -x .venv/bin/nmt ]; then
  python3 -m venv .venv && . .venv/bin/activate && pip install -q ${TORCH_SPEC:-torch==2.13.0} && pip install -q -e .
fi
. .venv/bin/activate
nmt prepare --config "$CONFIG" ${SOURCE:+--source "$SOURCE"}
SETS=()
[ -n "${MAX_MINUTES:-}" ] && SETS+=(--set "train.max_minutes=$MAX_MINUTES")
RESUME=()
[ -f "$RUN_DIR/config.yaml" ] && RESUME=(--resume)  # a run was started here: continue it (from scratch if it saved nothing)
nmt train --config "$CONFIG" --run-dir "$RUN_DIR" "${RESUME[@]}" "${SETS[@]}"
nmt evaluate --checkpoint "$RUN_DIR/best.pt" --split test
