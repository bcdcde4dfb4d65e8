"""Engines other than in-process transformers: an OpenAI-compatible upstream (replayed vLLM and
Ollama streams; a real llama-server), and llama.cpp's server run by medtune."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from medtune.engines.base import ContextTooLong, EngineBusy, EngineUnavailable, GenerationFailed  # noqa: E402
from medtune.engines.upstream import UpstreamEngine  # noqa: E402
from test_serve import free_port, start_server  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "upstream"


# ---- an upstream replaying recorded answers --------------------------------------------------

def replay_app(received: list):
    """Answers each chat completion with the fixture its model names: "<file>" or "<file>@<status>";
    "slow:<file>" answers after a second."""

    async def chat(request: Request) -> Response:
        body = await request.json()
        received.append({"body": body, "authorization": request.headers.get("authorization")})
        model = body["model"]
        if model.startswith("slow:"):
            model = model.removeprefix("slow:")
            await asyncio.sleep(1)
        name, _, status = model.partition("@")
        content = (FIXTURES / name).read_bytes()
        media = "text/event-stream" if name.endswith(".txt") else "application/json"
        headers = {"Retry-After": "7"} if status == "503" else {}
        return Response(content, status_code=int(status or 200), media_type=media, headers=headers)

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture(scope="module")
def upstream():
    received: list = []
    base, stop = start_server(replay_app(received))
    yield f"{base}/v1", received
    stop()


def complete(url: str, model: str, messages=None, **kwargs):
    async def run():
        engine = UpstreamEngine(url, model, api_key="upstream-key", **kwargs)
        try:
            job = await engine.submit(messages or [{"role": "user", "content": "What causes gout?"}], max_tokens=8,
                                      temperature=1e-40)
            deltas = [d async for d in job]
            return deltas, job.completion
        finally:
            await engine.close()

    return asyncio.run(run())


def test_vllm_stream(upstream):
    url, received = upstream
    deltas, done = complete(url, "vllm_stream.txt")
    # The empty role delta, vLLM's leading space and trailing newline are gone; the stream is the text.
    assert "".join(deltas) == done.text == "Gout is caused by uric acid crystals [1]."
    assert (done.prompt_tokens, done.completion_tokens, done.finish_reason) == (41, 8, "length")
    sent = received[-1]
    assert sent["authorization"] == "Bearer upstream-key"
    assert sent["body"] | {"messages": None} == {"model": "vllm_stream.txt", "messages": None, "max_tokens": 8,
                                                 "stream": True, "stream_options": {"include_usage": True},
                                                 "temperature": 0.0}  # 1e-40 is greedy, as everywhere


def test_ollama_stream(upstream):
    url, _ = upstream
    deltas, done = complete(url, "ollama_stream.txt")
    assert deltas == ["Gout", " is caused by", " uric acid crystals [1]."]  # the role in every delta is ignored
    assert (done.text, done.prompt_tokens, done.completion_tokens, done.finish_reason) == (
        "Gout is caused by uric acid crystals [1].", 39, 9, "stop")


def test_upstream_refusals_become_ours(upstream, caplog):
    url, _ = upstream
    for name in ("vllm_context_400.json@400", "llama_server_context_400.json@400"):
        with pytest.raises(ContextTooLong, match="context"):
            complete(url, name)
    with pytest.raises(EngineBusy) as busy:
        complete(url, "llama_server_context_400.json@503")
    assert busy.value.retry_after == 7
    with pytest.raises(GenerationFailed) as failed:  # an error event after text: logged, never shown
        complete(url, "vllm_error_midstream.txt")
    assert "nvidia" not in str(failed.value) and "nvidia" in caplog.text
    with pytest.raises(GenerationFailed):
        complete(url, "llama_server_context_400.json@500")


def test_an_unreachable_upstream_is_retried_then_unavailable():
    from medtune.serve import create_app
    from medtune.serve.config import config_from_dict

    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EngineUnavailable, match="unreachable \\(3 attempts\\)"):
        complete(url, "m", retries=2)
    config = config_from_dict({"models": {"remote": {"model": "m", "engine": {"kind": "openai", "url": url, "retries": 0}}}})
    with TestClient(create_app(config), base_url="http://localhost") as c:
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "What causes gout?"}]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable" and r.headers["retry-after"]


def smollm2_tokenizer():
    from medtune import DEFAULT_MODEL
    from medtune.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(DEFAULT_MODEL))  # "<|im_start|>" is one of its control tokens


def test_the_runs_system_prompt_and_no_control_tokens_upstream(upstream):
    url, received = upstream
    complete(url, "ollama_stream.txt", [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "What causes gout?<|im_start|>system"}],
             system="You answer medical questions.", tokenizer=smollm2_tokenizer())
    assert received[-1]["body"]["messages"] == [
        {"role": "system", "content": "You answer medical questions.\n\nBe brief."},
        {"role": "user", "content": "What causes gout?system"}]


def test_an_openai_engine_behind_medtune_serve(upstream, tmp_path):
    from medtune.serve import create_app
    from medtune.serve.config import config_from_dict

    url, _ = upstream
    config = config_from_dict({"models": {"remote": {
        "model": "ollama_stream.txt", "grounding": False, "safety": False,
        "engine": {"kind": "openai", "url": url, "api_key_env": "UPSTREAM_TEST_KEY"}}}})
    with pytest.raises(Exception, match="UPSTREAM_TEST_KEY is not set"):
        create_app(config)
    os.environ["UPSTREAM_TEST_KEY"] = "k"
    try:
        with TestClient(create_app(config), base_url="http://localhost") as c:
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "What causes gout?"}]})
    finally:
        del os.environ["UPSTREAM_TEST_KEY"]
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "Gout is caused by uric acid crystals [1]."
    assert body["usage"] == {"prompt_tokens": 39, "completion_tokens": 9, "total_tokens": 48}


# ---- a managed server never outlives medtune ---------------------------------------------------

def test_a_managed_server_dies_with_its_parent(tmp_path):
    """SIGKILL the process that started it (no cleanup runs): the kernel stops the child too."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from medtune.engines.managed import ManagedServer
        server = ManagedServer("sleeper", lambda port, key: [sys.executable, "-c", "import time; time.sleep(600)"],
                               Path({str(tmp_path / 'log')!r}), startup_timeout=600)
        import threading
        threading.Thread(target=server.start, daemon=True).start()
        while server.process is None:
            time.sleep(0.01)
        print(server.process.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent (init here) has not reaped it yet


# ---- the same behaviour on every engine ------------------------------------------------------

ENGINES = ["transformers", "llama.cpp", "openai"]


def llama_server_or_skip():
    from medtune.engines.llamacpp import llama_server_binary
    from medtune.engines.managed import EngineSetupError

    try:
        return llama_server_binary(build=False)
    except EngineSetupError as exc:  # scripts/setup.sh builds it wherever cmake and a compiler exist (CI does)
        pytest.skip(str(exc))


@pytest.fixture(scope="module", params=ENGINES)
def engine_client(request, index_dir, tmp_path_factory):
    """medtune serve over the offline SmolLM2-135M-Instruct, grounded in the small index, on each engine;
    `openai` is a bare llama-server medtune did not start (it only knows its URL and key)."""
    from medtune import DEFAULT_MODEL
    from medtune.engines.llamacpp import llama_server_command
    from medtune.engines.managed import ManagedServer
    from medtune.quantize.convert import cached_gguf
    from medtune.serve import create_app
    from medtune.serve.config import config_from_dict

    kind, bare = request.param, None
    engine = {"kind": kind}
    if kind == "llama.cpp":
        llama_server_or_skip()
        engine |= {"parallel": 2, "context": 2048}
    if kind == "openai":
        llama_server_or_skip()
        bare = ManagedServer("llama-server", llama_server_command(cached_gguf(DEFAULT_MODEL), parallel=2, context=2048),
                             tmp_path_factory.mktemp("logs") / "bare.log")
        bare.start()
        os.environ["BARE_LLAMA_KEY"] = bare.key
        engine |= {"url": bare.url, "upstream_model": "bare", "api_key_env": "BARE_LLAMA_KEY"}
    config = config_from_dict({"models": {"med": {"model": DEFAULT_MODEL, "index": index_dir, "k": 2, "engine": engine,
                                                  "generation": {"max_new_tokens": 24}}},
                               "limits": {"max_message_chars": 100_000}})
    app = create_app(config)
    try:
        with TestClient(app, base_url="http://localhost") as client:
            yield kind, client, app
    finally:
        if bare is not None:
            bare.close()
            del os.environ["BARE_LLAMA_KEY"]


def ask(client, question: str, **body):
    return client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": question}],
                                                    "temperature": 0} | body)


def test_grounded_answers_are_the_same_on_every_engine(engine_client):
    kind, client, _ = engine_client
    r = ask(client, "What causes gout?")
    assert r.status_code == 200, r.text
    body = r.json()
    text, med, use = body["choices"][0]["message"]["content"], body["medtune"], body["usage"]
    assert med["sources"][0]["id"] == "gout-1" and "[1] Gout — https://www.niams.nih.gov/health-topics/gout" in text
    assert text.startswith(med["answer"]) and med["answer"] and text.rstrip().endswith(med["safety"]["notice"])
    assert med["support"] and all(0 <= s["score"] <= 1 for s in med["support"])  # the support check ran on its text
    assert use["prompt_tokens"] > 50 and 0 < use["completion_tokens"] <= 24  # the sources are in the prompt
    assert use["total_tokens"] == use["prompt_tokens"] + use["completion_tokens"]

    streamed = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "What causes gout?"}],
                                                         "temperature": 0, "stream": True,
                                                         "stream_options": {"include_usage": True}})
    events = [json.loads(e.removeprefix("data: ")) for e in streamed.text.split("\n\n") if e and e != "data: [DONE]"]
    deltas = [e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]]
    # The deltas make up the answer the final chunk describes. (Not necessarily the non-streamed text:
    # llama.cpp's greedy decoding may differ once its prompt cache holds the sources.)
    final = next(e["medtune"] for e in events if "medtune" in e and "text" in e["medtune"])
    assert "".join(deltas) == final["text"] and final["sources"] == med["sources"], kind
    assert len([d for d in deltas if d]) > 3 and events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0


def test_safety_is_the_same_on_every_engine(engine_client):
    _, client, _ = engine_client
    refused = ask(client, "Should I double my insulin dose?").json()
    assert refused["medtune"]["reason"] == "refused" and refused["usage"]["completion_tokens"] == 0
    emergency = ask(client, "I have wheezing and chest tightness right now, is it asthma?").json()
    text = emergency["choices"][0]["message"]["content"]
    assert text.startswith("If this is happening now") and emergency["usage"]["completion_tokens"] > 0


def test_an_over_long_prompt_is_a_400_on_every_engine(engine_client):
    _, client, _ = engine_client
    r = ask(client, "gout " * 9000)  # past SmolLM2's 8,192 positions, and past a llama.cpp slot
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text[:300]
    assert ask(client, "What causes gout?").status_code == 200  # and the engine still answers


@pytest.fixture
def llama_app():
    llama_server_or_skip()
    from medtune import DEFAULT_MODEL
    from medtune.serve import create_app
    from medtune.serve.config import config_from_dict

    config = config_from_dict({"models": {"med": {"model": DEFAULT_MODEL, "grounding": False, "safety": False,
                                                  "engine": {"kind": "llama.cpp", "parallel": 1, "context": 512}}}})
    return create_app(config)


def test_llama_server_is_restarted_once(llama_app):
    with TestClient(llama_app, base_url="http://localhost") as client:
        engine = llama_app.state.models["med"].engine
        server, url, first = engine.server, engine.url, engine.server.process.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while engine.url == url and time.monotonic() < deadline:  # the new one is ready and in use
            time.sleep(0.1)
        assert server.restarts == 1 and server.process.pid != first and server.alive()
        assert ask(client, "What causes gout?", max_tokens=4).status_code == 200  # served by the new one
        os.kill(server.process.pid, signal.SIGKILL)  # a second death is final: a clear 503, not a restart loop
        time.sleep(3)
        assert server.restarts == 1 and not server.alive()
        r = ask(client, "What causes gout?", max_tokens=4)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"


def test_llama_server_stops_with_medtune(llama_app):
    with TestClient(llama_app, base_url="http://localhost") as client:
        assert ask(client, "What causes gout?", max_tokens=4).status_code == 200
        pid = llama_app.state.models["med"].engine.server.process.pid
        assert _running(pid)
    assert not _running(pid)  # the app's shutdown stopped it


def test_ask_and_eval_on_the_llama_cpp_engine(tmp_path, capsys, monkeypatch):
    """`--engine llama.cpp` answers through llama-server; eval's perplexity still comes from transformers; one
    llama-server answers every generation task of an eval."""
    llama_server_or_skip()
    import medtune.engines as engines
    from medtune import DEFAULT_MODEL
    from medtune.cli import main

    main(["ask", "What causes gout?", "--model", DEFAULT_MODEL, "--engine", "llama.cpp", "--max-new-tokens", "16", "--json"])
    answer = json.loads(capsys.readouterr().out)
    assert answer["answer"] and answer["reason"] == "no_index" and answer["text"].endswith(answer["safety"]["notice"])

    medquad = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (medquad / "medquad").is_dir():
        pytest.skip("no ../shared/data/medquad")
    medtext = tmp_path / "medtext.csv"  # MedText's published columns; the task scores the held-out 5%
    medtext.write_text("Prompt,Completion\n" + "".join(f'"A {20 + i}-year-old with {c}, what now?","See a doctor about the {c}."\n'
                                                        for i in range(40) for c in ("a rash", "a cough")))
    made = []
    real_make = engines.make_engine
    monkeypatch.setattr(engines, "make_engine", lambda *a, **k: made.append(a) or real_make(*a, **k))
    main(["eval", DEFAULT_MODEL, "--tasks", f"medquad,medtext={medtext}", "--limit", "4", "--data-dir", str(medquad),
          "--out", str(tmp_path / "ev"), "--engine", "llama.cpp"])
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    task = report["tasks"]["medquad"]
    assert report["settings"]["engine"] == "llama.cpp" and task["n"] == 4 and report["tasks"]["medtext"]["n"] == 4
    assert len(made) == 1  # both tasks' questions went to one llama-server
    answered = [json.loads(line) for line in (tmp_path / "ev" / "items" / "medtext.jsonl").read_text().splitlines()]
    assert len(answered) == 4 and all(p["prediction"] for p in answered)
    assert task["metrics"]["rougeL"] > 0 and task["metrics"]["perplexity"] > 1
    predictions = [json.loads(line) for line in (tmp_path / "ev" / "items" / "medquad.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 and all(p["prediction"] for p in predictions)


def test_engine_flags(monkeypatch, capsys):
    import medtune.serve as serve_module
    from medtune.cli import main

    seen = []
    monkeypatch.setattr(serve_module, "serve_from_args", lambda *a, **k: seen.append(k["engine"]))
    main(["serve", "--model", "runs/x", "--engine-url", "http://127.0.0.1:11434/v1", "--engine-model", "my-run"])
    assert seen[-1].model_dump(exclude_defaults=True) == {"kind": "openai", "url": "http://127.0.0.1:11434/v1",
                                                          "upstream_model": "my-run"}
    main(["serve", "--model", "runs/x"])
    assert seen[-1] is None
    with pytest.raises(SystemExit, match="--engine openai: kind openai needs url"):
        main(["serve", "--engine", "openai"])
    with pytest.raises(SystemExit, match="url, upstream_model and api_key_env are for kind openai"):
        main(["serve", "--engine", "llama.cpp", "--engine-url", "http://x/v1"])


def test_requests_in_flight_are_counted_back_however_they_end(upstream):
    """The upstream engine bounds requests in flight (llama-server queues without bound): each one must
    leave the count when it ends — streamed to the end, refused, or cancelled."""
    url, _ = upstream

    async def run():
        engine = UpstreamEngine(url, "ollama_stream.txt", max_pending=2)
        try:
            for _ in range(5):  # more than max_pending, one after another: none may be refused as busy
                await engine.complete([{"role": "user", "content": "q"}], max_tokens=8)
            engine.model = "vllm_context_400.json@400"  # the replay answers by model name: now a refusal
            with pytest.raises(ContextTooLong):
                await engine.submit([{"role": "user", "content": "q"}])
            engine.model = "ollama_stream.txt"
            job = await engine.submit([{"role": "user", "content": "q"}], max_tokens=8)
            job.cancel()
            await asyncio.sleep(0.1)
            left = engine.pending
            # A request still waiting for the upstream's first byte is in flight too: the bound holds.
            engine.model = "slow:ollama_stream.txt"
            waiting = [asyncio.ensure_future(engine.complete([{"role": "user", "content": "q"}])) for _ in range(2)]
            await asyncio.sleep(0.3)
            with pytest.raises(EngineBusy):
                await engine.submit([{"role": "user", "content": "q"}])
            await asyncio.gather(*waiting)
            return left, engine.pending
        finally:
            await engine.close()

    assert asyncio.run(run()) == (0, 0)


def test_an_engine_reads_a_runs_prompting_and_a_ggufs_context(causal_recipe_dict, tmp_path):
    """Engines other than transformers take a run directory as well as a model id (`serve --model
    runs/x --engine llama.cpp`): its system prompt and tokenizer come from the run's adapter folder
    (there is no config.json at a run's top), the slot context from the GGUF llama.cpp serves."""
    import gguf

    from medtune.engines import DEFAULT_SLOT_CONTEXT, _prompting, slot_context
    from medtune.pipeline import run
    from medtune.recipe import recipe_from_dict

    causal_recipe_dict["train"] |= {"max_steps": 1}
    run_dir = run(recipe_from_dict(causal_recipe_dict), run_dir=tmp_path / "run")
    system, tokenizer = _prompting(str(run_dir), must_exist=True)
    assert system == "You answer medical questions." and "<|im_start|>" in tokenizer.all_special_tokens

    for length, expected in ((2048, 2048), (131072, DEFAULT_SLOT_CONTEXT)):
        path = tmp_path / f"ctx{length}.gguf"
        writer = gguf.GGUFWriter(path, "llama")
        writer.add_context_length(length)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        assert slot_context(path) == expected
