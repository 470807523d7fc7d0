#!/usr/bin/env bash
# The language-model ablation of docs/language_modeling.md: train each row with `bmojo train` at matched parameters
# and tokens on the builtin corpus (byte tokenizer, L 256), then sweep `bmojo eval` over 1x..32x the training length.
#
#   bash scripts/lm_ablation.sh SCALE OUT SEED ROW [ROW ...]
#
# SCALE 1: ~1.3M parameters, 1.2M tokens (batch 8), fp32 on the CPU, one thread per run, two runs at a time.
# SCALE 2: ~5.2M parameters (width 256 instead of 128, 8 heads of 32), 4.8M tokens (batch 32: 4x the tokens in
#          as many steps), bf16 autocast on a CUDA GPU, every row at once (each run stops at $TIME_BUDGET seconds
#          if set, and records it).
# ROW: NAME=PRESET or NAME=PRESET:KEY=VALUE,KEY=VALUE (model fields on top of the shared shape), for example
#      bmojo=bmojo  span=bmojo:fading_span=64  edge=bmojo:eidetic_position=edge
# Runs go to OUT/NAME_sSEED; the sweep writes OUT/length_generalization.md and .png. Uses the `bmojo` on PATH
# (BMOJO=... to override, e.g. BMOJO=".venv/bin/bmojo" or BMOJO="python3 -m bmojo").
set -euo pipefail
SCALE=$1; OUT=$2; SEED=$3; shift 3
BMOJO=${BMOJO:-bmojo}
SHAPE="window_size=64 ssm_state_size=32 ssm_head_dim=32 ssm_chunk_size=64"
COMMON="--corpus builtin --tokenizer byte --seq-len 256 --lr 2e-3 --ssm-lr 4e-3 --log-every 50 --save-every 200
  --no-progress --seed $SEED"
case $SCALE in
  1) SHAPE="$SHAPE hidden_size=128 num_attention_heads=4"
     SIZE="--target-params 1.3e6 --max-tokens 1.2e6 --batch-size 8 --no-bf16 --threads 1 --cpu"; JOBS=2
     EVAL="--threads 2";;
  2) SHAPE="$SHAPE hidden_size=256 num_attention_heads=8"
     SIZE="--target-params 5.2e6 --max-tokens 4.8e6 --batch-size 32"; JOBS=$#; EVAL="--device cuda";;
  *) echo "SCALE must be 1 or 2" >&2; exit 2;;
esac
[ -n "${TIME_BUDGET:-}" ] && SIZE="$SIZE --time-budget $TIME_BUDGET"
mkdir -p "$OUT"
train() {  # NAME=PRESET[:SETTINGS]
  local name=${1%%=*} spec=${1#*=} preset settings memory
  preset=${spec%%:*}; settings=""; [ "$spec" != "$preset" ] && settings=${spec#*:}
  case $preset in bmojo_f) memory="num_fading_tokens=16";; bmojo) memory="num_fading_tokens=16 num_eidetic_tokens=16";;
    *) memory="";; esac
  # shellcheck disable=SC2086
  $BMOJO train --preset "$preset" $COMMON $SIZE --set $SHAPE $memory ${settings//,/ } \
    --out "$OUT/${name}_s$SEED" > "$OUT/${name}_s$SEED.log" 2>&1 && echo "trained $name" || echo "FAILED $name"
}
export -f train; export BMOJO COMMON SIZE SHAPE OUT SEED
printf '%s\n' "$@" | xargs -P "$JOBS" -I{} bash -c 'train "$@"' _ {}
runs=(); for row in "$@"; do runs+=("$OUT/${row%%=*}_s$SEED"); done
# one eval process per run ($JOBS at a time), then the combined table and plot from their eval.json
# shellcheck disable=SC2086
printf '%s\n' "${runs[@]}" | xargs -P "$JOBS" -I{} sh -c "$BMOJO eval {} --lengths 1,2,4,8,16,32 \
  --max-parallel-len 2048 $EVAL > {}.eval.log 2>&1 || echo 'FAILED eval {}'"
$BMOJO eval "${runs[@]}" --lengths 1,2,4,8,16,32 --plot-only --out "$OUT"
