#!/usr/bin/env bash
# The GPU figures of the speed issue in one command that fits a 10-minute call on a lent GPU machine (no network,
# no pip there: run from the repository root with torch, sentencepiece, sacrebleu, typer, tqdm and pyyaml installed):
#   DATA=data/multi30k OUT=$OUT bash scripts/gpu_session.sh
# 1. prepare Multi30k from the local folder DATA (a copy of ../shared/data/multi30k, carried to the machine);
# 2. training benchmark: tokens/s, step time, peak memory, MFU against a matmul timed in the same run
#    (TRAIN_STEPS timed steps after WARMUP untimed ones: the first CUDA steps are slow);
# 3. MINUTES of training of CONFIG (default en->de, 5 minutes): valid BLEU against time in metrics.jsonl;
# 4. test BLEU of the best checkpoint (cased sacreBLEU, chrF, paper-style BLEU);
# 5. decoding benchmark of that checkpoint, greedy and beam 5, with CTranslate2 beside it when it imports (the GPU
#    image has none: `pip download ctranslate2` here, unzip the wheel into a carried folder, add it to PYTHONPATH).
# OUT receives at most 8 files (the device tool's limit): log.txt, machine.txt, bench_train.json, metrics.jsonl,
# test.json, bench_decode.json. Checkpoints stay in RUN (default runs/gpu_session). Knobs: CONFIG, MINUTES,
# TRAIN_STEPS, WARMUP, SETS (extra --set flags for training, e.g. "--set train.seed=2"), SKIP_DECODE=1 (stop after 4).
# Time: about MINUTES + 2 minutes of validation, data and start-up, + ~1 minute per benchmark on an H100 (the 5-minute
# en->de run of 2026-11-23 took 6 min 51 s in all; test decoding then took 34 s): give the call 600 s, or SKIP_DECODE=1.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_session_out}
RUN=${RUN:-runs/gpu_session}
DATA=${DATA:-data/multi30k}
CONFIG=${CONFIG:-configs/multi30k_en_de.yaml}
MINUTES=${MINUTES:-5}
TRAIN_STEPS=${TRAIN_STEPS:-50}
WARMUP=${WARMUP:-200}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
PREP=(--set "data.prepared_dir=$RUN/prepared")
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/log.txt"; }

{ nvidia-smi || true; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } > "$OUT/machine.txt" 2>&1
log "prepare $CONFIG from $DATA"
python3 -m nmt prepare --config "$CONFIG" --source "$DATA" "${PREP[@]}" >> "$OUT/log.txt" 2>&1
log "training benchmark: $TRAIN_STEPS steps after $WARMUP warm-up steps"
python3 scripts/benchmark.py --config "$CONFIG" "${PREP[@]}" --train-steps "$TRAIN_STEPS" --warmup "$WARMUP" \
    --json "$OUT/bench_train.json" 2>&1 | tee -a "$OUT/log.txt"
log "training for $MINUTES minutes"
rm -rf "$RUN/run"
# shellcheck disable=SC2086  # SETS is a list of flags
python3 -m nmt train --config "$CONFIG" --run-dir "$RUN/run" "${PREP[@]}" --set "train.max_minutes=$MINUTES" \
    --set train.progress=false ${SETS:-} > "$RUN/train.log" 2>&1 || { tail -20 "$RUN/train.log" | tee -a "$OUT/log.txt"; exit 1; }
tail -15 "$RUN/train.log" | tee -a "$OUT/log.txt"
cp "$RUN/run/metrics.jsonl" "$OUT/metrics.jsonl"
log "test BLEU of the best checkpoint"
python3 -m nmt evaluate --checkpoint "$RUN/run/best.pt" --split test --json > "$OUT/test.json"
python3 -c "import json, sys; from nmt.evaluate import format_report; print(format_report(json.load(open(sys.argv[1]))))" \
    "$OUT/test.json" | tee -a "$OUT/log.txt"
[ -n "${SKIP_DECODE:-}" ] && { log "done (decoding benchmark skipped)"; exit 0; }
CT2=()
python3 -c "import ctranslate2" 2>/dev/null && CT2=(--ct2)
log "decoding benchmark ${CT2[*]:-(no CTranslate2 here)}"
python3 scripts/benchmark.py --config "$CONFIG" --checkpoint "$RUN/run/best.pt" --no-train "${CT2[@]}" \
    --json "$OUT/bench_decode.json" 2>&1 | tee -a "$OUT/log.txt"
log done
