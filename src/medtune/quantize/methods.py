"""The quantization methods and what each needs; anything that cannot run here is refused before weights load."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch


class QuantizeError(ValueError):
    """A quantization request that cannot be carried out here (unknown method, missing GPU or library)."""


@dataclass(frozen=True)
class Method:
    name: str
    bits: int
    library: str  # what does the work
    summary: str
    cuda: bool = False  # needs a CUDA GPU
    format: str = "quanto"  # how the result is saved and loaded back: quanto, transformers (save_pretrained), gguf
    packages: tuple[tuple[str, str], ...] = ()  # (import name, pip name) that must be installed
    calibration: bool = False  # needs calibration texts


METHODS = {
    m.name: m
    for m in (
        Method("int8", 8, "optimum-quanto", "weight-only int8 per output channel, runs on CPU",
               packages=(("optimum.quanto", "optimum-quanto"),)),
        Method("int4", 4, "optimum-quanto", "weight-only int4 in groups of up to 128 inputs, runs on CPU",
               packages=(("optimum.quanto", "optimum-quanto"),)),
        Method("gptq", 4, "gptqmodel", "GPTQ 4-bit, calibrated on N texts (CUDA)", cuda=True, format="transformers",
               packages=(("optimum", "optimum"), ("gptqmodel", "gptqmodel")), calibration=True),
        Method("bnb4", 4, "bitsandbytes", "bitsandbytes NF4 with double quantization, for inference (CUDA or CPU)",
               format="transformers",
               packages=(("bitsandbytes", "bitsandbytes"),)),
        Method("bnb8", 8, "bitsandbytes", "bitsandbytes LLM.int8(), for inference (CUDA or CPU)",
               format="transformers",
               packages=(("bitsandbytes", "bitsandbytes"),)),
        # bits: the --gguf-type's (medtune.quantize.gguf); llama.cpp's converter runs from a folder, not PyPI
        Method("gguf", 0, "llama.cpp", "GGUF file for llama.cpp/Ollama (--gguf-type f16, bf16, q8_0; k-quants with llama-quantize)",
               format="gguf"),
    )
}


def method_list() -> str:
    return "\n".join(f"  {m.name:5} {m.summary}" for m in METHODS.values())


def check_method(name: str) -> Method:
    """The method called `name`, if this machine can run it; otherwise an error saying what to do."""
    method = METHODS.get(name)
    if method is None:
        raise QuantizeError(f"unknown quantization method {name!r}; methods:\n{method_list()}")
    if method.cuda and not torch.cuda.is_available():
        raise QuantizeError(
            f"--method {name} ({method.library}) needs a CUDA GPU and this machine has none. "
            "On a CPU use --method int4 or --method int8 (optimum-quanto), or run this on a GPU."
        )
    missing = [pip for module, pip in method.packages if not _installed(module)]
    if missing:
        raise QuantizeError(f"--method {name} needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    return method


def _installed(module: str) -> bool:
    try:  # find_spec("a.b") imports "a" and raises when "a" itself is missing
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
