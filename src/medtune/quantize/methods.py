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
    packages: tuple[tuple[str, str], ...] = ()  # (import name, pip name) that must be installed
    calibration: bool = False  # needs calibration texts


METHODS = {
    m.name: m
    for m in (
        Method("int8", 8, "optimum-quanto", "weight-only int8 per output channel, runs on CPU",
               packages=(("optimum.quanto", "optimum-quanto"),)),
        Method("int4", 4, "optimum-quanto", "weight-only int4 in groups of up to 128 inputs, runs on CPU",
               packages=(("optimum.quanto", "optimum-quanto"),)),
        Method("gptq", 4, "gptqmodel", "GPTQ 4-bit, calibrated on N texts (CUDA)", cuda=True,
               packages=(("optimum", "optimum"), ("gptqmodel", "gptqmodel")), calibration=True),
        Method("bnb4", 4, "bitsandbytes", "bitsandbytes NF4 with double quantization, for inference (CUDA)", cuda=True,
               packages=(("bitsandbytes", "bitsandbytes"),)),
        Method("bnb8", 8, "bitsandbytes", "bitsandbytes LLM.int8(), for inference (CUDA)", cuda=True,
               packages=(("bitsandbytes", "bitsandbytes"),)),
        Method("gguf", 0, "llama.cpp", "GGUF for llama.cpp/Ollama: not done by medtune, prints the llama.cpp steps"),
    )
}

GGUF_HOWTO = """\
--method gguf: medtune does not write GGUF files. The converter is llama.cpp's convert_hf_to_gguf.py, which
is not published on PyPI (the `gguf` package there only reads and writes the file format). With llama.cpp:
  1. a full-precision model folder: a run's model/ folder, or `medtune merge-adapter RUN_DIR --out merged`
     for a LoRA/QLoRA run (a quantized medtune folder cannot be converted);
  2. git clone https://github.com/ggml-org/llama.cpp
     pip install -r llama.cpp/requirements/requirements-convert_hf_to_gguf.txt
     python llama.cpp/convert_hf_to_gguf.py MODEL_DIR --outtype f16 --outfile model-f16.gguf
  3. build llama.cpp (cmake -B build && cmake --build build --config Release), then
     build/bin/llama-quantize model-f16.gguf model-Q4_K_M.gguf Q4_K_M
  4. Ollama: a file `Modelfile` holding `FROM ./model-Q4_K_M.gguf`, then `ollama create NAME -f Modelfile`."""


def method_list() -> str:
    return "\n".join(f"  {m.name:5} {m.summary}" for m in METHODS.values())


def check_method(name: str) -> Method:
    """The method called `name`, if this machine can run it; otherwise an error saying what to do."""
    method = METHODS.get(name)
    if method is None:
        raise QuantizeError(f"unknown quantization method {name!r}; methods:\n{method_list()}")
    if method.name == "gguf":
        raise QuantizeError(GGUF_HOWTO)
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
