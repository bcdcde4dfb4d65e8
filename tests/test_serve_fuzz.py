"""API fuzzing of `medtune serve`: every route, from its own OpenAPI schema (schemathesis), and hostile raw bodies.

Whatever a client sends, the server must not answer a 5xx, hang (every request has a deadline),
answer a status its schema does not document, or an error that is not `{"error": {...}}`. Bounded
for CI: a fixed number of examples per route, derandomized and without an example database, so
every run sends the same requests; no shrinking, which would re-run a failure many times.
"""

from __future__ import annotations

import copy
import json

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings, strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.python.asgi import get_client  # noqa: E402

from medtune.predict import Predictor  # noqa: E402
from medtune.serve import create_app, openapi  # noqa: E402
from medtune.serve.config import config_from_dict  # noqa: E402

KEY = "fuzz-key"
NAMES = ["tiny", "med"]  # plain chat, and grounded on a small index
TIMEOUT_S = 20  # per request; a request still unanswered by then is a hang
MAX_BYTES = 20_000  # limits.max_request_bytes, low so that bodies over it are cheap to send
FUZZ = settings(max_examples=50, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck))
CHECKS = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
          schemathesis.checks.content_type_conformance, schemathesis.checks.response_schema_conformance]
# Not negative_data_rejection nor positive_data_acceptance: the schema is looser than the server in
# both directions (the last message must be the user's and max_tokens is capped by the config; content
# may also be a list of text parts), so a 400 for "valid" data or a 200 for "invalid" data is no bug.

ROUTES = [("GET", "/health"), ("GET", "/v1/models"), ("GET", "/v1/models/{name}"),
          ("POST", "/v1/chat/completions"), ("POST", "/v1/retrieve")]
# app.py's GET routes document no errors (only the POST routes take openapi.py's `openapi_extra`): added here.
GET_ERRORS = {"/v1/models": (401,), "/v1/models/{name}": (401, 404)}


@pytest.fixture(scope="module")
def predictor(tiny_llama) -> Predictor:
    return Predictor.from_pretrained(tiny_llama)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> str:
    index = pytest.importorskip("medtune.rag.index")
    from medtune.rag.passages import Passage

    passages = [Passage(id="gout-1", title="Gout", url="https://example.org/gout", source="test", lang="en",
                        text="Gout is a form of arthritis caused by too much uric acid in the blood."),
                Passage(id="asthma-1", title="Asthma", url="https://example.org/asthma", source="test", lang="en",
                        text="Asthma is a chronic lung disease. Symptoms include wheezing and coughing.")]
    return str(index.build_index(passages, tmp_path_factory.mktemp("fuzz-index") / "idx", progress=False))


@pytest.fixture(scope="module", params=[None, KEY], ids=["open", "keyed"])
def api(request, predictor, index_dir):
    """The schema of an app serving both models, without or with an API key; it answers in-process."""
    generation = {"max_new_tokens": 4}
    config = config_from_dict({
        "models": {"tiny": {"model": "unused", "grounding": False, "generation": generation},
                   "med": {"model": "unused", "index": index_dir, "k": 2, "generation": generation}},
        "api_key": request.param,
        "limits": {"max_tokens": 8, "max_request_bytes": MAX_BYTES, "timeout_s": TIMEOUT_S / 2},
        "batching": {"batch_wait_ms": 0}, "default_model": "med",
        "allowed_hosts": ["testserver"],  # the Host schemathesis' and starlette's test clients send
    })
    app = create_app(config, predictors={name: predictor for name in NAMES})
    raw = copy.deepcopy(app.openapi())  # app.openapi() is the app's own cached copy
    for path, statuses in GET_ERRORS.items():
        raw["paths"][path]["get"]["responses"] |= openapi.error_responses(*statuses)
    schema = schemathesis.openapi.from_dict(raw)
    schema.app = app
    return schema, request.param


def test_openapi_documents_the_request_bodies(api):
    schema, _ = api
    text = json.dumps(schema.raw_schema)
    assert "$defs" not in text and "#/$defs" not in text  # openapi.py inlined them
    body = schema.raw_schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["required"] and body["content"]["application/json"]["schema"]["properties"]["messages"]["items"]["properties"]["role"]["enum"]


def auth_headers(key: str | None):
    """With a key configured, mostly the right one, sometimes a wrong or no header (a 401)."""
    if key is None:
        return st.just({})
    return st.sampled_from([{"Authorization": f"Bearer {key}"}] * 2 + [{"Authorization": "Bearer wrong"}, {}])


def aim(case, name: str | None):
    """Generated model names are almost never served ones (a 404 before any work): aim most cases at one."""
    if name is not None:
        if isinstance(case.body, dict) and isinstance(case.body.get("model", ""), str):
            case.body["model"] = name
        if case.path_parameters and "name" in case.path_parameters:
            case.path_parameters["name"] = name
    return case


def operations():
    """Each route with valid inputs; the POST routes with invalid bodies too (a GET has no body, and any path
    segment is a valid model name)."""
    for method, path in ROUTES:
        for mode in [GenerationMode.POSITIVE] + [GenerationMode.NEGATIVE] * (method == "POST"):
            yield pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")


@pytest.mark.parametrize("method, path, mode", list(operations()))
def test_route(api, method, path, mode):
    schema, key = api
    operation = schema[path][method]
    cases = st.builds(aim, operation.as_strategy(generation_mode=mode), st.sampled_from(NAMES + [None]))

    @FUZZ
    @given(case=cases, headers=auth_headers(key))
    def run(case, headers):
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=TIMEOUT_S)

    run()


def test_an_empty_prompt_found_by_the_fuzzer_is_a_400(api):
    # A model without a chat template got no input token from it, and generate failed: a 500.
    schema, key = api
    body = {"model": "tiny", "messages": [{"role": "user", "content": ""}]}
    with get_client(schema.app) as client:
        r = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"} if key else {},
                        timeout=TIMEOUT_S)
    assert r.status_code == 400, r.text[:500]


# ---- what the schema cannot generate: bodies that are not JSON, or not sent as JSON ----------------

GOOD = {"messages": [{"role": "user", "content": "What causes gout?"}], "max_tokens": 4}
hostile_bodies = st.one_of(
    st.binary(max_size=300),
    st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                 max_leaves=20).map(lambda v: json.dumps(v).encode()),
    st.integers(1, 200_000).map(lambda n: b'{"messages": ' + b"[" * n + b"]" * n + b"}"),  # nested deeper than the parser's stack
    st.integers(MAX_BYTES - 200, MAX_BYTES + 200).map(lambda n: json.dumps(GOOD | {"pad": "x" * n}).encode()),  # about the limit
    st.sampled_from([1e-40, 5e-324, 1e308]).map(lambda t: json.dumps(GOOD | {"temperature": t}).encode()),
    st.builds(lambda name, stream: json.dumps(GOOD | {"model": name, "stream": stream}).encode(),
              st.sampled_from(NAMES), st.booleans()),
)
content_types = st.sampled_from([None, "application/json", "text/plain", "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x", "application/json; charset=latin-1", "application/json-patch+json"])


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/retrieve"])
def test_hostile_raw_bodies(api, path):
    schema, key = api

    @FUZZ
    @given(body=hostile_bodies, content_type=content_types, headers=auth_headers(key))
    def run(body, content_type, headers):
        headers = headers | ({"Content-Type": content_type} if content_type else {})
        with get_client(schema.app) as client:
            r = client.post(path, data=body, headers=headers, timeout=TIMEOUT_S)
        assert r.status_code < 500, r.text[:500]
        if r.status_code != 200:
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text[:500]

    run()


def test_chat_page_takes_any_query(api):
    schema, _ = api

    @FUZZ
    @given(query=st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=30), max_size=3))
    def run(query):
        with get_client(schema.app) as client:
            r = client.get("/", params=query, timeout=TIMEOUT_S)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")

    run()
