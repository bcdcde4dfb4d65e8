#!/usr/bin/env bash
# Seed 002 end to end on the CPU with the offline small model, quality aside: DPO on MedText-format
# data, then 4-bit quantization with a perplexity-and-size report. MedText itself is not available
# offline, so ChatDoctor-5k cases are written in MedText's CSV format (Prompt, Completion) first.
# On a GPU: recipes/seed002-dpo-medtext.yaml (Llama-2-7B, QLoRA) and `medtune quantize --method gptq`.
#   bash scripts/seed002_chain.sh [WORK_DIR]      (MEDTUNE_DATA_DIR, default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${MEDTUNE_DATA_DIR:-../shared/data}
W=${1:-runs/seed002-chain}
MT=.venv/bin/medtune
export HF_HUB_OFFLINE=1
rm -rf "$W" && mkdir -p "$W"

echo "== 1. MedText-format data"
.venv/bin/python - "$DATA/chatdoctor/chatdoctor5k.json" "$W/medtext.csv" <<'PY'
import csv, json, sys
rows = json.load(open(sys.argv[1], encoding="utf-8"))[:200]
with open(sys.argv[2], "w", newline="", encoding="utf-8") as fh:
    w = csv.writer(fh)
    w.writerow(["Prompt", "Completion"])
    w.writerows([r["input"], r["output"]] for r in rows)
print(f"{len(rows)} cases -> {sys.argv[2]}")
PY

echo "== 2. DPO"
$MT train recipes/seed002-dpo-medtext-cpu.yaml --run-dir "$W/dpo" --set data.sources.0.path="$W/medtext.csv"
cat "$W/dpo/report.md"

echo "== 3. 4-bit quantization, perplexity and size against the DPO model"
$MT quantize "$W/dpo" --method int4 --dtype bfloat16 --out "$W/int4" --eval-samples 16
