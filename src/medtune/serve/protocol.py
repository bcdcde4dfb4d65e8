"""The OpenAI wire format: request bodies, error objects, completion and chunk objects."""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class APIError(Exception):
    """Answered as `{"error": {"message", "type", "param", "code"}}` with `status`."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# Request bodies ignore fields they do not know: OpenAI clients send many optional ones
# (user, seed, presence_penalty, …). Fields that would change the answer and that this
# server cannot honour (n > 1, stop) are refused instead of silently dropped.
class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Message(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, content):
        if isinstance(content, list):  # [{"type": "text", "text": …}, …]: the text parts, in order
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise ValueError("only text content parts are supported")
            return "".join(p["text"] for p in content)
        return content

    def as_dict(self) -> dict:
        # "developer" is OpenAI's newer name for the system role; chat templates know only "system".
        return {"role": "system" if self.role == "developer" else self.role, "content": self.content}


class StreamOptions(_Request):
    include_usage: bool = False


class ChatRequest(_Request):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)  # OpenAI's newer name for max_tokens
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    stop: None = Field(None, description="stop sequences are not supported")

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[Message]) -> list[Message]:
        if messages[-1].role != "user":
            raise ValueError("the last message must have role 'user' (it is the question answered)")
        return messages


class RetrieveRequest(_Request):
    query: str = Field(min_length=1)
    k: int = Field(5, gt=0, le=100)
    model: str | None = Field(None, description="whose index to search (default: the default model)")


def parse_body(raw: bytes, schema: type[_Request]) -> _Request:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, "the request body is not valid JSON", code="invalid_json") from None
    except RecursionError:  # thousands of nested brackets: the parser's own stack runs out
        raise APIError(400, "the request body is nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        # Strict: "5" is not a number and "yes" not a boolean; a client sending them has a bug to hear about.
        return schema.model_validate(data, strict=True)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = "required" if first["type"] == "missing" else first["msg"]
        raise APIError(400, f"{param}: {message}" if param else message, param=param,
                       code="missing_required_parameter" if first["type"] == "missing" else "invalid_value") from None


class Reply:
    """Builds the objects of one chat completion (shared id and timestamp across its chunks)."""

    def __init__(self, model: str):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def _base(self, object: str) -> dict:
        return {"id": self.id, "object": object, "created": self.created, "model": self.model}

    def completion(self, text: str, finish_reason: str, usage: dict, medtune: dict | None) -> dict:
        body = self._base("chat.completion") | {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
            "usage": usage,
        }
        return body | ({"medtune": medtune} if medtune is not None else {})

    def chunk(self, delta: dict, finish_reason: str | None = None, **extra) -> dict:
        return self._base("chat.completion.chunk") | {
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]} | extra

    def usage_chunk(self, usage: dict) -> dict:
        return self._base("chat.completion.chunk") | {"choices": [], "usage": usage}


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
