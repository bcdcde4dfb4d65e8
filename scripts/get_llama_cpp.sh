#!/usr/bin/env bash
# llama.cpp's HF -> GGUF converter for `medtune quantize --method gguf`, into DEST (default
# $MEDTUNE_CACHE/llama.cpp, i.e. ~/.cache/medtune/llama.cpp); prints DEST. Safe to run again.
# The converter is not a PyPI module, but the llama-cpp-python sdist vendors llama.cpp: only the
# converter and what it reads (gguf-py, conversion/, chat templates) are taken from it, nothing is built.
set -euo pipefail
VERSION=0.3.36
DEST=${1:-${MEDTUNE_CACHE:-$HOME/.cache/medtune}/llama.cpp}
if [ -f "$DEST/convert_hf_to_gguf.py" ] && [ -f "$DEST/VERSION" ]; then
  echo "$DEST"
  exit 0
fi
PY=${PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
[ -x "$PY" ] || PY=python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==$VERSION"
sdist="$tmp/llama_cpp_python-$VERSION.tar.gz"
top="llama_cpp_python-$VERSION"
mkdir "$tmp/llama.cpp"
tar xzf "$sdist" -C "$tmp/llama.cpp" --strip-components=3 \
  "$top/vendor/llama.cpp/convert_hf_to_gguf.py" "$top/vendor/llama.cpp/gguf-py" \
  "$top/vendor/llama.cpp/conversion" "$top/vendor/llama.cpp/models/templates" "$top/vendor/llama.cpp/LICENSE"
# The vendored llama.cpp commit, for the model card's converter version.
commit=$(tar xzf "$sdist" -O "$top/.git/modules/vendor/llama.cpp/HEAD")
echo "llama.cpp ${commit:0:7}, vendored in the llama-cpp-python $VERSION sdist" > "$tmp/llama.cpp/VERSION"
# Item by item, so that a llama-server already built into DEST/build (medtune.engines.llamacpp) stays.
mkdir -p "$DEST"
for item in "$tmp/llama.cpp"/*; do
  rm -rf "${DEST:?}/$(basename "$item")"
  mv "$item" "$DEST/"
done
echo "$DEST"
