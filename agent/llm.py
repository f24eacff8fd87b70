"""The LLM adapter: a streaming chat client for any OpenAI-compatible endpoint.

The agent speaks the OpenAI chat API to every backend (the embedded llama.cpp server, vLLM,
OpenAI itself), so one adapter serves them all. Its job in a voice loop is to deliver the first
token fast, to fail loudly and clearly instead of hanging, and to stop the server decoding the
moment a turn is cancelled by barge-in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlsplit

import openai

try:  # the HTTP library the installed openai client is built on (httpx2 since openai 3)
    from httpx2 import Limits
except ImportError:  # pragma: no cover - older openai releases
    from httpx import Limits  # type: ignore[no-redef]

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

log = logging.getLogger(__name__)


def _default_api_key() -> str:
    return os.environ.get("OPENAI_API_KEY") or "not-needed"


@dataclass
class LLMOptions:
    """How to reach the LLM and how to sample from it."""

    base_url: str | None = None  # None: start the embedded llama.cpp server and use its URL
    model: str = "local"  # the embedded server answers to "local"
    api_key: str = field(default_factory=_default_api_key)  # $OPENAI_API_KEY; local servers ignore it
    temperature: float = 0.7
    max_tokens: int = 200  # spoken replies are short; this bounds a runaway answer
    connect_timeout: float = 3.0  # seconds to open a connection; also the whole budget of check()
    request_timeout: float = 30.0  # seconds of silence tolerated on an open stream
    first_token_timeout: float = 10.0  # seconds from request to first text; longer is a broken turn
    # While the user speaks, send the conversation plus their interim words (one token asked for)
    # so the server's prompt cache holds them: at the pause only the last words are new. Needs a
    # server that caches prompts (llama.cpp, vLLM); billed endpoints pay for every read.
    # None: on for the embedded model only.
    prefill_while_listening: bool | None = None
    # How the model chooses a tool (agent/decide.py): "grammar" constrains its output (llama.cpp
    # GBNF), "native" uses the OpenAI `tools` API; "auto": grammar for the embedded model, native
    # for an endpoint given with `url`
    tool_mode: str = "auto"

    def __post_init__(self) -> None:
        if self.tool_mode not in ("auto", "grammar", "native"):
            raise ValueError(f"tool_mode must be auto, grammar or native, got {self.tool_mode!r}")

    def resolved_tool_mode(self) -> str:
        if self.tool_mode != "auto":
            return self.tool_mode
        return "native" if self.base_url else "grammar"


class LLMError(RuntimeError):
    """The LLM endpoint could not be reached, refused the request, or did not answer in time."""


class LLMEndpoint(Protocol):
    """Where the client sends its requests, asked anew for each one.

    A fixed URL for most uses; `agent.llm_supervisor.LLMSupervisor` for a watched endpoint, which
    follows a restarted embedded server to its new port and refuses requests at once while the
    endpoint is down (so a turn apologises at once instead of waiting out a connect timeout).
    """

    def current_url(self) -> str:
        """The base URL (ending in ``/v1``) to use now; raise LLMError when the endpoint is known to be down."""
        ...

    def request_failed(self, error: LLMError) -> None:
        """Hear that a request failed for a reason that may be the endpoint's (unreachable, 5xx, silent)."""
        ...


@dataclass(frozen=True)
class FixedEndpoint:
    """One URL, never checked: what a plain ``base_url`` means."""

    url: str

    def current_url(self) -> str:
        return self.url

    def request_failed(self, error: LLMError) -> None:
        pass


def _endpoint_trouble(e: BaseException) -> bool:
    """Whether a failure may mean the endpoint is down or stuck (not just that our request was bad)."""
    if isinstance(e, openai.APIStatusError):
        return e.status_code >= 500
    return True


def _describe(url: str, e: BaseException) -> str:
    """One sentence on what went wrong talking to `url`, and what to do about it."""
    if isinstance(e, openai.APIStatusError):
        hint = {
            401: "; check OPENAI_API_KEY",
            403: "; check OPENAI_API_KEY",
            404: "; check the model name and that the URL ends in /v1",
        }.get(e.status_code, "")
        body = e.message if len(e.message) <= 300 else e.message[:300] + "…"
        return f"LLM endpoint {url} answered HTTP {e.status_code}: {body}{hint}"
    if isinstance(e, openai.APITimeoutError):  # before APIConnectionError: it is a subclass
        return f"LLM endpoint {url} timed out: {e!r}; is it overloaded? raise the timeouts or use a smaller model"
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e
        return f"LLM endpoint {url} is unreachable: {cause!r}; start it or pass --llm-url"
    return f"LLM endpoint {url} failed: {e!r}"


class OpenAICompatibleLLM:
    """Streams chat completions from an OpenAI-compatible server as text deltas.

    Consume `stream()` inside the turn's task (or with `contextlib.aclosing`): cancelling the task,
    or closing the generator, closes the HTTP response, which makes llama.cpp stop decoding.
    Each request first asks the `endpoint` where to go, so the client follows a supervised server
    to the new port it restarted on; the client itself knows nothing of servers or restarts.
    """

    def __init__(
        self, options: LLMOptions, base_url: str | None = None, prefill: bool | None = None,
        *, endpoint: LLMEndpoint | None = None,
    ) -> None:
        if endpoint is None:
            url = base_url or options.base_url
            if not url:
                raise ValueError(
                    "OpenAICompatibleLLM needs a base URL: pass base_url= (e.g. from EmbeddedLLMServer.start()), "
                    "endpoint= (an LLMSupervisor) or set LLMOptions.base_url"
                )
            endpoint = FixedEndpoint(url.rstrip("/"))
        self.options = options
        self.endpoint = endpoint
        self.last_first_token_s: float | None = None  # request sent → first text delta, last stream
        # prefill(): the option if set, else what the caller knows (on for the embedded server)
        self.prefills = bool(options.prefill_while_listening if options.prefill_while_listening is not None
                             else prefill)
        self._client: openai.AsyncOpenAI | None = None
        self._client_url: str | None = None

    @property
    def base_url(self) -> str | None:
        """The URL of the last request (the endpoint's current one before any); None while it is down."""
        if self._client_url is not None:
            return self._client_url
        try:
            return self.endpoint.current_url().rstrip("/")
        except LLMError:
            return None

    async def _api(self) -> tuple[str, openai.AsyncOpenAI]:
        """The endpoint's URL now and a client for it; LLMError (at once) while the endpoint is down.

        A restarted embedded server listens on a new port: the client for the old one is closed
        here (its connections are dead anyway), so restarts leak no sockets."""
        url = self.endpoint.current_url().rstrip("/")
        if url != self._client_url or self._client is None:
            old = self._client
            extra: dict[str, Any] = {}
            if urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1"):
                # llama.cpp's HTTP server closes an idle keep-alive connection just as the client
                # reuses it ("Server disconnected without sending a response": 1 in ~6 requests
                # after a stream, measured on the embedded server); on loopback a fresh connection
                # costs ~0.1 ms, so none is kept
                extra["http_client"] = openai.DefaultAsyncHttpxClient(limits=Limits(max_keepalive_connections=0))
            self._client = openai.AsyncOpenAI(
                base_url=url,
                api_key=self.options.api_key,
                timeout=openai.Timeout(self.options.request_timeout, connect=self.options.connect_timeout),
                max_retries=0,  # a retry costs more latency than a clear failure is worth mid-conversation
                **extra,
            )
            self._client_url = url
            if old is not None:
                await old.close()
        return url, self._client

    def _failed(self, url: str, e: BaseException) -> LLMError:
        """The LLMError for `e`, told to the endpoint when it may be the endpoint's fault."""
        err = LLMError(_describe(url, e))
        if _endpoint_trouble(e):
            self.endpoint.request_failed(err)
        return err

    async def check(self) -> None:
        """Probe the endpoint (list its models) within `connect_timeout`; raise LLMError if it fails."""
        url, api = await self._api()
        client = api.with_options(timeout=openai.Timeout(self.options.connect_timeout))
        try:
            await client.models.list()
        except openai.OpenAIError as e:
            raise self._failed(url, e) from e

    async def stream(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
        grammar: str | None = None, tool_choice: dict[str, Any] | None = None,
    ) -> AsyncIterator[Any]:
        """Yield the reply's text deltas in order; raise LLMError on failure or a late first token.

        `tools` (OpenAI `tools` entries): the endpoint may answer with a call instead, yielded as one
        `dict` {"name", "arguments" (a JSON string), "id"} after the stream ends. `grammar` (GBNF): a
        llama.cpp server constrains the output to it (agent/decide.py builds one)."""
        opts = self.options
        t0 = time.monotonic()
        self.last_first_token_s = None
        response: openai.AsyncStream[Any] | None = None
        calls: dict[int, dict[str, str]] = {}  # native tool calls, assembled from their deltas
        url, api = await self._api()
        try:
            try:
                # The deadline covers connecting, the response headers and any empty role-only chunks.
                # No `yield` inside it: the timeout would otherwise fire in the consumer's code.
                async with asyncio.timeout(opts.first_token_timeout):
                    extra: dict[str, Any] = {}
                    if tools:
                        extra["tools"] = tools
                        if tool_choice:
                            extra["tool_choice"] = tool_choice
                    if grammar:
                        extra["extra_body"] = {"grammar": grammar}
                    response = await api.chat.completions.create(
                        model=opts.model,
                        # our plain dicts are message params; typed, stream=True picks the AsyncStream overload
                        messages=cast("list[ChatCompletionMessageParam]", messages),
                        temperature=opts.temperature,
                        max_tokens=opts.max_tokens,
                        stream=True,
                        **extra,
                    )
                    chunks = aiter(response)
                    first = await _next_text(chunks, calls)
            except TimeoutError as e:
                err = LLMError(
                    f"LLM endpoint {url} sent no token within {opts.first_token_timeout:g} s; "
                    "it may be overloaded or stuck; raise first_token_timeout or check the server"
                )
                self.endpoint.request_failed(err)
                raise err from e
            if first is not None:
                self.last_first_token_s = time.monotonic() - t0
                yield first
                while (text := await _next_text(chunks, calls)) is not None:
                    yield text
            for call in calls.values():
                if self.last_first_token_s is None:
                    self.last_first_token_s = time.monotonic() - t0
                yield call
        except openai.OpenAIError as e:  # transport errors mid-stream arrive wrapped as these too
            raise self._failed(url, e) from e
        finally:
            if response is not None:
                await response.close()  # closes the connection: the server cancels its decode

    async def prefill(self, messages: list[dict[str, Any]]) -> bool:
        """Have the server read `messages` into its prompt cache, so that a reply to a longer
        version of them starts sooner. Best effort: False when off or failed (a real request
        reports errors; this one must never break a turn)."""
        if not self.prefills:
            return False
        try:
            url, api = await self._api()
        except LLMError as e:  # the endpoint is down: the turn itself will say so
            log.debug("prefill skipped: %s", e)
            return False
        try:
            async with asyncio.timeout(self.options.first_token_timeout):
                await api.chat.completions.create(
                    model=self.options.model, messages=messages,  # type: ignore[arg-type]
                    max_tokens=1, temperature=0.0, stream=False,
                )
            return True
        except (openai.OpenAIError, TimeoutError) as e:
            log.debug("prefill to %s failed: %s", url, e)
            if _endpoint_trouble(e):
                self.endpoint.request_failed(LLMError(_describe(url, e)))
            return False

    async def aclose(self) -> None:
        """Close the underlying HTTP client."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> OpenAICompatibleLLM:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def _next_text(chunks: AsyncIterator[Any], calls: dict[int, dict[str, str]]) -> str | None:
    """The next non-empty content delta of a chat stream, or None at its end; tool-call deltas on
    the way are gathered into `calls` (index → name, arguments, id)."""
    async for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for tc in getattr(delta, "tool_calls", None) or ():
            call = calls.setdefault(tc.index or 0, {"name": "", "arguments": "", "id": ""})
            if tc.id:
                call["id"] = tc.id
            if tc.function is not None:
                call["name"] += tc.function.name or ""
                call["arguments"] += tc.function.arguments or ""
        if text := delta.content:
            return str(text)
    return None
