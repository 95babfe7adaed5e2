#!/bin/sh
# Qwen2 (T-lite-it-1.0, Qwen2.5-7B shape) and Qwen3 (T-lite-it-2.1, Qwen3-8B shape) random checkpoints:
# our convert vs llama.cpp's convert_hf_to_gguf.py, then Q4_K_M quantize time. One checkpoint on disk at a
# time (~15-16 GB, plus one output GGUF while measuring); everything is deleted after its step.
#   sh benchmarks/bench_qwen.sh LLAMACPP_DIR QWEN_TOKENIZER_DIR [WORK]
# ARCHS (default "qwen2 qwen3") picks the architectures; QWEN3_LAYERS writes a Qwen3 checkpoint with the
# 8B widths but fewer layers when the disk cannot hold 2 x 16 GB; SKIP_QUANTIZE=1 measures convert only.
# LLAMACPP_DIR holds convert_hf_to_gguf.py (the llama-cpp-python sdist's vendor/llama.cpp, as
# tests/llamacpp_convert.py extracts it); QWEN_TOKENIZER_DIR holds tokenizer.json + tokenizer_config.json.
set -eu
LLAMACPP=$1
TOK=$2
WORK=${3:-bench-data/qwen}
PY=${PYTHON:-python}
mkdir -p "$WORK"
for ARCH in ${ARCHS:-qwen2 qwen3}; do
  LAYERS=""
  case $ARCH in
    qwen2) TITLE="7B-shaped Qwen2 (T-lite-it-1.0, Qwen2.5-7B)";;
    qwen3) TITLE="8B-shaped Qwen3 (T-lite-it-2.1, Qwen3-8B)"
      if [ -n "${QWEN3_LAYERS:-}" ]; then
        LAYERS="--layers $QWEN3_LAYERS"
        TITLE="Qwen3 with Qwen3-8B widths and $QWEN3_LAYERS of 36 layers"
      fi;;
  esac
  CKPT=$WORK/$ARCH-ckpt
  df -h "$WORK" | tail -1
  # shellcheck disable=SC2086
  $PY benchmarks/make_8b_checkpoint.py --arch "$ARCH" $LAYERS --tokenizer-dir "$TOK" --out "$CKPT" --force
  $PY benchmarks/bench_convert.py --checkpoint "$CKPT" --work "$WORK/convert" \
    --llamacpp-script "$LLAMACPP/convert_hf_to_gguf.py" --shape "$TITLE" \
    --section "## Convert: $TITLE BF16 checkpoint → BF16 GGUF" --update-md BENCHMARKS.md
  if [ -n "${SKIP_QUANTIZE:-}" ]; then rm -rf "$CKPT" "$WORK/convert"; continue; fi
  $PY -m tlite_edge convert "$CKPT" --outfile "$WORK/$ARCH-BF16.gguf" --no-verify
  rm -rf "$CKPT"
  $PY benchmarks/bench_quantize.py --model "$WORK/$ARCH-BF16.gguf" --work "$WORK/q" --levels Q4_K_M \
    --overhead "" --threads 2 --input "the $TITLE random checkpoint" \
    --section "## Quantize: $TITLE BF16 GGUF → Q4_K_M" --update-md BENCHMARKS.md
  rm -rf "$WORK/$ARCH-BF16.gguf" "$WORK/$ARCH-BF16.gguf.sha256" "$WORK/q" "$WORK/convert"
done
