"""benchmarks/retriever_real_messages.py on a few rows in ai-medical-chatbot's published schema: the dialogues
become a FAQ (title without "Q. " as the stored question, the doctor's reply as the answer), the patients'
messages are the queries, a row without a reply is counted, and distinct topics are found."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    {"Description": "Q. What causes pain in the heel in the morning?", "Patient": "Hi doctor, every morning when I get out of bed my heel hurts a lot for the first steps, then it gets better. I am 45 and I run. What is it?",
     "Doctor": "Hi. This sounds like plantar fasciitis, an irritation of the band under the foot. Stretch the calf and the sole, use cushioned shoes and rest from running for a while."},
    {"Description": "Q. Is my blood sugar of 180 after meals too high?", "Patient": "Hello, my sugar after lunch was 180 mg/dl twice this week. My father has diabetes. Should I worry?",
     "Doctor": "Hello. A reading of 180 after a meal is above normal. Please get a fasting glucose and an HbA1c test to check for diabetes."},
    {"Description": "Q. Why do I have a rash after taking amoxicillin?", "Patient": "hi i started amoxicillin for a throat infection three days ago and now i have red itchy spots on my chest and arms",
     "Doctor": "Hi. An itchy rash on amoxicillin can be an allergy to the antibiotic. Stop it and see your doctor today; seek care at once if your lips swell or you cannot breathe."},
    {"Description": "Q. How can I stop my child's nosebleeds?", "Patient": "My 7 year old son gets nosebleeds almost every week, mostly at night. How do I stop them?",
     "Doctor": "Hello. Pinch the soft part of the nose for ten minutes with the head bent forward. A humidifier at night and saline gel help the dry lining."},
    {"Description": "Q. What does a high TSH mean?", "Patient": "Doctor, my TSH came back 9.5 and I feel tired all the time and cold. What does it mean?",
     "Doctor": ""},
]


def test_real_messages_benchmark_on_a_few_rows(tmp_path):
    data = tmp_path / "sample.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    proc = subprocess.run([sys.executable, "benchmarks/retriever_real_messages.py", "--data", str(data), "--medquad", "",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["counts"] == {"rows": 5, "skipped by the loader": 0, "messages": 4, "without title or reply": 1, "passages": 4}
    assert set(report["rows"]) == {"stock, passages only (w=0.0)", "stock, + stored questions (w=0.75)"}
    assert all(row["mrr@10"] == 1.0 for row in report["rows"].values())
    assert report["weak_retrieval_stock"]["flagged_with_right_first_hit"] <= report["weak_retrieval_stock"]["flagged"] <= 1
    stored = [json.loads(line) for line in (tmp_path / "out" / "index-stock" / "passages.jsonl").read_text().splitlines()]
    assert [p["question"] for p in stored][:2] == ["What causes pain in the heel in the morning?", "Is my blood sugar of 180 after meals too high?"]
