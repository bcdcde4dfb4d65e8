"""The serve config: which models answer under which names, and the server's limits.

Model names map only to what this file lists: a request names a model, never a path, so a
client cannot make the server load anything it was not configured with.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medtune.io import read_yaml_mapping
from medtune.engines.config import EngineConfig
from medtune.recipe import GenerationConfig, RecipeError, format_errors


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ServeConfigError(RecipeError):
    """A serve config that cannot run; the message names the file and the field (the CLI prints it)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServeGeneration(GenerationConfig):
    # Beam search cannot stream, and a server streams every request.
    num_beams: Literal[1] = 1


class ServedModelConfig(_Strict):
    model: str = Field(description="run directory, model directory or hub id")
    index: str | None = Field(None, description="retrieval index directory that grounds the answers")
    reranker: str | None = Field(None, description="cross-encoder that re-ranks the index's top 20 (a train.objective: "
                                                   "reranker run, a model folder or hub id)")
    k: int = Field(4, gt=0, description="passages given to the model")
    grounding: bool = Field(True, description="false: no retrieval; answers say they come from the model alone")
    safety: bool = Field(True, description="false: no emergency advice, no refusals, no notice (research use; "
                                           "logged at startup)")
    engine: EngineConfig = EngineConfig()
    generation: ServeGeneration = ServeGeneration()

    @model_validator(mode="after")
    def _reranker_needs_index(self) -> ServedModelConfig:
        if self.reranker and not self.index:
            raise ValueError("reranker re-ranks what the index finds: give an index too")
        return self


class Limits(_Strict):
    max_request_bytes: int = Field(1_000_000, gt=0)
    max_tokens: int = Field(1024, gt=0, description="largest max_tokens a request may ask for")
    max_messages: int = Field(64, gt=0, description="most messages in one conversation")
    max_message_chars: int = Field(32_000, gt=0, description="most characters in one message")
    max_context_tokens: int | None = Field(None, gt=0, description="prompt + max_tokens limit (default: the model's "
                                                                  "context, from its config)")
    timeout_s: float = Field(120.0, gt=0, description="per request, queueing, safety check and retrieval included")
    body_timeout_s: float = Field(10.0, gt=0, description="time to receive a request's whole body")
    max_connections: int = Field(256, gt=0, description="open connections; more are answered 503 at once")


class Batching(_Strict):
    max_batch_size: int = Field(16, gt=0)
    batch_wait_ms: float = Field(15.0, ge=0, description="how long the first request waits for others to join its batch")
    max_queue: int = Field(64, gt=0, description="requests waiting beyond the running batch; more get 429")


class ServeConfig(_Strict):
    models: dict[str, ServedModelConfig] = Field(min_length=1)
    default_model: str | None = Field(None, description="used when a request names no model (default: the first)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, description="require Authorization: Bearer KEY (default: $MEDTUNE_API_KEY); "
                                                  "prefer api_key_file or the variable: a key in a config or on "
                                                  "the command line is seen by others")
    api_key_file: str | None = Field(None, description="a file holding the key (default: $MEDTUNE_API_KEY_FILE)")
    allow_no_key: bool = Field(False, description="serve without a key on an address other than loopback")
    allowed_hosts: list[str] | None = Field(None, description="Host headers accepted (default: loopback names when "
                                                              "bound to loopback, any otherwise)")
    limits: Limits = Limits()
    batching: Batching = Batching()

    @field_validator("api_key")
    @classmethod
    def _no_blank_key(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("an empty API key would lock nobody out; leave it unset instead")
        return v

    @model_validator(mode="after")
    def _default_is_served(self) -> "ServeConfig":
        if self.default_model is None:
            self.default_model = next(iter(self.models))
        elif self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not one of models: {sorted(self.models)}")
        return self

    def resolved_api_key(self) -> str | None:
        """The key from the config, $MEDTUNE_API_KEY, or the key file (config, then $MEDTUNE_API_KEY_FILE)."""
        if key := self.api_key or os.environ.get("MEDTUNE_API_KEY"):
            return key
        path = self.api_key_file or os.environ.get("MEDTUNE_API_KEY_FILE")
        if not path:
            return None
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ServeConfigError(f"{path}: cannot read the API key file ({exc.__class__.__name__})") from None
        if not key:
            raise ServeConfigError(f"{path}: the API key file is empty")
        return key

    @property
    def on_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")

    def hosts(self) -> list[str]:
        """Host header values accepted: a keyless local server must not be readable through DNS rebinding."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        return ["localhost", "127.0.0.1", "[::1]", "::1", self.host] if self.on_loopback else ["*"]


def config_from_dict(data: dict, origin: str = "serve config") -> ServeConfig:
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as err:
        raise ServeConfigError(format_errors(err, origin, "serve config")) from None


def load_config(path: str | os.PathLike) -> ServeConfig:
    return config_from_dict(read_yaml_mapping(path, "serve config", ServeConfigError), origin=str(path))
