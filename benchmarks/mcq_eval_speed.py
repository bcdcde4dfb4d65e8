"""Multiple-choice scoring speed: medtune's scorer against one option per forward pass.

Same model (SmolLM2-135M-Instruct, the offline default), same HEAD-QA questions, same prompts,
in one process. The baseline is the textbook loop (and what a first notebook does): for every
option, one forward pass over prompt + option with full-vocabulary logits. medtune runs each
prompt once, continues all its options from the cached keys/values, puts several questions in
each pass and computes logits only where option tokens are predicted. Both must give the same
log-likelihoods (checked: the largest difference is printed) and so the same answers. Rounds
alternate baseline, medtune, baseline, medtune; the ratio is of the medians.

    python benchmarks/mcq_eval_speed.py [--questions 100] [--rounds 2] [--language en] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from medtune.data.mcq import load_mcq
from medtune.eval.loglik import OptionScorer, Request
from medtune.eval.tasks import choice_request
from medtune.models import load_model, load_tokenizer, resolve_model

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@torch.inference_mode()
def one_option_per_pass(scorer: OptionScorer, model, requests: list[Request]) -> list[list[float]]:
    out = []
    for r in requests:
        e = scorer.encode(r)
        scores = []
        for cont in e.options:
            ids = torch.tensor([e.context + cont])
            logp = model(ids).logits[0].float().log_softmax(-1)
            start = len(e.context) - 1
            scores.append(sum(logp[start + k, t].item() for k, t in enumerate(cont)))
        out.append(scores)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--language", default="en", choices=["en", "es"])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    resolved = resolve_model(MODEL)
    model, tokenizer = load_model(resolved).eval(), load_tokenizer(resolved)
    name = "test_HEAD_EN.json" if args.language == "en" else "test_HEAD.json"
    items = load_mcq("headqa", Path(args.data) / "head_qa" / args.language / name)[0][: args.questions]
    requests = [choice_request(r, "cloze", "en") for r in items]
    scorer = OptionScorer(model, tokenizer)
    times: dict[str, list[float]] = {"baseline": [], "medtune": []}
    for _ in range(args.rounds):
        for way in times:
            start = time.perf_counter()
            scores = one_option_per_pass(scorer, model, requests) if way == "baseline" else scorer.score(requests, progress=False)
            times[way].append(time.perf_counter() - start)
            if way == "baseline":
                reference = scores
            else:
                diff = max(abs(a - b) for s, r in zip(scores, reference) for a, b in zip(s, r))
                same = sum(max(range(len(s)), key=s.__getitem__) == max(range(len(r)), key=r.__getitem__) for s, r in zip(scores, reference))
    qps = {way: len(requests) / statistics.median(t) for way, t in times.items()}
    print(json.dumps({
        "model": resolved.describe(),
        "questions": len(requests),
        "options": sum(len(r.options) for r in requests),
        "device": "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)",
        "questions_per_s": {k: round(v, 2) for k, v in qps.items()},
        "seconds": times,
        "max_abs_loglik_diff": diff,
        "same_answer": f"{same}/{len(requests)}",
        "speedup": round(qps["medtune"] / qps["baseline"], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
