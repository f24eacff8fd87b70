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
from typing import Any

import openai

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


class LLMError(RuntimeError):
    """The LLM endpoint could not be reached, refused the request, or did not answer in time."""


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
    """

    def __init__(self, options: LLMOptions, base_url: str | None = None, prefill: bool | None = None) -> None:
        url = base_url or options.base_url
        if not url:
            raise ValueError(
                "OpenAICompatibleLLM needs a base URL: pass base_url= (e.g. from EmbeddedLLMServer.start()) "
                "or set LLMOptions.base_url"
            )
        self.options = options
        self.base_url = url.rstrip("/")
        self.last_first_token_s: float | None = None  # request sent → first text delta, last stream
        # prefill(): the option if set, else what the caller knows (on for the embedded server)
        self.prefills = bool(options.prefill_while_listening if options.prefill_while_listening is not None
                             else prefill)
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=options.api_key,
            timeout=openai.Timeout(options.request_timeout, connect=options.connect_timeout),
            max_retries=0,  # a retry costs more latency than a clear failure is worth mid-conversation
        )

    async def check(self) -> None:
        """Probe the endpoint (list its models) within `connect_timeout`; raise LLMError if it fails."""
        client = self._client.with_options(timeout=openai.Timeout(self.options.connect_timeout))
        try:
            await client.models.list()
        except openai.OpenAIError as e:
            raise LLMError(_describe(self.base_url, e)) from e

    async def stream(self, messages: list[dict[str, Any]]) -> AsyncIterator[str]:
        """Yield the reply's text deltas in order; raise LLMError on failure or a late first token."""
        opts = self.options
        t0 = time.monotonic()
        self.last_first_token_s = None
        response: openai.AsyncStream[Any] | None = None
        try:
            try:
                # The deadline covers connecting, the response headers and any empty role-only chunks.
                # No `yield` inside it: the timeout would otherwise fire in the consumer's code.
                async with asyncio.timeout(opts.first_token_timeout):
                    response = await self._client.chat.completions.create(
                        model=opts.model,
                        messages=messages,  # type: ignore[arg-type]
                        temperature=opts.temperature,
                        max_tokens=opts.max_tokens,
                        stream=True,
                    )
                    chunks = aiter(response)
                    first = await _next_text(chunks)
            except TimeoutError as e:
                raise LLMError(
                    f"LLM endpoint {self.base_url} sent no token within {opts.first_token_timeout:g} s; "
                    "it may be overloaded or stuck; raise first_token_timeout or check the server"
                ) from e
            if first is None:
                return
            self.last_first_token_s = time.monotonic() - t0
            yield first
            while (text := await _next_text(chunks)) is not None:
                yield text
        except openai.OpenAIError as e:  # transport errors mid-stream arrive wrapped as these too
            raise LLMError(_describe(self.base_url, e)) from e
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
            async with asyncio.timeout(self.options.first_token_timeout):
                await self._client.chat.completions.create(
                    model=self.options.model, messages=messages,  # type: ignore[arg-type]
                    max_tokens=1, temperature=0.0, stream=False,
                )
            return True
        except (openai.OpenAIError, TimeoutError) as e:
            log.debug("prefill to %s failed: %s", self.base_url, e)
            return False

    async def aclose(self) -> None:
        """Close the underlying HTTP client."""
        await self._client.close()

    async def __aenter__(self) -> OpenAICompatibleLLM:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def _next_text(chunks: AsyncIterator[Any]) -> str | None:
    """The next non-empty content delta of a chat stream, or None at its end."""
    async for chunk in chunks:
        if chunk.choices and (text := chunk.choices[0].delta.content):
            return str(text)
    return None
