"""Keeps the LLM endpoint answering: restarts the embedded server, waits out a remote one.

Without it a crashed llama.cpp child (or a remote endpoint that went away) turned every later
turn, of every call, into the spoken apology. The supervisor notices trouble three ways: the
child's exit (at once), a periodic cheap probe with a timeout (a stuck server), and a request the
client reports as failed (checked with a probe at once). The embedded server is then restarted
with back-off; a remote one can only be probed until it answers again.

It is also the `LLMEndpoint` the client asks before every request: that is how the client follows
a restarted child to its new port (it binds port 0), and how a request fails at once, with the
apology, while the endpoint is not up instead of waiting out a connect timeout.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp

from agent.llm import LLMError

log = logging.getLogger(__name__)

State = Literal["up", "restarting", "down"]
Probe = Callable[[str], Awaitable[str | None]]  # base URL -> None when it answers, else what went wrong


@dataclass(frozen=True)
class BackoffOptions:
    """Delays before each restart (or, for a remote endpoint, each recovery probe): doubling from
    `initial_s` up to `max_s`, so a one-off crash is mended in about a second while a crash loop
    costs the audio little CPU."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    reset_after_s: float = 60.0  # up this long, and the next failure starts from initial_s again


@dataclass(frozen=True)
class SupervisorOptions:
    """How often and how patiently the endpoint is checked. The child's exit needs no probe: it is
    noticed the moment it happens; probes find a server that is alive but no longer answers."""

    probe_interval_s: float = 5.0  # between probes while up; also the longest wait between recovery probes
    probe_timeout_s: float = 3.0  # llama.cpp answers /v1/models in ~1 ms, even while it decodes a reply
    failed_probes: int = 2  # consecutive failures that mean down: one slow answer is not enough
    recheck_s: float = 0.5  # after a failed probe, the next one comes this soon
    stop_timeout_s: float = 5.0  # a stuck child gets this long after SIGTERM before SIGKILL
    backoff: BackoffOptions = field(default_factory=BackoffOptions)


class Backoff:
    """The delay sequence of `BackoffOptions`: initial, ×factor each time, capped; reset() starts over."""

    def __init__(self, options: BackoffOptions) -> None:
        self.options = options
        self.attempt = 0

    def next(self) -> float:
        o = self.options
        delay = min(o.initial_s * o.factor ** self.attempt, o.max_s)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


class SupervisedServer(Protocol):
    """What the supervisor needs of a server it may restart (`EmbeddedLLMServer` is one)."""

    @property
    def pid(self) -> int | None: ...

    async def start(self) -> str: ...  # -> its base URL, which may differ on every start

    async def stop(self, timeout: float = 5.0) -> None: ...  # returns once the process is reaped

    async def wait(self) -> int | None: ...  # -> its exit code, once it has exited


class LLMSupervisor:
    """Watches one LLM endpoint, restarts it when it is an embedded `server`, and serves as the
    client's `LLMEndpoint`. Give exactly one of `server` (embedded) or `url` (remote).

    `probe`, `sleep` and `clock` exist for tests that fake the process and the passing of time."""

    def __init__(
        self,
        *,
        server: SupervisedServer | None = None,
        url: str | None = None,
        options: SupervisorOptions | None = None,
        api_key: str | None = None,
        probe: Probe | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (server is None) == (url is None):
            raise ValueError("LLMSupervisor needs exactly one of server= (embedded) or url= (remote endpoint)")
        self.options = options or SupervisorOptions()
        self.state: State = "down"
        self.restarts = 0
        self.last_error: str | None = "not started"
        self._server = server
        self._url = url.rstrip("/") if url else None
        self._api_key = api_key
        self._probe_fn = probe
        self._sleep, self._clock = sleep, clock
        self._backoff = Backoff(self.options.backoff)
        self._kick = asyncio.Event()  # a request failed: probe now
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._up_since = 0.0

    @property
    def name(self) -> str:
        return "the embedded LLM server" if self._server is not None else f"LLM endpoint {self._url}"

    # --- the client's side (LLMEndpoint) -------------------------------------------------------
    def current_url(self) -> str:
        """The URL to send a request to now; LLMError at once while the endpoint is not up."""
        if self.state == "up" and self._url is not None:
            return self._url
        if self.state == "restarting":
            raise LLMError(f"{self.name} is restarting (it {self.last_error}); try again in a moment")
        raise LLMError(f"{self.name} is down ({self.last_error}); it is used again as soon as it answers")

    def request_failed(self, error: LLMError) -> None:
        """A request failed in a way that may be the endpoint's fault: probe it now, not at the next interval."""
        if self.state == "up":
            self._kick.set()

    def health(self) -> dict[str, Any]:
        """``{"state", "restarts", "last_error", "url"}`` (and the child's ``pid`` when embedded)."""
        h: dict[str, Any] = {"state": self.state, "restarts": self.restarts, "last_error": self.last_error,
                             "url": self._url}
        if self._server is not None:
            h["pid"] = self._server.pid if self.state == "up" else None
        return h

    # --- lifetime ----------------------------------------------------------------------------------
    async def start(self) -> str:
        """Start the embedded server (a failed first start is raised: that is a setup error, not a
        crash) and begin watching; returns the endpoint's URL."""
        if self._task is not None:
            raise RuntimeError("LLMSupervisor.start() was already called")
        if self._server is not None:
            self._url = await self._server.start()
        if self._probe_fn is None:
            # force_close: a probe every few seconds needs no pool, and a pool would keep sockets to dead ports
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        self.last_error = None
        self._set("up")
        self._task = asyncio.create_task(self._supervise(), name="llm-supervisor")
        self._task.add_done_callback(self._ended)
        assert self._url is not None
        return self._url

    async def aclose(self) -> None:
        """Stop watching, stop the embedded server (waiting for it), close the probe's HTTP session."""
        task, self._task = self._task, None
        if task is not None:
            task.remove_done_callback(self._ended)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._server is not None:
            await self._server.stop(self.options.stop_timeout_s)
        if self._http is not None:
            await self._http.close()
            self._http = None
        self.state = "down"

    async def __aenter__(self) -> LLMSupervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- the watch ----------------------------------------------------------------------------------
    async def _supervise(self) -> None:
        while True:
            why = await self._watch()
            if self._clock() - self._up_since >= self.options.backoff.reset_after_s:
                self._backoff.reset()  # it ran well for a while: this is a new failure, not a crash loop
            if self._server is not None:
                await self._restart(why)
            else:
                await self._recover(why)

    async def _watch(self) -> str:
        """Wait while the endpoint is up; return why it no longer is."""
        exited = asyncio.ensure_future(self._server.wait()) if self._server is not None else None
        failures = 0
        try:
            while True:
                await self._pause(self.options.recheck_s if failures else self.options.probe_interval_s, exited)
                if exited is not None and exited.done():
                    return _exit_reason(exited.result())
                self._kick.clear()
                assert self._url is not None
                error = await self._probe(self._url)
                if exited is not None and exited.done():
                    return _exit_reason(exited.result())
                failures = 0 if error is None else failures + 1
                if error is not None and failures >= self.options.failed_probes:
                    if exited is not None:  # a refused connection often means it died: say so if it did
                        await asyncio.wait([exited], timeout=self.options.recheck_s)
                        if exited.done():
                            return _exit_reason(exited.result())
                    return f"stopped answering ({error})"
        finally:
            if exited is not None and not exited.done():
                exited.cancel()
                await asyncio.gather(exited, return_exceptions=True)

    async def _pause(self, seconds: float, exited: asyncio.Future[Any] | None) -> None:
        """Sleep `seconds`, cut short by a reported request failure or the child's exit."""
        waiters = [asyncio.ensure_future(self._sleep(seconds)), asyncio.ensure_future(self._kick.wait())]
        try:
            await asyncio.wait([*waiters, *([exited] if exited is not None else [])],
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _restart(self, why: str) -> None:
        assert self._server is not None
        self._set("restarting", why)
        failed_at = self._clock()
        attempt = 0
        while True:
            # Reap the old child first (SIGKILL if it is stuck): never a zombie, never two servers.
            await self._server.stop(self.options.stop_timeout_s)
            self._url = None
            attempt += 1
            delay = self._backoff.next()
            log.warning("%s %s; restart %d in %.2g s", self.name, self.last_error, attempt, delay)
            await self._sleep(delay)
            try:
                self._url = await self._server.start()
            except Exception as e:  # noqa: BLE001 - any failure is one more attempt, never the end of supervision
                self.last_error = f"failed to restart: {_one_line(e)}"
                continue
            self.restarts += 1
            self._set("up")
            log.info("%s restarted at %s (pid %s) %.1f s after it failed (%d restart(s) so far)",
                     self.name, self._url, self._server.pid, self._clock() - failed_at, self.restarts)
            return

    async def _recover(self, why: str) -> None:
        """A remote endpoint cannot be restarted: fail requests fast, probe until it answers."""
        assert self._url is not None
        self._set("down", why)
        log.warning("%s is down (%s); replies apologise at once until it answers again", self.name, why)
        failed_at = self._clock()
        while True:
            await self._sleep(min(self._backoff.next(), self.options.probe_interval_s))
            error = await self._probe(self._url)
            if error is None:
                break
            self.last_error = error
        self._set("up")
        log.info("%s answers again, %.1f s after it went down", self.name, self._clock() - failed_at)

    async def _probe(self, url: str) -> str | None:
        if self._probe_fn is not None:
            return await self._probe_fn(url)
        return await self._http_probe(url)

    async def _http_probe(self, url: str) -> str | None:
        """``GET /v1/models``: the cheapest call every OpenAI-compatible server answers. Any answer
        below 500 means it is up (a 401 is a key problem the request itself will name)."""
        assert self._http is not None
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            async with asyncio.timeout(self.options.probe_timeout_s):
                async with self._http.get(f"{url}/models", headers=headers) as r:
                    return None if r.status < 500 else f"its probe got HTTP {r.status}"
        except TimeoutError:
            return f"its probe got no answer within {self.options.probe_timeout_s:g} s"
        except Exception as e:  # noqa: BLE001 - refused, reset, bad URL: all mean "not answering"
            return f"its probe failed: {_one_line(e)}"

    def _set(self, state: State, error: str | None = None) -> None:
        self.state = state
        if error is not None:
            self.last_error = error
        if state == "up":
            self._up_since = self._clock()
            self._kick.clear()

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The watch must never end on its own; if a bug ends it, say so once and report down."""
        if not task.cancelled() and task.exception() is not None:
            self.state, self.last_error = "down", f"supervisor failed: {_one_line(task.exception())}"
            log.error("LLM supervisor stopped: %s; restart the agent", self.last_error)


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exited with code {code}"


def _one_line(e: BaseException | None) -> str:
    """The first line of an error (EmbeddedLLMError carries the child's log tail below it), bounded."""
    text = (str(e).strip().splitlines() or [repr(e)])[0]
    return text if len(text) <= 300 else text[:300] + "…"
