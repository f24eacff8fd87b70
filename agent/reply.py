"""One agent reply: one task, one TTS request, one `TurnMetrics`, cancelled in one place.

A reply is the cancellation scope of an agent turn (DESIGN.md, principle 1). Its task first awaits
its prompt (the user's final transcript, put into the history by the turn manager), then runs
*thinking* (LLM deltas → phrases) and *speaking* (phrases → TTS → playout) as children of one
TaskGroup. Barge-in is `Reply.interrupt`: the TTS request is cancelled, the task is cancelled (which
closes the LLM stream and stops synthesis), the playout is flushed, and the history keeps only the
words that were played. No stage has to notice the interruption, and nothing outlives the task.

A preemptive reply (agent/preempt.py) is a reply with a `gate`: it thinks and synthesises at once
but plays nothing until the gate opens at the endpoint; while it is not `committed`, a cancel leaves
no trace (no turn event, no history).

The turn manager (agent/turns.py) decides when a reply starts and when it is cut. A reply reads its
stages from that owner when it needs them and tells it two things: audio is about to play, and the
reply has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from agent.context import Conversation
from agent.decide import Calling, Mode, decide, digit_call, digit_tools
from agent.llm import LLMError
from agent.tools import ToolBox, ToolCall, ToolError, ToolResult
from pipeline.clock import Clock
from pipeline.events import TurnMetrics
from pipeline.stages import CallControl
from tts.playout import Playout
from tts.stream import StreamingTTS
from tts.text import PhraseSplitter

log = logging.getLogger(__name__)

APOLOGY = "Sorry, I can't think right now. Please try again in a moment."
TOOL_APOLOGY = "Sorry, I couldn't do that just now."

Prompt = Callable[[], Awaitable["list[dict] | None"]]
"""Makes the coroutine that yields the messages a reply answers, or None: nothing to answer after all.
A factory, not a coroutine, so a reply cancelled before it ever ran leaves no coroutine unawaited."""


class LLM(Protocol):
    def stream(self, messages: list[dict]) -> Any: ...  # -> AsyncIterator[str]
    # optional: `async prefill(messages) -> bool` reads a prompt into the server's cache


class Phrasing(Protocol):
    """How short a reply's first phrase may be (`TurnOptions`, agent/turns.py)."""

    @property
    def first_phrase_min_words(self) -> int: ...
    @property
    def first_phrase_max_words(self) -> int: ...
    @property
    def max_reply_words(self) -> int: ...


class ReplyOwner(Protocol):
    """What a reply speaks with and reports to (the turn manager). Read when needed, not copied:
    a stage swapped on the owner (a test's LLM) is the one the next reply uses."""

    @property
    def llm(self) -> LLM: ...
    @property
    def tts(self) -> StreamingTTS: ...
    @property
    def playout(self) -> Playout: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def conversation(self) -> Conversation: ...
    @property
    def options(self) -> Phrasing: ...

    @property
    def tools(self) -> ToolBox: ...
    @property
    def tool_mode(self) -> Mode: ...
    @property
    def call(self) -> CallControl | None: ...

    def on_event(self, event: dict) -> None: ...

    def tool_done(self, result: ToolResult) -> None:
        """A tool call of this reply finished (a flow may move to its next node)."""

    def reply_audible(self, reply: Reply) -> None:
        """A chunk with samples is about to play: the agent has the floor."""

    def reply_ended(self, reply: Reply) -> None:
        """A committed reply is over (finished or cut) and its turn event is out."""


class Reply:
    """One reply in flight. Created started: its task runs `prompt`, then thinks and speaks.

    `gate`: audio waits for it (a preemptive reply). `committed`: False while the reply is only a
    guess; a guess that is cancelled leaves nothing behind. `script`: words to say instead of the
    LLM's (the greeting); with no `prompt` the reply answers an empty message list.
    """

    def __init__(
        self, owner: ReplyOwner, metrics: TurnMetrics, prompt: Prompt | None = None, *, name: str,
        gate: asyncio.Event | None = None, committed: Callable[[], bool] = lambda: True,
        script: str | None = None,
    ) -> None:
        self.owner, self.metrics, self.gate, self.committed, self.script = owner, metrics, gate, committed, script
        self.rid: str | None = None  # the TTS request id, once the reply has begun to speak
        self.hang_up = False  # a tool asked to end the call once this reply has been played
        self.task: asyncio.Task[None] = asyncio.create_task(self._run(prompt), name=name)

    def done(self) -> bool:
        return self.task.done()

    def cancel(self) -> None:
        """Stop it without the barge-in bookkeeping (a discarded guess, a closing session)."""
        self.task.cancel()

    async def wait(self) -> None:
        await asyncio.gather(self.task, return_exceptions=True)

    def first_played_at(self) -> float | None:
        """Media time the reply was first heard, or None."""
        return None if self.rid is None else self.owner.playout.first_played_at(self.rid)

    async def interrupt(self, at: float) -> None:
        """Barge-in: one cancel, then record what the user actually heard and how fast it stopped."""
        if self.task.done():
            return
        t0 = time.perf_counter()
        m = self.metrics  # before the cancel: the reply's own turn event must already say so
        m.interrupted = True
        m.barge_in_at = at
        if self.rid is not None:
            self.owner.tts.cancel(self.rid)  # the TTS times its own acknowledgement from here
        self.task.cancel()
        self.owner.playout.flush()
        await asyncio.gather(self.task, return_exceptions=True)
        m.tts["cancellation_latency_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        log.info("barge-in at %.2f: reply cancelled in %.1f ms", at, (time.perf_counter() - t0) * 1000)

    # --- the body -----------------------------------------------------------------------------
    async def _run(self, prompt: Prompt | None) -> None:
        messages = [] if prompt is None else await prompt()
        if messages is not None:
            await self._reply_to(messages)
            call = self.owner.call
            if self.hang_up and call is not None and not self.metrics.interrupted:
                await call.hang_up("end_call")  # the goodbye has been played out (drained) by now

    async def _reply_to(self, messages: list[dict]) -> None:
        """Thinking and speaking as children of one TaskGroup; then the turn's record: what was
        heard joins the history, the metrics go out as a turn event."""
        o, m = self.owner, self.metrics
        rid = self.rid = o.tts.new_request_id()
        m.llm_request_at = m.llm_first_token_at = m.first_phrase_at = m.tts_first_chunk_at = None
        m.tts_last_chunk_at = None
        phrases: asyncio.Queue[str | None] = asyncio.Queue()
        generated: list[str] = []
        underruns_before = o.playout.underruns
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._think(messages, phrases, generated))
                tg.create_task(self._speak(phrases, rid))
        finally:
            if not self.committed():
                o.playout.forget(rid)
                return  # noqa: B012 — a discarded preemptive reply: nothing was heard or said
            m.agent_text = "".join(generated).strip()
            m.heard_text = o.playout.heard_text(rid)
            m.first_audio_played_at = o.playout.first_played_at(rid)
            m.agent_stopped_at = o.playout.stopped_at(rid)
            if o.tts.last_metrics is not None and o.tts.last_metrics.request_id == rid:
                m.tts = {**o.tts.last_metrics.as_dict(), **m.tts}
            m.tts["playout_underrun_frames"] = o.playout.underruns - underruns_before  # output starved
            if m.heard_text or m.first_audio_played_at is not None:  # nothing played: nothing was said
                o.conversation.add_agent(m.heard_text, m.interrupted or _cancelled())
            o.playout.forget(rid)
            o.on_event({"type": "turn", "metrics": m.as_dict()})
            o.reply_ended(self)

    async def _think(self, messages: list[dict], phrases: asyncio.Queue[str | None], generated: list[str]) -> None:
        """LLM deltas (or the script) → phrases (the first one short). An LLM failure becomes a spoken apology."""
        o, m = self.owner, self.metrics
        splitter = PhraseSplitter(o.options.first_phrase_min_words, o.options.first_phrase_max_words)
        m.llm_request_at = o.clock.now()
        try:
            async with o.clock.working():
                if self.script is not None:
                    source: AsyncIterator[str | Calling | ToolCall] = _said(self.script)
                else:
                    source = decide(o.llm, messages, o.tools, o.tool_mode, only=digit_tools(o.tools, messages),
                                    must=digit_call(o.tools, messages))
                filler_said = False
                async for item in source:
                    if m.llm_first_token_at is None:
                        m.llm_first_token_at = o.clock.now()
                    if isinstance(item, Calling):  # say the filler while the arguments are decoded
                        filler_said = self._filler(item.name, splitter, phrases, generated)
                        continue
                    if isinstance(item, ToolCall):
                        if not filler_said:
                            self._filler(item.name, splitter, phrases, generated)
                        await self._use_tool(item, messages, splitter, phrases, generated)
                        break
                    self._say(item, splitter, phrases, generated)
                    if self._long_enough(generated):
                        break  # closes the LLM stream: the server stops decoding
            for p in splitter.flush():
                self._phrase(p, phrases)
        except LLMError as exc:
            log.error("LLM failed during turn %d: %s", m.index, exc)
            m.error = str(exc)
            generated[:] = [APOLOGY]
            self._phrase(APOLOGY, phrases)
        except ToolError as exc:  # the model's call was malformed or named no tool (native endpoints)
            log.warning("turn %d: %s", m.index, exc)
            m.error = str(exc)
            self._say(TOOL_APOLOGY, splitter, phrases, generated)
            for p in splitter.flush():
                self._phrase(p, phrases)
        finally:
            phrases.put_nowait(None)

    def _long_enough(self, generated: list[str]) -> bool:
        """Past the word cap and at a sentence end: the rest would be a monologue nobody waits for."""
        cap = self.owner.options.max_reply_words
        if not cap:
            return False
        text = "".join(generated).rstrip()
        return len(text.split()) >= cap and text[-1:] in ".!?"

    def _say(self, text: str, splitter: PhraseSplitter, phrases: asyncio.Queue[str | None],
             generated: list[str]) -> None:
        generated.append(text)
        for p in splitter.push(text):
            self._phrase(p, phrases)

    def _filler(self, name: str, splitter: PhraseSplitter, phrases: asyncio.Queue[str | None],
                generated: list[str]) -> bool:
        """The tool's filler, as a phrase of its own (heard while the tool runs); False if it has none."""
        tool = self.owner.tools.get(name)
        if tool is None or not tool.filler:
            return False
        self._say(tool.filler + " ", splitter, phrases, generated)
        for p in splitter.flush():
            self._phrase(p, phrases)
        return True

    async def _use_tool(self, call: ToolCall, messages: list[dict], splitter: PhraseSplitter,
                        phrases: asyncio.Queue[str | None], generated: list[str]) -> None:
        """Say the tool's filler, run it inside this reply's scope (a barge-in cancels it: no late
        result reaches a later turn), note the call and its result in the history, then answer from
        the result (or say what the tool asked to say). A failure is a short spoken apology."""
        o, m = self.owner, self.metrics
        tool = o.tools.get(call.name)
        assert tool is not None, call.name  # decide() only yields known tools
        o.on_event({"type": "tool", "state": "started", "name": call.name, "arguments": call.arguments,
                     "turn": m.index})
        result: ToolResult = await tool.run(call, o.call)
        m.tools.append(result.as_dict())
        o.on_event({"type": "tool", "state": "done", **result.as_dict(), "turn": m.index})
        o.conversation.add_tool(result.for_model())
        o.tool_done(result)
        if not result.ok:
            log.warning("turn %d: tool %s failed: %s", m.index, call.name, result.error)
            self._say(TOOL_APOLOGY, splitter, phrases, generated)
            return
        if isinstance(result.result, dict) and result.result.get("hang_up"):
            self.hang_up = True  # once this reply has been played (end_call, a transfer that went through)
        said = result.result.get("say") if isinstance(result.result, dict) else None
        if isinstance(said, str):  # the tool chose the words (a goodbye): no second LLM request
            self._say(said, splitter, phrases, generated)
            return
        answer = [*messages, {"role": "system", "content": result.for_model() + " Now answer the caller in "
                                                                         "one or two short spoken sentences."}]
        async for delta in o.llm.stream(answer):
            self._say(delta, splitter, phrases, generated)
            if self._long_enough(generated):
                break

    def _phrase(self, phrase: str, phrases: asyncio.Queue[str | None]) -> None:
        if self.metrics.first_phrase_at is None:
            self.metrics.first_phrase_at = self.owner.clock.now()
        phrases.put_nowait(phrase)

    async def _speak(self, phrases: asyncio.Queue[str | None], rid: str) -> None:
        async def source() -> AsyncIterator[str]:
            while (p := await phrases.get()) is not None:
                yield p

        async with contextlib.aclosing(self.owner.tts.stream_phrases(source(), rid)) as chunks:
            await self._play(chunks)
        await self.owner.playout.drain(rid)

    async def _play(self, chunks: AsyncIterator[Any]) -> None:
        o, m = self.owner, self.metrics
        async for chunk in chunks:
            if m.tts_first_chunk_at is None and chunk.samples.size:
                m.tts_first_chunk_at = o.clock.now()
            if chunk.final:
                m.tts_last_chunk_at = o.clock.now()
            if self.gate is not None and not self.gate.is_set():
                await self.gate.wait()  # a preemptive reply: held until the endpoint is confirmed
            if chunk.samples.size:
                o.reply_audible(self)
            await o.playout.play(chunk)


async def _said(text: str) -> AsyncIterator[str]:
    yield text


def _cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
