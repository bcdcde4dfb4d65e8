#!/usr/bin/env bash
# Seed 001 (SpanishMedicalLLM) end to end on the CPU with the offline small model, quality aside:
#   1. Spanish data: MedQuAD answers machine-translated, QA pairs generated from Spanish clinical cases
#   2. SFT with 10% English replay          (recipes/seed001-sft-replay-es.yaml)
#   3. DPO on the SFT adapter               (recipes/seed001-dpo-es.yaml)
#   4. the adapter folded in, then TIES-merged with the base (recipes/seed001-ties-merge.yaml)
#   5. evaluation on HEAD-QA (Spanish)
# Each stage prints its report. On a GPU, point the recipes at 7B models and lift the caps.
#   bash scripts/seed001_chain.sh [WORK_DIR]      (MEDTUNE_DATA_DIR, default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${MEDTUNE_DATA_DIR:-../shared/data}
W=${1:-runs/seed001-chain}
MT=.venv/bin/medtune
export HF_HUB_OFFLINE=1
rm -rf "$W" && mkdir -p "$W"

echo "== 1. translate + synth"
$MT translate "$DATA/medquad" --to es --out "$W/medquad_es.jsonl" --limit 4 --max-new-tokens 48
$MT synth "$DATA/es_clinical_text/cares_es.jsonl" --out "$W/synth_es.jsonl" --lang es --max-passages 4 --max-new-tokens 96

echo "== 2. SFT with replay"
$MT train recipes/seed001-sft-replay-es.yaml --run-dir "$W/sft" \
  --set data.sources.0.path="$W/medquad_es.jsonl" --set data.sources.1.path="$W/synth_es.jsonl" \
  --set data.sources.2.path="$DATA/medquad"
cat "$W/sft/report.md"

echo "== 3. DPO"
$MT train recipes/seed001-dpo-es.yaml --run-dir "$W/dpo" --set model="$W/sft" --set data.sources.0.path="$DATA/medquad"
cat "$W/dpo/report.md"

echo "== 4. merge"
$MT merge-adapter "$W/dpo" --out "$W/dpo-model"
$MT merge recipes/seed001-ties-merge.yaml --out "$W/merged" --set merge.base_model=HuggingFaceTB/SmolLM2-135M-Instruct \
  --set merge.models.0.model="$W/dpo-model" --set merge.dtype=float32
cat "$W/merged/merge_report.json"

echo "== 5. evaluate"
$MT eval "$W/merged" --tasks headqa_es --limit 40 --data-dir "$DATA" --out "$W/eval"
