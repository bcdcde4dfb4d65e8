"""The serve config: which models answer under which names, and the server's limits.

Model names map only to what this file lists: a request names a model, never a path, so a
client cannot make the server load anything it was not configured with.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medtune.io import read_yaml_mapping
from medtune.recipe import GenerationConfig, RecipeError, format_errors


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
    k: int = Field(4, gt=0, description="passages given to the model")
    grounding: bool = Field(True, description="false: plain chat, no retrieval, no safety rules")
    generation: ServeGeneration = ServeGeneration()


class Limits(_Strict):
    max_request_bytes: int = Field(1_000_000, gt=0)
    max_tokens: int = Field(1024, gt=0, description="largest max_tokens a request may ask for")
    timeout_s: float = Field(120.0, gt=0, description="per request, queueing included")


class Batching(_Strict):
    max_batch_size: int = Field(16, gt=0)
    batch_wait_ms: float = Field(15.0, ge=0, description="how long the first request waits for others to join its batch")


class ServeConfig(_Strict):
    models: dict[str, ServedModelConfig] = Field(min_length=1)
    default_model: str | None = Field(None, description="used when a request names no model (default: the first)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, description="require Authorization: Bearer KEY (default: $MEDTUNE_API_KEY)")
    limits: Limits = Limits()
    batching: Batching = Batching()
    backend: Literal["transformers", "vllm"] = "transformers"

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
        return self.api_key or os.environ.get("MEDTUNE_API_KEY") or None


def config_from_dict(data: dict, origin: str = "serve config") -> ServeConfig:
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as err:
        raise ServeConfigError(format_errors(err, origin, "serve config")) from None


def load_config(path: str | os.PathLike) -> ServeConfig:
    return config_from_dict(read_yaml_mapping(path, "serve config", ServeConfigError), origin=str(path))
