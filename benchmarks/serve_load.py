"""Server load: N concurrent clients against `medtune serve`'s batching engine, and a sequential baseline.

The server runs on loopback with the offline default model (SmolLM2-135M-Instruct), plain chat
(no retrieval, no safety rules: this measures the engine). `--clients` asyncio+httpx clients send
`--requests` chat completions in all, each with the same fixed `--max-tokens`, greedy. In the same
run and process, on the same weights, a loop answers `--baseline-requests` of the same questions
one at a time with `Predictor.generate_chat` (no server). Both count generated tokens the same
way (the answer's tokens, as the server's usage reports them). Prints JSON on stdout and a table on
stderr: requests/s, tokens/s, p50/p95 latency, errors, and the throughput ratio.

    HF_HUB_OFFLINE=1 python benchmarks/serve_load.py --clients 8 --requests 64 --max-tokens 32
    HF_HUB_OFFLINE=1 python benchmarks/serve_load.py --clients 16 --requests 500 --max-tokens 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
QUESTIONS = [
    "What are the symptoms of gout?", "How is asthma treated?", "What causes anemia?",
    "Is psoriasis contagious?", "How can I prevent migraines?", "What is glaucoma?",
    "¿Cuáles son los síntomas del sarampión?", "¿Qué causa el raquitismo?", "¿Cómo se trata la diabetes tipo 2?",
    "Quais são os sintomas do lúpus?", "O que causa o escorbuto?", "Como se trata a hipertensão?",
    "What is the difference between a cold and the flu?", "How much water should an adult drink per day?",
    "What are the risk factors for osteoporosis?", "When should a fever be checked by a doctor?",
]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def baseline(predictor, n: int, max_tokens: int) -> dict:
    """One request at a time, straight into generate_chat."""
    latencies, tokens = [], 0
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        text = predictor.generate_chat([[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]],
                                       max_new_tokens=max_tokens, num_beams=1, do_sample=False)[0]
        latencies.append(time.perf_counter() - t)
        tokens += len(predictor.tokenizer(text, add_special_tokens=False)["input_ids"])
    wall = time.perf_counter() - start
    return summary("sequential generate_chat", 1, n, 0, wall, tokens, latencies)


async def load(base: str, clients: int, n: int, max_tokens: int) -> dict:
    import httpx

    latencies, tokens, errors, next_i = [], 0, [], 0

    async def client(http):
        nonlocal tokens, next_i
        while next_i < n:
            i, next_i = next_i, next_i + 1
            body = {"model": "bench", "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
            t = time.perf_counter()
            try:
                r = await http.post(f"{base}/v1/chat/completions", json=body)
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                tokens += r.json()["usage"]["completion_tokens"]
                latencies.append(time.perf_counter() - t)
            except httpx.HTTPError as exc:
                errors.append(repr(exc))

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
        start = time.perf_counter()
        await asyncio.gather(*[client(http) for _ in range(clients)])
        wall = time.perf_counter() - start
    result = summary("server (batching engine)", clients, n, len(errors), wall, tokens, latencies)
    result["error_samples"] = errors[:5]
    return result


def summary(name: str, clients: int, n: int, errors: int, wall: float, tokens: int, latencies: list[float]) -> dict:
    return {"name": name, "clients": clients, "requests": n, "errors": errors, "wall_s": round(wall, 2),
            "requests_per_s": round((n - errors) / wall, 3), "tokens_per_s": round(tokens / wall, 1),
            "completion_tokens": tokens,
            "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "latency_p95_s": round(percentile(latencies, 95), 3) if latencies else None}


def start_server(app):
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=MODEL, help="run directory, model directory or hub id")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=64, help="requests sent to the server in all")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--baseline-requests", type=int, default=16, help="requests of the sequential loop")
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--batch-wait-ms", type=float, default=15.0)
    args = ap.parse_args()

    import torch

    from medtune.predict import Predictor
    from medtune.serve import create_app
    from medtune.serve.config import config_from_dict

    predictor = Predictor.from_pretrained(args.model)
    config = config_from_dict({
        "models": {"bench": {"model": args.model, "grounding": False}},
        "limits": {"max_tokens": max(args.max_tokens, 1), "timeout_s": 3600},
        "batching": {"max_batch_size": args.max_batch_size, "batch_wait_ms": args.batch_wait_ms},
    })
    base, server = start_server(create_app(config, predictors={"bench": predictor}))
    asyncio.run(load(base, args.clients, min(args.clients, 4), args.max_tokens))  # warm-up
    batch_sizes, generate_chat = [], predictor.generate_chat

    def counted(conversations, **kwargs):  # how many requests each generate call served
        batch_sizes.append(len(conversations))
        return generate_chat(conversations, **kwargs)

    predictor.generate_chat = counted
    served = asyncio.run(load(base, args.clients, args.requests, args.max_tokens))
    predictor.generate_chat = generate_chat
    server.should_exit = True
    served |= {"generate_calls": len(batch_sizes), "mean_batch_size": round(statistics.mean(batch_sizes), 2)}
    seq = baseline(predictor, args.baseline_requests, args.max_tokens)

    result = {"model": args.model, "max_tokens": args.max_tokens, "torch_threads": torch.get_num_threads(),
              "device": str(predictor.model.device), "batching": config.batching.model_dump(),
              "sequential": seq, "server": served,
              "throughput_ratio": round(served["requests_per_s"] / seq["requests_per_s"], 2),
              "tokens_per_s_ratio": round(served["tokens_per_s"] / seq["tokens_per_s"], 2)}
    print(json.dumps(result, indent=2))
    cols = ["name", "clients", "requests", "errors", "requests_per_s", "tokens_per_s", "latency_p50_s", "latency_p95_s"]
    print(" | ".join(cols), file=sys.stderr)
    for row in (seq, served):
        print(" | ".join(str(row[c]) for c in cols), file=sys.stderr)
    print(f"throughput ratio (requests/s): {result['throughput_ratio']}x, tokens/s: {result['tokens_per_s_ratio']}x",
          file=sys.stderr)


if __name__ == "__main__":
    main()
