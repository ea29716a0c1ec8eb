#!/usr/bin/env bash
# The GPU measurements in one command, for a GPU machine without network or pip (run from the
# repository root with torch, sentencepiece, sacrebleu, typer, tqdm and pyyaml installed):
#   DATA=data/multi30k OUT=out bash scripts/gpu_session.sh
# STEPS names what runs, in its order (default "prepare bench train test decode int8 cpu"). RUN stays on
# the machine between calls, so a call limited in time can do some steps and the next the rest:
# STEPS="prepare train test", then STEPS="decode bench int8 cpu".
#   prepare: Multi30k from the local folder DATA (a copy of the downloaded data/multi30k);
#   bench:   training benchmark: tokens/s, step time, peak memory, MFU against a matmul timed in the
#            same run (TRAIN_STEPS timed steps after WARMUP untimed ones, more than en->de's 128
#            steps of an epoch: a batch shape's first step can be slow); on a GPU twice, the second
#            with cuDNN's attention allowed (the A/B of choose_attention_kernels);
#   train:   MINUTES of training of CONFIG (default en->de, 5 minutes): valid BLEU against time in
#            metrics.jsonl;
#   test:    test BLEU of the best checkpoint (cased sacreBLEU, chrF; paper-style BLEU when
#            sacremoses imports) and its translation;
#   decode:  decoding benchmark of that checkpoint, greedy and beam 5, with CTranslate2 beside it
#            when it imports; on a GPU once more with cuDNN's attention allowed, nmt alone. A peer
#            that fails is left out with one line; nmt's figures stay. CTranslate2 4.8.5's wheel
#            loads libcublas.so.12; on a machine with only CUDA 13's libcublas.so.13 this step gives
#            that name to it (CTranslate2 calls cublasGemmEx and the like, which both have) and
#            says so in the log; the table gives CTranslate2's BLEU beside nmt's.
#   int8:    the int8 matrix products torch offers on this machine's CPU against fp32 and nmt's bf16
#            Linear, at decoding's shapes (scripts/int8_matmul_bench.py, 2 threads; INT8_SHAPES to
#            choose them): whether a CPU with VNNI or AMX has one worth an int8 path.
#   cpu:     the machine's CPU alone (CUDA hidden), with the trained checkpoint: training throughput
#            and MFU (20 steps, 2 threads), decoding beside CTranslate2 (every compute type and
#            layout, REPEAT rounds, 2 threads), then where a training step's and a decoding pass's
#            time goes (scripts/profile_steps.py, 1 thread, greedy and beam 5): the CPU figures of
#            docs/speed.md for a CPU that multiplies bf16 (AVX512-BF16, AMX).
# Wheels in .whl/ are installed into /tmp/site first (e.g. ctranslate2 and sacremoses, fetched
# beforehand with `pip download --no-deps` for the GPU machine's Python).
# OUT receives the figures in these files: log.txt (the machine first), metrics.jsonl, test.json,
# test.hyp.txt, bench_train.json, bench_train_cudnn.json, bench_decode.json, bench_decode_cudnn.json,
# int8_matmul.json, bench_cpu.json, profile_cpu.json.
# Checkpoints stay in RUN (default runs/gpu_session). Knobs: CONFIG, MINUTES, TRAIN_STEPS, WARMUP,
# LIMIT (test sentences the decoding benchmark decodes), SETS (extra --set flags for the prepare and
# train steps, e.g. "--set train.seed=2"), INT8_SHAPES, REPEAT (the cpu step's decoding rounds), STEPS.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_session_out}
RUN=${RUN:-runs/gpu_session}
DATA=${DATA:-data/multi30k}
CONFIG=${CONFIG:-configs/multi30k_en_de.yaml}
MINUTES=${MINUTES:-5}
TRAIN_STEPS=${TRAIN_STEPS:-100}
WARMUP=${WARMUP:-200}
LIMIT=${LIMIT:-100000}
REPEAT=${REPEAT:-3}
STEPS=${STEPS:-prepare bench train test decode int8 cpu}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
PREP=(--set "data.prepared_dir=$RUN/prepared")
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/log.txt"; }

prepare() {
    log "prepare $CONFIG from $DATA"
    # shellcheck disable=SC2086  # SETS is a list of flags
    python3 -m nmt prepare --config "$CONFIG" --source "$DATA" "${PREP[@]}" ${SETS:-} >> "$OUT/log.txt" 2>&1
}

GPU=$(python3 -c "import torch; print(int(torch.cuda.is_available()))")
on_gpu() { [ "$GPU" = 1 ]; }

bench() {
    log "training benchmark: $TRAIN_STEPS steps after $WARMUP warm-up steps"
    python3 scripts/benchmark.py --config "$CONFIG" "${PREP[@]}" --train-steps "$TRAIN_STEPS" --warmup "$WARMUP" \
        --json "$OUT/bench_train.json" 2>&1 | tee -a "$OUT/log.txt"
    on_gpu || return 0
    log "training benchmark with cuDNN's attention allowed"
    python3 scripts/benchmark.py --config "$CONFIG" "${PREP[@]}" --train-steps "$TRAIN_STEPS" --warmup "$WARMUP" \
        --cudnn-attention --json "$OUT/bench_train_cudnn.json" 2>&1 | tee -a "$OUT/log.txt"
}

train() {
    log "training for $MINUTES minutes"
    rm -rf "$RUN/run"
    # shellcheck disable=SC2086  # SETS is a list of flags
    python3 -m nmt train --config "$CONFIG" --run-dir "$RUN/run" "${PREP[@]}" --set "train.max_minutes=$MINUTES" \
        --set train.progress=false ${SETS:-} > "$RUN/train.log" 2>&1 || { tail -20 "$RUN/train.log" | tee -a "$OUT/log.txt"; exit 1; }
    tail -15 "$RUN/train.log" | tee -a "$OUT/log.txt"
    cp "$RUN/run/metrics.jsonl" "$OUT/metrics.jsonl"
}

test_bleu() {
    log "test BLEU of the best checkpoint"
    python3 -m nmt evaluate --checkpoint "$RUN/run/best.pt" --split test --json > "$OUT/test.json"
    python3 -c "import json, sys; from nmt.evaluate import format_report; print(format_report(json.load(open(sys.argv[1]))))" \
        "$OUT/test.json" | tee -a "$OUT/log.txt"
    cp "$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['hyp'])" "$OUT/test.json")" "$OUT/test.hyp.txt"
}

wheels() {  # carried wheels (see the header) into /tmp/site, on the path
    compgen -G ".whl/*.whl" > /dev/null || return 0
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site" && log "installed: $(cd .whl && echo *.whl)" \
        || log "the wheels in .whl/ did not install: going on without them"
}

ct2_setup() {  # whether CTranslate2 imports; on a CUDA 13 machine, its cuBLAS 12 name (see the header)
    python3 -c "import ctranslate2" 2> /dev/null || return 1
    on_gpu || return 0
    python3 -c "import ctypes; ctypes.CDLL('libcublas.so.12')" 2> /dev/null && return 0
    local lib
    lib=$(python3 -c "import glob, sys; print(next(iter(sorted(p for d in sys.path + ['/usr/local/cuda/lib64'] for p in
        glob.glob(d + '/nvidia/**/libcublas.so.1[3-9]', recursive=True) + glob.glob(d + '/libcublas.so.1[3-9]'))), ''))")
    [ -n "$lib" ] || { log "no libcublas.so.12 or .13 here: CTranslate2 will fail on the GPU"; return 0; }
    mkdir -p /tmp/cublas12
    ln -sf "$lib" /tmp/cublas12/libcublas.so.12
    export LD_LIBRARY_PATH="/tmp/cublas12:$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    log "CTranslate2 (built for CUDA 12) gets this machine's $lib as libcublas.so.12"
}

decode() {
    local ct2=()
    ct2_setup && ct2=(--ct2)
    log "decoding benchmark ${ct2[*]:-(no CTranslate2 here)}"
    python3 scripts/benchmark.py --config "$CONFIG" --checkpoint "$RUN/run/best.pt" --no-train "${ct2[@]}" --limit "$LIMIT" \
        --json "$OUT/bench_decode.json" 2>&1 | tee -a "$OUT/log.txt"
    on_gpu || return 0
    log "decoding benchmark with cuDNN's attention allowed"
    python3 scripts/benchmark.py --config "$CONFIG" --checkpoint "$RUN/run/best.pt" --no-train --cudnn-attention --limit "$LIMIT" \
        --json "$OUT/bench_decode_cudnn.json" 2>&1 | tee -a "$OUT/log.txt"
}

int8() {
    log "int8 and bf16 products on this CPU"
    # shellcheck disable=SC2086  # INT8_SHAPES is a list of shapes
    python3 scripts/int8_matmul_bench.py --threads 2 ${INT8_SHAPES:+--shapes $INT8_SHAPES} \
        --json "$OUT/int8_matmul.json" 2>&1 | tee -a "$OUT/log.txt"
}

cpu() {
    local ct2=() flags
    ct2_setup && ct2=(--ct2)
    flags=$(grep -m1 -o -w -E 'amx_bf16|amx_int8|avx512_bf16|avx512_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ' || true)
    log "this CPU alone:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- || true); bf16/int8 instructions: ${flags:-none}"
    CUDA_VISIBLE_DEVICES= python3 scripts/benchmark.py --config "$CONFIG" "${PREP[@]}" --checkpoint "$RUN/run/best.pt" \
        --train-steps 20 --warmup 5 "${ct2[@]}" --threads 2 --repeat "$REPEAT" --limit "$LIMIT" \
        --json "$OUT/bench_cpu.json" 2>&1 | tee -a "$OUT/log.txt"
    CUDA_VISIBLE_DEVICES= python3 scripts/profile_steps.py --config "$CONFIG" "${PREP[@]}" --checkpoint "$RUN/run/best.pt" \
        --steps 5 --limit "$LIMIT" --beam 1 5 --threads 1 --json "$OUT/profile_cpu.json" 2>&1 | tee -a "$OUT/log.txt"
}

for step in $STEPS; do
    case $step in
        prepare | bench | train | test | decode | int8 | cpu) ;;
        *) log "STEPS: unknown step '$step' (prepare, bench, train, test, decode, int8, cpu)"; exit 2 ;;
    esac
done
{ nvidia-smi || true; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } >> "$OUT/log.txt" 2>&1
wheels
for step in $STEPS; do
    if [ "$step" = test ]; then test_bleu; else $step; fi
done
log "done ($STEPS)"
