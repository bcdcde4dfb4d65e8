#!/usr/bin/env bash
# The main job, offline: install, then run the seed-003 recipe (FLAN-T5 on MedQuAD) end to end.
# No T5 weights can be downloaded here, so a small random T5 stands in for google/flan-t5-base
# (with the hub, drop the --set model=… line and the recipe uses google/flan-t5-base).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${MEDTUNE_DATA_DIR:-../shared/data}
bash scripts/setup.sh
[ -f models/t5-demo/config.json ] || .venv/bin/python -m medtune.testing "$DATA/medquad" models/t5-demo
run_dir=$(.venv/bin/medtune train recipes/seed003-flan-t5-medquad.yaml \
  --set model=models/t5-demo --set data.sources.0.path="$DATA/medquad" \
  --set train.max_steps=60 --set train.learning_rate=2e-3 --set data.max_examples=480 \
  --set eval.max_samples=16 --set eval.generation.num_beams=1 --set eval.generation.max_new_tokens=48 | tail -n 1)
cat "$run_dir/report.md"
.venv/bin/medtune predict "$run_dir" "What are the symptoms of glaucoma?" --max-new-tokens 32
