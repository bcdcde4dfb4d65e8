"""A generation server medtune runs itself (llama-server, vllm serve): started on a free loopback
port with a key of its own, health-checked, restarted once if it dies, stopped on close. The kernel
stops it too if medtune is killed without cleaning up (PR_SET_PDEATHSIG), so it never outlives us.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

log = logging.getLogger("medtune.engines")


class EngineSetupError(RuntimeError):
    """An engine cannot be built or started here; the message says what is missing and what to do."""


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it ends, however it ends."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedServer:
    """`command(port, keyfile)` → argv; `env(key)` → extra environment (vLLM reads its key from one).
    Its output goes to `log_path`."""

    def __init__(self, name: str, command: Callable[[int, str], list[str]], log_path: Path, *,
                 env: Callable[[str], dict] | None = None, startup_timeout: float = 180.0):
        self.name, self.command, self.log_path = name, command, log_path
        self.env = env or (lambda key: {})
        self.startup_timeout = startup_timeout
        self.key = secrets.token_urlsafe(24)  # other users of this machine cannot use our loopback server
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._keyfile = tempfile.NamedTemporaryFile("w", prefix="medtune-engine-", suffix=".key")  # mode 0600
        self._keyfile.write(self.key)
        self._keyfile.flush()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self.port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.command(self.port, self._keyfile.name), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=os.environ | self.env(self.key),
                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineSetupError(f"{self.name} exited with {self.process.returncode} while starting; see {self.log_path}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    log.info("%s ready on 127.0.0.1:%d", self.name, self.port)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise EngineSetupError(f"{self.name} did not become ready within {self.startup_timeout:g} s; see {self.log_path}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def close(self) -> None:
        self.stop()
        self._keyfile.close()  # deletes it

    async def watch(self, on_restart: Callable[[str], None], every: float = 1.0) -> None:
        """Restart the server once if it dies (`on_restart` gets its new URL); a second death is final."""
        while True:
            await asyncio.sleep(every)
            if self.alive():
                continue
            if self.restarts >= 1:
                log.error("%s died again (exit %s); not restarting it", self.name, self.process.returncode)
                return
            self.restarts += 1
            log.warning("%s died (exit %s); restarting it once", self.name, self.process.returncode)
            await asyncio.to_thread(self.start)
            on_restart(self.url)
