"""GGUF files for llama.cpp and Ollama, written by llama.cpp's own converter (convert_hf_to_gguf.py).

The converter is not a PyPI module, so it runs as a subprocess from a llama.cpp folder: one made by
scripts/get_llama_cpp.sh (from the llama-cpp-python sdist, which vendors it) or a llama.cpp checkout.
It writes f16, bf16 and q8_0 itself; k-quants such as q4_k_m need llama.cpp's compiled llama-quantize.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from medtune.models import cache_dir
from medtune.quantize.methods import QuantizeError

CONVERTER = "convert_hf_to_gguf.py"
CONVERTER_TYPES = ("f16", "bf16", "q8_0")
LLAMA_QUANTIZE_TYPES = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_0", "q4_1", "q4_k_s", "q4_k_m",
                        "q5_0", "q5_1", "q5_k_s", "q5_k_m", "q6_k")


@dataclass(frozen=True)
class GgufPlan:
    outtype: str
    llama_cpp: Path  # the folder holding convert_hf_to_gguf.py
    llama_quantize: str | None  # the llama-quantize binary, for k-quants
    version: str  # of the converter: the sdist it came from, or `git describe` of a checkout

    @property
    def file(self) -> str:
        return f"model-{self.outtype.upper()}.gguf"

    @property
    def tools(self) -> str:
        return CONVERTER + (" + llama-quantize" if self.outtype in LLAMA_QUANTIZE_TYPES else "")


def check_gguf(outtype: str, llama_cpp: str | Path | None = None) -> GgufPlan:
    """What converts to `outtype` here; refused (with how to get the converter) before any weights load."""
    outtype = outtype.lower()
    if outtype not in CONVERTER_TYPES + LLAMA_QUANTIZE_TYPES:
        raise QuantizeError(f"--gguf-type {outtype}: choose {', '.join(CONVERTER_TYPES)} (the converter), "
                            f"or with llama.cpp's llama-quantize {', '.join(LLAMA_QUANTIZE_TYPES)}")
    default = cache_dir() / "llama.cpp"
    folder = Path(llama_cpp or os.environ.get("LLAMA_CPP_DIR") or default).expanduser()
    if not (folder / CONVERTER).is_file():
        raise QuantizeError(
            f"--method gguf needs llama.cpp's {CONVERTER}, and {folder} does not hold it. Either\n"
            f"  bash scripts/get_llama_cpp.sh    (in medtune's repository: takes it from the llama-cpp-python "
            f"sdist on PyPI into {default}), or\n"
            "  git clone https://github.com/ggml-org/llama.cpp  and pass --llama-cpp llama.cpp (or set LLAMA_CPP_DIR)."
        )
    built = folder / "build" / "bin" / "llama-quantize"
    tool = str(built) if built.is_file() else shutil.which("llama-quantize")
    if outtype in LLAMA_QUANTIZE_TYPES and tool is None:
        raise QuantizeError(
            f"--gguf-type {outtype} needs llama.cpp's llama-quantize, which is neither in {folder}/build/bin nor on "
            f"PATH. Build it in a llama.cpp checkout (cmake -B build && cmake --build build --config Release --target "
            f"llama-quantize) and pass --llama-cpp CHECKOUT, or choose --gguf-type {', '.join(CONVERTER_TYPES)}."
        )
    return GgufPlan(outtype, folder, tool, _version(folder))


def _version(folder: Path) -> str:
    if (folder / "VERSION").is_file():  # written by scripts/get_llama_cpp.sh
        return (folder / "VERSION").read_text().strip()
    if (folder / ".git").exists() and shutil.which("git"):
        git = subprocess.run(["git", "-C", str(folder), "describe", "--tags", "--always", "--dirty"],
                             check=False, capture_output=True, text=True)
        if git.returncode == 0:
            return f"llama.cpp {git.stdout.strip()}"
    return "unknown"


def write_gguf(plan: GgufPlan, source: Path, out_dir: Path, system: str | None = None) -> dict:
    """`source` (a full-precision model folder) as out_dir/plan.file, and an Ollama Modelfile next to it.
    Returns the model card's quantization details."""
    target = out_dir / plan.file
    if plan.outtype in CONVERTER_TYPES:
        _convert(plan, source, plan.outtype, target)
    else:  # llama.cpp's way to a k-quant: a 16-bit GGUF first, then llama-quantize
        f16 = out_dir / "model-F16.tmp.gguf"
        _convert(plan, source, "f16", f16)
        _run([plan.llama_quantize, f16, target, plan.outtype.upper()], "llama-quantize")
        f16.unlink()
    modelfile = f"FROM ./{plan.file}\n" + (f'SYSTEM """{system}"""\n' if system else "")
    (out_dir / "Modelfile").write_text(modelfile)
    return {"bits": int(re.search(r"\d+", plan.outtype)[0]), "file": plan.file, "outtype": plan.outtype, "converter": plan.tools}


def _convert(plan: GgufPlan, source: Path, outtype: str, target: Path) -> None:
    # The converter puts its own gguf-py first on sys.path: it needs that copy, not the PyPI `gguf` installed here.
    _run([sys.executable, plan.llama_cpp / CONVERTER, source, "--outtype", outtype, "--outfile", target], CONVERTER)


def _run(command: list, name: str) -> None:
    done = subprocess.run([str(c) for c in command], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-20:])
        raise QuantizeError(f"{name} failed (exit {done.returncode}):\n{tail}")


def gguf_sizes(path: Path) -> dict:
    """The file's size, and the bytes of its tensors: what llama.cpp holds in memory (it maps them as stored)."""
    from gguf import GGUFReader

    return {"weight_file_bytes": path.stat().st_size, "parameter_bytes": sum(int(t.n_bytes) for t in GGUFReader(path).tensors)}


def gguf_note(plan: GgufPlan) -> str:
    return (f"GGUF {plan.outtype} written by llama.cpp's {plan.tools} ({plan.version}); the file also holds the tokenizer "
            "and chat template. Its perplexity is measured on the file loaded back with transformers, dequantized to float32.")
