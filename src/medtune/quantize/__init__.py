"""Quantization: int8/int4 weight-only on CPU (optimum-quanto), GPTQ and bitsandbytes on CUDA, size and
perplexity reports against the source; GGUF for llama.cpp/Ollama through llama.cpp's own converter (quantize.gguf)."""

from medtune.quantize.convert import quantize
from medtune.quantize.methods import METHODS, QuantizeError, check_method

__all__ = ["METHODS", "QuantizeError", "check_method", "quantize"]
