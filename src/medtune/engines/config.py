"""Which engine generates, as a serve config's `models.NAME.engine` or `--engine` on the command line."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EngineConfig(BaseModel):
    """What generates: transformers in this process (the default), llama.cpp's or vLLM's server run
    by medtune, or any OpenAI-compatible server (`openai`: vLLM, TGI, Ollama, a llama-server elsewhere)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["transformers", "llama.cpp", "vllm", "openai"] = "transformers"
    url: str | None = Field(None, description="openai: the upstream's base URL, e.g. http://gpu-box:8000/v1")
    upstream_model: str | None = Field(None, description="openai: the model name the upstream serves "
                                                         "(default: this model's `model`)")
    api_key_env: str | None = Field(None, description="openai: the environment variable holding the upstream's key")
    parallel: int = Field(8, gt=0, description="llama.cpp and vllm: sequences generated at once")
    context: int | None = Field(None, gt=0, description="llama.cpp: tokens per sequence (default: the model's "
                                                        "context, at most 4096)")
    gguf_type: Literal["q8_0", "f16", "bf16", "q4_k_m", "q5_k_m", "q6_k"] = Field(
        "q8_0", description="llama.cpp: the GGUF the model is converted to (once, cached)")
    threads: int | None = Field(None, gt=0, description="llama.cpp: CPU threads (default: llama.cpp's choice)")
    connect_timeout_s: float = Field(5.0, gt=0)
    retries: int = Field(2, ge=0, description="new attempts after a connection error")

    @model_validator(mode="after")
    def _openai_needs_url(self) -> "EngineConfig":
        if self.kind == "openai" and not self.url:
            raise ValueError("kind openai needs url: the upstream's base URL (…/v1)")
        if self.kind != "openai" and (self.url or self.upstream_model or self.api_key_env):
            raise ValueError(f"url, upstream_model and api_key_env are for kind openai, not {self.kind}")
        return self
