"""The embedded LLM: llama.cpp's OpenAI-compatible server (xllamacpp) in a child process.

The agent always talks to its LLM over the OpenAI HTTP API; when no external endpoint is given it
starts this one on 127.0.0.1. A child process (not a thread) keeps llama.cpp's threads, memory and
possible crashes away from the audio event loop, and it can be killed outright on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import aiohttp

from agent._llm_child import READY_PREFIX

log = logging.getLogger(__name__)

DEFAULT_MODEL_KEY = "qwen2.5-0.5b"
# The models `[embedded_llm] model` chooses between: asset keys of pipeline/assets.py (README:
# "Choosing the embedded model"). The 1.5B ships in an optional extra.
EMBEDDED_MODELS = ("qwen2.5-0.5b", "qwen2.5-1.5b")


def check_model_key(key: str) -> None:
    """ValueError (one line, naming the known keys) unless `key` is an embedded model."""
    if key not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {key!r}; known: {', '.join(EMBEDDED_MODELS)}")
_REPO_ROOT = Path(__file__).resolve().parents[1]


class EmbeddedLLMError(RuntimeError):
    """The embedded llama.cpp server failed to start or to answer; the message carries its log tail."""


def default_log_path() -> Path:
    """Where the child's stdout/stderr go unless told otherwise: ``<cache>/logs/llm-server.log``."""
    from pipeline.assets import cache_dir

    return cache_dir() / "logs" / "llm-server.log"


class EmbeddedLLMServer:
    """Starts, health-checks and stops a llama.cpp server child; `start()` returns its ``/v1`` URL.

    Defaults suit a 2-core machine: one thread for generation and prompt batches (the other core
    is left to audio, STT and TTS), a 4096-token context, one slot, prompt caching on. The model is
    `model_path` (a GGUF file) if given, else the packaged model `model` (`EMBEDDED_MODELS`),
    verified by sha256 when the server starts.
    """

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        model: str = DEFAULT_MODEL_KEY,
        n_threads: int = 1,
        n_ctx: int = 4096,
        n_parallel: int = 1,
        model_alias: str = "local",
        host: str = "127.0.0.1",
        log_path: Path | str | None = None,
        startup_timeout: float = 120.0,
        warm_system_prompt: str | None = None,
        warm_primer: tuple[dict[str, str], ...] = (),
    ) -> None:
        if n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads}")
        if model_path is None:
            check_model_key(model)
        self.model = model
        self.model_path = Path(model_path) if model_path is not None else None
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.n_parallel = n_parallel
        self.model_alias = model_alias
        self.host = host
        self.log_path = Path(log_path) if log_path is not None else default_log_path()
        self.startup_timeout = startup_timeout
        self.warm_system_prompt = warm_system_prompt
        self.warm_primer = warm_primer  # example messages that follow the system prompt in every request
        self.base_url: str | None = None
        self.startup_seconds: float | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        """Process id of the child while one has been started (kept after stop, for checks)."""
        return self._proc.pid if self._proc is not None else None

    async def wait(self) -> int | None:
        """Return the child's exit code once it has exited (None at once if none was started).

        The supervisor awaits this to notice a crash (or a ``kill -9``) the moment it happens."""
        proc = self._proc
        return None if proc is None else await proc.wait()

    async def start(self) -> str:
        """Start the child, wait until ``GET /health`` answers ok, and return ``http://host:port/v1``."""
        if self._proc is not None and self._proc.returncode is None:
            raise EmbeddedLLMError("embedded LLM server is already running; call stop() first")
        t0 = time.monotonic()
        model = self.model_path
        if model is None:
            from pipeline.assets import model_file

            model = await asyncio.to_thread(model_file, self.model)  # sha256 of 0.5-1.1 GB
        if not await asyncio.to_thread(Path(model).is_file):
            raise EmbeddedLLMError(f"LLM model file {model} does not exist; pass an existing GGUF path")
        self._log_file = await asyncio.to_thread(self._open_log)
        self._log_offset = self._log_file.tell()
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        try:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent._llm_child",
                "--model", str(model), "--host", self.host, "--port", "0",
                "--threads", str(self.n_threads), "--ctx", str(self.n_ctx),
                "--parallel", str(self.n_parallel), "--alias", self.model_alias,
                "--parent-pid", str(os.getpid()), "--ready-fd", str(write_fd),
                stdin=asyncio.subprocess.DEVNULL, stdout=self._log_file, stderr=asyncio.subprocess.STDOUT,
                pass_fds=(write_fd,), env=env,
            )
            os.close(write_fd)  # the child holds its own copies of the pipe end and the log
            write_fd = -1
            self._log_file.close()
            self._log_file = None
            address = await self._wait_ready(read_fd, t0 + self.startup_timeout)
            self.base_url = f"{address}/v1"
            if self.warm_system_prompt:
                await self._warm(self.warm_system_prompt)
        except BaseException:
            await self.stop()
            raise
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
        self.startup_seconds = time.monotonic() - t0
        log.info("embedded LLM server at %s (pid %s) ready in %.2f s", self.base_url, self.pid, self.startup_seconds)
        return self.base_url

    def _open_log(self) -> IO[bytes]:
        """The child's log, in the cache; in the temp folder when the cache cannot be written (a
        read-only cache with every model in it must still start)."""
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            return open(self.log_path, "ab")
        except OSError as exc:
            fallback = Path(tempfile.gettempdir()) / "rejoinder-llm-server.log"
            log.warning("cannot write the LLM log %s (%s); logging to %s", self.log_path, exc.strerror, fallback)
            self.log_path = fallback
            return open(fallback, "ab")

    async def _wait_ready(self, read_fd: int, deadline: float) -> str:
        """Read the child's listening address from the pipe, then poll /health until it says ok."""
        assert self._proc is not None
        buf, address, last = b"", None, "no answer yet"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:
            while time.monotonic() < deadline:
                if self._proc.returncode is not None:
                    raise EmbeddedLLMError(
                        f"embedded LLM server exited with code {self._proc.returncode} before it was ready; "
                        f"see {self.log_path}. Last lines:\n{self.log_tail()}"
                    )
                if address is None:
                    try:
                        buf += os.read(read_fd, 4096)
                    except BlockingIOError:
                        pass
                    if b"\n" in buf:
                        address = buf.partition(b"\n")[0].decode().removeprefix(READY_PREFIX).strip()
                if address is not None:
                    try:
                        async with http.get(f"{address}/health") as r:
                            if r.status == 200:
                                return address
                            last = f"HTTP {r.status}: {(await r.text())[:200]}"
                    except (aiohttp.ClientError, TimeoutError) as e:
                        last = repr(e)
                await asyncio.sleep(0.05)
        raise EmbeddedLLMError(
            f"embedded LLM server was not healthy within {self.startup_timeout:.0f} s (last: {last}); "
            f"see {self.log_path}, or raise startup_timeout on a slow machine. Last lines:\n{self.log_tail()}"
        )

    async def _warm(self, system_prompt: str) -> None:
        """Decode the system prompt once so the first real turn hits the prompt cache."""
        body = {
            "model": self.model_alias,
            "messages": [
                {"role": "system", "content": system_prompt},
                *self.warm_primer,
                {"role": "user", "content": "Hi"},
            ],
            "max_tokens": 1,
        }
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60.0)) as http:
            async with http.post(f"{self.base_url}/chat/completions", json=body) as r:
                if r.status != 200:
                    raise EmbeddedLLMError(
                        f"warming the prompt cache failed (HTTP {r.status}): {(await r.text())[:300]}; "
                        f"see {self.log_path}"
                    )

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the child wrote since this start (for error messages)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode(errors="replace")
        except OSError as e:
            return f"(could not read {self.log_path}: {e})"
        return "\n".join(text.splitlines()[-lines:]) or "(the log is empty)"

    async def stop(self, timeout: float = 5.0) -> None:
        """Terminate the child, wait for it (so no zombie is left), and kill it if it lingers."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), timeout)
            except ProcessLookupError:
                pass
            except TimeoutError:
                log.warning("embedded LLM server (pid %s) ignored SIGTERM for %.1f s; killing it", proc.pid, timeout)
                proc.kill()
                await proc.wait()
            except asyncio.CancelledError:
                proc.kill()  # never leave the model running behind a cancelled shutdown
                raise
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.base_url = None

    async def __aenter__(self) -> EmbeddedLLMServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
