"""llama.cpp as a generation engine: its own llama-server, built from source once, run by medtune.

llama-server is built from the llama.cpp that the llama-cpp-python sdist vendors (PyPI; the same
release scripts/get_llama_cpp.sh takes the GGUF converter from) and cached under
$MEDTUNE_CACHE/llama.cpp/build/bin, next to the converter, with llama-quantize (which also gives
`medtune quantize --method gguf` its k-quants). It is compiled for this machine's CPU, so the cache
belongs to one machine. The served model is medtune's own GGUF export
(medtune.quantize.gguf.cached_gguf). `llama_server_command` is what medtune.engines.managed runs, on loopback, with N
parallel slots (continuous batching).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from medtune.models import cache_dir
from medtune.engines.managed import EngineSetupError

log = logging.getLogger("medtune.engines")

LLAMA_CPP_PYTHON = "0.3.36"  # the sdist that vendors llama.cpp (as in scripts/get_llama_cpp.sh)
TARGETS = ("llama-server", "llama-quantize")
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=ON",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_APP=OFF",
    # No web UI (ours is medtune's page) and nothing fetched at build time: the build runs offline.
    "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF",
]


def bin_dir() -> Path:
    return cache_dir() / "llama.cpp" / "build" / "bin"


def llama_server_binary(build: bool = True) -> Path:
    """$LLAMA_SERVER, the cached build, llama-server on PATH, or (with `build`) a build made now."""
    if explicit := os.environ.get("LLAMA_SERVER"):
        if not Path(explicit).is_file():
            raise EngineSetupError(f"LLAMA_SERVER={explicit}: no such file")
        return Path(explicit)
    if (built := bin_dir() / "llama-server").is_file():
        return built
    if on_path := shutil.which("llama-server"):
        return Path(on_path)
    if not build:
        raise EngineSetupError("llama-server is not built yet: run `medtune serve` with the llama.cpp engine once, "
                               "or set LLAMA_SERVER to a llama-server binary")
    return build_llama_server()


def build_llama_server(jobs: int | None = None) -> Path:
    """Compile llama-server and llama-quantize into bin_dir() (minutes; once per machine)."""
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        raise EngineSetupError(
            f"building llama.cpp's server needs {' and '.join(missing)}, not found on PATH "
            "(Debian/Ubuntu: apt-get install cmake g++; macOS: xcode-select --install and brew install cmake), "
            "or set LLAMA_SERVER to a llama-server you already have")
    root = cache_dir() / "llama.cpp"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second medtune waits for the first build instead of racing it
        if (bin_dir() / "llama-server").is_file():
            return bin_dir() / "llama-server"
        log.info("building llama.cpp's llama-server from the llama-cpp-python %s sdist (once; a few minutes)",
                 LLAMA_CPP_PYTHON)
        with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp:
            source = _vendored_source(Path(tmp))
            build = Path(tmp) / "build"
            logfile = root / "build.log"
            generator = ["-G", "Ninja"] if shutil.which("ninja") else []
            _step(["cmake", "-S", source, "-B", build, *generator, *CMAKE_FLAGS], logfile)
            _step(["cmake", "--build", build, "--target", *TARGETS, "-j", str(jobs or os.cpu_count() or 2)], logfile)
            staging = Path(tmp) / "bin"
            staging.mkdir()
            for target in TARGETS:
                shutil.copy2(build / "bin" / target, staging / target)
            bin_dir().parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(bin_dir(), ignore_errors=True)  # ours: only medtune writes build/bin here
            os.replace(staging, bin_dir())
    log.info("llama-server built: %s", bin_dir() / "llama-server")
    return bin_dir() / "llama-server"


def _vendored_source(tmp: Path) -> Path:
    """llama.cpp's sources, from the sdist downloaded with pip (the package registry is all we need)."""
    download = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                               "-d", tmp, f"llama-cpp-python=={LLAMA_CPP_PYTHON}"], capture_output=True, text=True)
    if download.returncode != 0:
        raise EngineSetupError(f"cannot download the llama-cpp-python {LLAMA_CPP_PYTHON} sdist (it holds llama.cpp's "
                               f"sources): {download.stderr.strip()[-500:]}")
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    with tarfile.open(tmp / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz") as sdist:
        members = [m for m in sdist.getmembers() if m.name.startswith(prefix)]
        for m in members:
            m.name = m.name[len(prefix):]
        sdist.extractall(tmp / "llama.cpp", members=members, filter="data")
    return tmp / "llama.cpp"


def _step(command: list, logfile: Path) -> None:
    with open(logfile, "a") as out:
        done = subprocess.run([str(c) for c in command], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-15:]
        raise EngineSetupError(f"building llama.cpp failed ({command[0]} {command[1]}); the end of {logfile}:\n"
                               + "\n".join(tail))


def llama_server_command(gguf: Path, *, parallel: int, context: int, threads: int | None = None):
    """A ManagedServer command builder: `parallel` slots of `context` tokens each, the key read from a file."""
    binary = llama_server_binary()

    def command(port: int, keyfile: str) -> list[str]:
        args = [str(binary), "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                "--parallel", str(parallel), "--ctx-size", str(context * parallel), "--api-key-file", keyfile,
                "--no-webui", "--jinja"]
        return args + (["--threads", str(threads)] if threads else [])

    return command
