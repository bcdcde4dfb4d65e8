"""OpenAPI for what FastAPI cannot see: the request bodies and error answers of the POST routes.

The POST routes read their raw body themselves (parse_body: a size limit while reading, strict
types, OpenAI-shaped errors), so FastAPI's generated schema has no request body for them. Each
route's `openapi_extra` adds it, from the same pydantic models that validate it, with the errors
the route answers, so that client generators and the API fuzzer (tests/test_serve_fuzz.py) know
what to send and what may come back.
"""

from __future__ import annotations

from pydantic import BaseModel

from medtune.serve.protocol import ChatRequest, RetrieveRequest

# protocol.APIError.body()
ERROR_BODY = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}},
    }},
}

ERRORS = {
    400: "the body is not JSON, not an object, or has a wrong field, type or value; the prompt does not fit "
         "the model's context (code context_length_exceeded)",
    401: "the server has an API key and the request did not send it (Authorization: Bearer KEY)",
    404: "no such model",
    408: "the body did not arrive within limits.body_timeout_s",
    413: "the body is larger than limits.max_request_bytes",
    415: "the body is not sent as Content-Type: application/json",
    429: "the queue is full (batching.max_queue); retry after the Retry-After header's seconds",
    500: "an internal error; its cause is in the server's log under the log id the message quotes",
    503: "the generation server the model runs on cannot be reached",
    504: "no complete answer within limits.timeout_s",
}


def error_responses(*statuses: int) -> dict:
    return {str(s): {"description": ERRORS[s], "content": {"application/json": {"schema": ERROR_BODY}}} for s in statuses}


def inline_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema with its `$defs` inlined: `openapi_extra` belongs to one operation and
    cannot add components. (The request models are not recursive, so inlining ends.)"""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            # A `$ref` may have siblings (a description): they are kept beside the referenced schema.
            target = resolve(defs[node["$ref"].removeprefix("#/$defs/")]) if "$ref" in node else {}
            return target | {k: resolve(v) for k, v in node.items() if k != "$ref"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def json_route(model: type[BaseModel], errors: tuple[int, ...], *, streams: bool = False) -> dict:
    """`openapi_extra` for a route that reads `model` from a JSON body and answers JSON (or SSE when it `streams`)."""
    ok = {"application/json": {"schema": {"type": "object"}}}
    if streams:
        # Each server-sent event (OpenAPI 3.2's itemSchema): JSON chunks, an error object, then [DONE].
        ok["text/event-stream"] = {"itemSchema": {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(model)}}},
            "responses": {"200": {"description": "Successful Response", "content": ok}} | error_responses(*errors)}


CHAT_COMPLETIONS = json_route(ChatRequest, (400, 401, 404, 408, 413, 415, 429, 500, 503, 504), streams=True)
RETRIEVE = json_route(RetrieveRequest, (400, 401, 404, 408, 413, 415, 500))
