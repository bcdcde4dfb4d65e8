"""Server load: N concurrent clients against `medtune serve`'s batching engine, and a sequential baseline.

The server runs on loopback with the offline default model (SmolLM2-135M-Instruct), plain chat
(no retrieval, no safety rules: this measures the engine). `--clients` asyncio+httpx clients send
`--requests` chat completions in all, each with the same fixed `--max-tokens`, greedy. In the same
run and process, on the same weights, a loop answers `--baseline-requests` of the same questions
one at a time with `Predictor.generate_chat` (no server). Both count generated tokens the same
way (the answer's tokens, as the server's usage reports them). Prints JSON on stdout and a table on
stderr: requests/s, tokens/s, p50/p95 latency, errors, and the throughput ratio.

`--hostile FRACTION` measures instead what hostile clients cost the good ones: that fraction of the
`--requests` is hostile (over-length prompts, bodies about the size limit, clients that hang up
mid-request, bad or deeply nested JSON, a temperature of 1e-40, a wrong content type, a body
trickled a byte at a time), interleaved with good requests, over 16 clients unless `--clients`
says otherwise. A clean run of the same good requests goes first. A table on stderr, then JSON on
stdout: the good requests' p95 latency clean and hostile and their ratio, 5xx answers, lost good
requests (anything but a 200 with a complete answer) and the statuses each hostile kind got.
Target: no 5xx, no lost good request, good p95 at most 1.5x clean.

    HF_HUB_OFFLINE=1 python benchmarks/serve_load.py --clients 8 --requests 64 --max-tokens 32
    HF_HUB_OFFLINE=1 python benchmarks/serve_load.py --clients 16 --requests 500 --max-tokens 8
    HF_HUB_OFFLINE=1 python benchmarks/serve_load.py --hostile 0.1 --requests 200 --max-tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
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


async def load(base: str, clients: int, n: int, max_tokens: int, *, name: str = "server (batching engine)",
               headers: dict | None = None, temperature: float | None = None) -> dict:
    """`clients` concurrent clients send `n` chat completions to `base` in all; `headers` go with each."""
    import httpx

    latencies, tokens, errors, next_i = [], 0, [], 0

    async def client(http):
        nonlocal tokens, next_i
        while next_i < n:
            i, next_i = next_i, next_i + 1
            body = {"model": "bench", "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
            if temperature is not None:
                body["temperature"] = temperature
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

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients), headers=headers) as http:
        start = time.perf_counter()
        await asyncio.gather(*[client(http) for _ in range(clients)])
        wall = time.perf_counter() - start
    result = summary(name, clients, n, len(errors), wall, tokens, latencies)
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


# ---- --hostile ------------------------------------------------------------------------------------

KINDS = ["over_length", "huge_body", "disconnect", "disconnect_stream", "bad_json", "tiny_temperature",
         "deep_json", "wrong_content_type", "slow_body"]
MAX_REQUEST_BYTES = 1_000_000  # the server's default limits.max_request_bytes
TRICKLE_S = 0.05  # slow_body: one byte every 50 ms (a ~150-byte body takes ~8 s)
HOSTILE_TIMEOUT_S = 300  # a hostile request unanswered by then counts as "timeout"


def good_body(i: int, max_tokens: int, **extra) -> dict:
    return {"model": "bench", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]} | extra


def hostile_request(kind: str, i: int, max_tokens: int) -> dict:
    """What `raw_post` sends for the i-th hostile request of `kind`."""
    body = json.dumps(good_body(i, max_tokens)).encode()
    if kind == "over_length":  # ~20k tokens: far past the model's context
        body = json.dumps(good_body(i, max_tokens) | {"messages": [{"role": "user", "content": "gout hurts " * 10_000}]}).encode()
    elif kind == "huge_body":  # alternately just under the limit (an unknown field the server ignores) and just over it
        pad = MAX_REQUEST_BYTES - len(body) - 100 + (2_000 if i % 2 else 0)
        body = json.dumps(good_body(i, max_tokens) | {"pad": "x" * pad}).encode()
    elif kind == "disconnect_stream":
        body = json.dumps(good_body(i, max_tokens, stream=True)).encode()
    elif kind == "bad_json":
        body = body[:-5]
    elif kind == "tiny_temperature":
        body = json.dumps(good_body(i, max_tokens, temperature=1e-40)).encode()
    elif kind == "deep_json":
        body = b'{"messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    return {"body": body, "content_type": "text/plain" if kind == "wrong_content_type" else "application/json",
            "trickle": kind == "slow_body",
            "hang_up": {"disconnect": "100 ms", "disconnect_stream": "first byte"}.get(kind)}


async def raw_post(base: str, body: bytes, content_type: str, trickle: bool, hang_up: str | None) -> str:
    """POST /v1/chat/completions on a connection of its own, so that it can be trickled or abandoned.
    Returns the status code, or what happened instead: disconnected (we hung up) or reset."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        if trickle:
            for byte in body:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(TRICKLE_S)
        else:
            writer.write(body)
        await writer.drain()
        if hang_up == "first byte":  # mid-stream: the answer has begun
            await reader.read(1)
            return "disconnected"
        if hang_up == "100 ms":  # mid-generation of a non-streamed answer
            await asyncio.sleep(0.1)
            return "disconnected"
        status = await reader.readline()
        await reader.read()  # the whole answer: the connection closes after it
    except ConnectionError:  # the server answered (413) and closed while we were still sending
        try:
            status = b"" if reader.at_eof() else await reader.readline()
        except ConnectionError:  # closed before its answer could be read: counted as "reset"
            status = b""
    finally:
        writer.close()
    return status.split()[1].decode() if status else "reset"


async def hostile_load(base: str, clients: int, plan: list, max_tokens: int) -> dict:
    """Send `plan` (("good", i) or (kind, i) items, in order) over `clients` concurrent clients."""
    import httpx

    latencies, lost, statuses, queue = [], [], collections.defaultdict(collections.Counter), collections.deque(plan)

    async def good(http, i):
        t = time.perf_counter()
        try:
            r = await http.post(f"{base}/v1/chat/completions", json=good_body(i, max_tokens))
        except httpx.HTTPError as exc:
            statuses["good"][type(exc).__name__] += 1
            lost.append(repr(exc))
            return
        statuses["good"][str(r.status_code)] += 1
        choice = (r.json().get("choices") or [{}])[0] if r.status_code == 200 else {}
        if choice.get("finish_reason") in ("stop", "length") and isinstance(choice.get("message", {}).get("content"), str):
            latencies.append(time.perf_counter() - t)
        else:
            lost.append(f"{r.status_code}: {r.text[:200]}")

    async def client(http):
        while queue:
            kind, i = queue.popleft()
            if kind == "good":
                await good(http, i)
                continue
            try:
                status = await asyncio.wait_for(raw_post(base, **hostile_request(kind, i, max_tokens)), HOSTILE_TIMEOUT_S)
            except asyncio.TimeoutError:
                status = "timeout"
            statuses[kind][status] += 1

    async with httpx.AsyncClient(timeout=HOSTILE_TIMEOUT_S, limits=httpx.Limits(max_connections=clients)) as http:
        start = time.perf_counter()
        await asyncio.gather(*[client(http) for _ in range(clients)])
        wall = time.perf_counter() - start
    return {"wall_s": round(wall, 2), "good": sum(k == "good" for k, _ in plan), "lost_good": len(lost),
            "lost_samples": lost[:5], "good_latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "good_latency_p95_s": round(percentile(latencies, 95), 3) if latencies else None,
            "server_errors_5xx": sum(n for c in statuses.values() for s, n in c.items() if s.startswith("5")),
            "statuses": {kind: dict(c) for kind, c in statuses.items()}}


def hostile_main(base: str, args) -> dict:
    """A clean run of the good requests, then the same good requests with hostile ones interleaved."""
    n_hostile = round(args.requests * args.hostile)
    hostile_at = set(random.Random(0).sample(range(args.requests), n_hostile))  # the same interleaving every run
    plan, sent = [], collections.Counter()  # (kind, how many of that kind came before)
    for slot in range(args.requests):
        kind = KINDS[(slot - sent["good"]) % len(KINDS)] if slot in hostile_at else "good"  # the kinds in turn
        plan.append((kind, sent[kind]))
        sent[kind] += 1
    clean = asyncio.run(hostile_load(base, args.clients, [p for p in plan if p[0] == "good"], args.max_tokens))
    hostile = asyncio.run(hostile_load(base, args.clients, plan, args.max_tokens))
    p95 = clean["good_latency_p95_s"], hostile["good_latency_p95_s"]  # over the good requests answered in full: read with lost_good
    result = {"model": args.model, "max_tokens": args.max_tokens, "clients": args.clients, "requests": args.requests,
              "hostile_fraction": args.hostile, "hostile_requests": n_hostile,
              "good_p95_s_clean": p95[0], "good_p95_s_hostile": p95[1],
              "good_p95_ratio": round(p95[1] / p95[0], 2) if all(p95) else None,
              "server_errors_5xx": clean["server_errors_5xx"] + hostile["server_errors_5xx"],
              "lost_good_requests": clean["lost_good"] + hostile["lost_good"],
              "hostile_statuses": {k: v for k, v in hostile["statuses"].items() if k != "good"},
              "clean": clean, "hostile": hostile}
    print("run | good | lost good | 5xx | good p50 s | good p95 s | wall s", file=sys.stderr)
    for name, run in (("clean", clean), ("hostile", hostile)):
        print(f"{name} | {run['good']} | {run['lost_good']} | {run['server_errors_5xx']} | {run['good_latency_p50_s']} | "
              f"{run['good_latency_p95_s']} | {run['wall_s']}", file=sys.stderr)
    print("hostile kind | statuses", file=sys.stderr)
    for kind, counts in result["hostile_statuses"].items():
        print(f"{kind} | {', '.join(f'{s}: {n}' for s, n in sorted(counts.items()))}", file=sys.stderr)
    print(f"good p95 hostile/clean: {result['good_p95_ratio']}x (target <= 1.5), 5xx: {result['server_errors_5xx']} (target 0), "
          f"lost good requests: {result['lost_good_requests']} (target 0)", file=sys.stderr)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=MODEL, help="run directory, model directory or hub id")
    ap.add_argument("--clients", type=int, help="concurrent clients (default: 8, with --hostile 16)")
    ap.add_argument("--requests", type=int, default=64, help="requests sent to the server in all")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--baseline-requests", type=int, default=16, help="requests of the sequential loop")
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--batch-wait-ms", type=float, default=15.0)
    ap.add_argument("--hostile", type=float, metavar="FRACTION", help="this fraction of the requests is hostile (see above)")
    args = ap.parse_args()
    args.clients = args.clients or (16 if args.hostile else 8)

    import torch

    from medtune.predict import Predictor
    from medtune.serve import create_app
    from medtune.serve.config import config_from_dict

    predictor = Predictor.from_pretrained(args.model)
    config = config_from_dict({
        "models": {"bench": {"model": args.model, "grounding": False, "safety": False}},
        "limits": {"max_tokens": max(args.max_tokens, 1), "timeout_s": 3600},
        "batching": {"max_batch_size": args.max_batch_size, "batch_wait_ms": args.batch_wait_ms},
    })
    base, server = start_server(create_app(config, predictors={"bench": predictor}))
    asyncio.run(load(base, args.clients, min(args.clients, 4), args.max_tokens))  # warm-up
    if args.hostile:
        result = hostile_main(base, args)
        server.should_exit = True
        print(json.dumps(result, indent=2))
        return
    batch_sizes, generate = [], predictor.generate

    def counted(prompts, **kwargs):  # how many requests each generate call served
        batch_sizes.append(len(prompts))
        return generate(prompts, **kwargs)

    predictor.generate = counted
    served = asyncio.run(load(base, args.clients, args.requests, args.max_tokens))
    predictor.generate = generate
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
