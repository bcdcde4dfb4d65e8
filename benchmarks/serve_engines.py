"""Engines compared: the same model, prompts and clients against bare llama-server, medtune serve on
the llama.cpp engine, and medtune serve on the transformers engine, one after the other in one run.

The model is the offline default (SmolLM2-135M-Instruct): transformers serves its fp32 weights,
llama.cpp medtune's q8_0 GGUF export of them. Both medtune servers run plain chat with the safety
layer on (no retrieval): the llama.cpp row against the bare one is what medtune's proxy and safety
cost; against the transformers row, what the engine gains. `--clients` asyncio+httpx clients send
`--requests` chat completions in all, greedy, `--max-tokens` each; a short warm-up goes first.
Prints a table on stderr, then one JSON object on stdout with `ratio_vs_transformers` and
`ratio_vs_bare_llamacpp` (requests/s ratios of medtune on llama.cpp) and `errors`.

    python benchmarks/serve_engines.py --clients 8 --requests 64 --max-tokens 32
    python benchmarks/serve_engines.py --clients 16 --requests 500 --max-tokens 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from serve_load import MODEL, load, start_server  # noqa: E402  (same folder)

SLOT_CONTEXT = 1024  # tokens per llama.cpp slot: a question and a short answer fit many times over


def measure(base: str, name: str, args, headers: dict | None = None) -> dict:
    asyncio.run(load(base, args.clients, min(args.clients, 8), args.max_tokens, headers=headers, temperature=0))
    return asyncio.run(load(base, args.clients, args.requests, args.max_tokens, name=name, headers=headers, temperature=0))


def through_medtune(engine: dict, name: str, args) -> dict:
    from medtune.serve import create_app
    from medtune.serve.config import config_from_dict

    config = config_from_dict({
        "models": {"bench": {"model": MODEL, "grounding": False, "engine": engine}},
        "limits": {"max_tokens": args.max_tokens, "timeout_s": 3600},
        "batching": {"max_batch_size": args.clients, "max_queue": max(64, args.requests)},
    })
    base, server = start_server(create_app(config))
    try:
        return measure(base, name, args)
    finally:
        server.should_exit = True  # its lifespan closes the engine (and stops a llama-server)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()

    from medtune.engines.llamacpp import llama_server_command
    from medtune.engines.managed import ManagedServer
    from medtune.models import cache_dir
    from medtune.quantize.convert import cached_gguf

    gguf = cached_gguf(MODEL, "q8_0")
    bare = ManagedServer("llama-server", llama_server_command(gguf, parallel=args.clients, context=SLOT_CONTEXT),
                         cache_dir() / "logs" / "bench-llama-server.log")
    bare.start()
    try:
        rows = [measure(bare.url.removesuffix("/v1"), "bare llama-server", args, {"Authorization": f"Bearer {bare.key}"})]
    finally:
        bare.close()
    rows.append(through_medtune({"kind": "llama.cpp", "parallel": args.clients, "context": SLOT_CONTEXT},
                                "medtune serve, llama.cpp engine", args))
    rows.append(through_medtune({"kind": "transformers"}, "medtune serve, transformers engine", args))

    bare_row, llama_row, hf_row = rows
    cols = ["name", "clients", "requests", "errors", "requests_per_s", "tokens_per_s", "latency_p50_s", "latency_p95_s"]
    print("| " + " | ".join(cols) + " |", file=sys.stderr)
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |", file=sys.stderr)
    result = {"model": MODEL, "clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens,
              "rows": rows,
              "ratio_vs_transformers": round(llama_row["requests_per_s"] / hf_row["requests_per_s"], 2),
              "ratio_vs_bare_llamacpp": round(llama_row["requests_per_s"] / bare_row["requests_per_s"], 2),
              "errors": sum(row["errors"] for row in rows)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
