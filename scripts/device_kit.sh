#!/usr/bin/env bash
# What benchmarks/gpu_check.py needs on the lent GPU machine (Python 3.12, torch, transformers, peft and
# accelerate already there, nothing fetchable), into .device/ (ignored by git; carried with
# `carry: [".device"]`): in wheels/, what medtune's training, DPO and quantization need and that image
# lacks, at this checkout's versions; in data/, the HEAD-QA files of the kit's eval step, copied from
# ../shared/data (never committed).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
mkdir -p .device/wheels .device/data/head_qa/es
PIP=${PIP:-.venv/bin/pip}
pins=(bitsandbytes==0.50.2 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
      pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5)
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .device/wheels "${pins[@]}"
cp ../shared/data/head_qa/es/test_HEAD.json ../shared/data/head_qa/es/dev_HEAD.json .device/data/head_qa/es/
du -sh .device
