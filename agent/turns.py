"""The turn manager: who has the floor, and one cancellation scope per agent reply.

Preemptive replies: while the user speaks, the LLM reads the conversation and each interim
transcript into its prompt cache (a prefill); at the first silence (SpeechPaused) the speculative
transcript starts a reply whose LLM and TTS run at once but whose audio is held behind a gate. At
the endpoint the reply is adopted (the gate opens) if the user did not resume; SpeechResumed
cancels it, unheard.

Flow: VAD events come in order from the session. At the endpoint the utterance is transcribed; a
non-empty transcript starts a reply. A reply is one task whose body is a TaskGroup of *thinking*
(LLM deltas → phrases) and *speaking* (phrases → TTS → playout). Barge-in cancels that one task:
the LLM stream is closed, synthesis stops, queued audio is flushed, and nothing outlives the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.context import Conversation
from agent.llm import LLMError
from pipeline.clock import Clock
from pipeline.events import SpeechEnded, SpeechPaused, SpeechResumed, SpeechStarted, Transcript, TurnMetrics, VADEvent
from stt.transcriber import AudioSource, StreamingTranscriber, TranscriberOptions
from tts.playout import Playout
from tts.stream import StreamingTTS
from tts.text import PhraseSplitter

log = logging.getLogger(__name__)

APOLOGY = "Sorry, I can't think right now. Please try again in a moment."


class State(enum.Enum):
    LISTENING = "listening"
    USER_SPEAKING = "user_speaking"
    THINKING = "thinking"
    SPEAKING = "speaking"


class Transcribe(Protocol):
    def transcribe(self, audio: np.ndarray): ...  # -> object with .text


class LLM(Protocol):
    def stream(self, messages: list[dict]): ...  # -> AsyncIterator[str]
    # optional: `async prefill(messages) -> bool` reads a prompt into the server's cache


@dataclass
class TurnOptions:
    """Barge-in: user speech confirmed by the VAD during a reply interrupts it. While the agent is
    heard, `barge_in_min_speech_ms` of voiced audio confirms speech (shorter than a turn's minimum,
    so the agent falls silent fast; the echo canceller keeps its own voice out of this)."""

    barge_in: bool = True
    barge_in_min_speech_ms: int = 128  # 4 VAD windows; shorter noises (a click, a tap) do not interrupt
    preemptive: bool = True  # at the first silence, start the final transcript and the reply (held);
    # before it, the LLM prefills the interim words (llm.prefill_while_listening)
    # Backchannels ("mm-hm", "yeah", "okay") during a reply: with this on, user speech during a
    # reply is judged at its end; a backchannel lets the agent talk on, anything else (or speech
    # longer than backchannel_max_ms) interrupts, timed from its onset. Off: interrupt at once.
    ignore_backchannels: bool = False
    backchannel_max_ms: int = 800
    # The first phrase of a reply may end at a comma after this many words, and is cut after the
    # max: the LLM writes ~4 words/s on 1 core, so each word waited for is ~250 ms of silence.
    first_phrase_min_words: int = 2
    first_phrase_max_words: int = 5
    greeting: str | None = None  # said when a session starts (before the user speaks); None: wait


@dataclass
class _Preempt:
    """A reply started at the first silence, waiting behind `gate` for the endpoint."""

    last_voiced: float
    gate: asyncio.Event
    task: asyncio.Task | None = None
    text: str = ""
    ready_at: float | None = None
    committed: bool = False


BACKCHANNELS = frozenset({
    "mm", "mmm", "mm hmm", "mhm", "hmm", "uh huh", "yeah", "yes", "yep", "yup", "okay", "ok", "right",
    "sure", "alright", "all right", "i see", "got it", "cool", "oh", "ah", "uh", "aha",
})


def is_backchannel(text: str) -> bool:
    """A short acknowledgement that is not a request for the floor ("Mm-hmm.", "Yeah, yeah.")."""
    words = re.sub(r"[^a-z' ]", " ", text.lower().replace("-", " ")).split()
    deduped = [w for i, w in enumerate(words) if i == 0 or w != words[i - 1]]
    return 0 < len(deduped) <= 3 and " ".join(deduped) in BACKCHANNELS


class TurnManager:
    """Owns the state machine, the conversation and the per-turn metrics of one session."""

    def __init__(
        self,
        stt: Transcribe,
        llm: LLM,
        tts: StreamingTTS,
        playout: Playout,
        clock: Clock,
        conversation: Conversation,
        options: TurnOptions | None = None,
        on_event: Callable[[dict], None] | None = None,
    ) -> None:
        self.llm, self.tts, self.playout, self.clock = llm, tts, playout, clock
        self.options = options or TurnOptions()
        # interim transcripts while the user speaks, and (preemptive) a final started speculatively
        # at the first silence (stt/transcriber.py); a bare engine gets a transcriber here
        self.transcriber = stt if isinstance(stt, StreamingTranscriber) else StreamingTranscriber(
            stt, clock, TranscriberOptions(speculative=self.options.preemptive))
        self.transcriber.on_transcript = self._interim
        self.conversation = conversation
        self.on_event = on_event or (lambda e: None)
        self.state = State.LISTENING
        self.turns: list[TurnMetrics] = []
        self._current: TurnMetrics | None = None
        self._reply: asyncio.Task | None = None
        self._rid: str | None = None  # TTS request id of the reply in flight
        self._pending_user: TurnMetrics | None = None
        self._preempt: _Preempt | None = None
        self.preempts_discarded = 0
        self._candidate: float | None = None  # onset of user speech being judged as a backchannel
        self.backchannels = 0
        self._background: set[asyncio.Task] = set()
        self._prefill: asyncio.Task | None = None  # the LLM reading the user's interim words
        self._words: asyncio.Task | None = None  # user words being added to history without a reply
        self._continuing = False  # the VAD cut a monologue: the next SpeechStarted is the same turn
        self.prefills = 0

    # --- events in ----------------------------------------------------------------------------
    async def handle(self, event: VADEvent) -> None:
        if isinstance(event, SpeechStarted):
            if self._reply is not None and not self._reply.done() and self.options.barge_in:
                if self.options.ignore_backchannels:
                    self._candidate = event.at  # judged when it ends, or cut in when it runs long
                else:
                    await self.barge_in(event.at)
            if not (self._continuing and self._pending_user is not None):
                self._pending_user = TurnMetrics(index=len(self.turns), user_started=event.at)
            self._continuing = False
            self.transcriber.handle(event)
            if self._candidate is None:
                self._set_state(State.USER_SPEAKING)
        elif isinstance(event, SpeechEnded) and event.continued:
            # a monologue cut by the VAD's length cap: the user talks on, so no reply yet; the
            # piece's words join the history, and the turn goes on in the next utterance
            self._continuing = True
            self._discard(self._preempt)
            self._preempt = None
            final = self.transcriber.handle(event)
            assert final is not None, "SpeechEnded always gives the final-transcript task"
            self._keep_words(final)
        elif isinstance(event, SpeechEnded) and self._candidate is not None:
            m = self._pending_user or TurnMetrics(index=len(self.turns), user_started=event.started)
            self._pending_user, onset, self._candidate = None, self._candidate, None
            final = self.transcriber.handle(event)
            assert final is not None, "SpeechEnded always gives the final-transcript task"
            self._spawn(self._judge(m, event, final, onset))
        elif isinstance(event, SpeechEnded):
            m = self._pending_user or TurnMetrics(index=len(self.turns), user_started=event.started)
            self._pending_user = None
            m.user_last_voiced, m.endpoint_at = event.last_voiced, event.decided_at
            self.turns.append(m)
            self._set_state(State.THINKING)
            final = self.transcriber.handle(event)
            assert final is not None, "SpeechEnded always gives the final-transcript task"
            p, self._preempt = self._preempt, None
            if p is not None and p.task is not None and not p.task.done() and p.last_voiced == event.last_voiced:
                m.preemptive = True
                self._commit(m, p)
                self._reply = p.task
            else:
                self._discard(p)
                self._start_reply(m, self._turn(m, final), f"turn-{m.index}")
        elif isinstance(event, SpeechPaused):
            self.transcriber.handle(event)  # the speculative final pass starts
            spec = self.transcriber.speculation()
            if (self.options.preemptive and spec is not None and self._pending_user is not None
                    and self._candidate is None):
                self._discard(self._preempt)
                p = self._preempt = _Preempt(event.last_voiced, asyncio.Event())
                p.task = asyncio.create_task(self._preemptive(self._pending_user, p, spec), name="preemptive")
        elif isinstance(event, SpeechResumed):
            self.transcriber.handle(event)  # the speculative final pass is discarded
            self._discard(self._preempt)
            self._preempt = None

    def _discard(self, p: _Preempt | None) -> None:
        """The user went on (or the speculation did not match): drop the held reply, unheard."""
        if p is not None and p.task is not None and not p.task.done():
            p.task.cancel()
            self.preempts_discarded += 1

    def _commit(self, m: TurnMetrics, p: _Preempt) -> None:
        """Endpoint confirmed: the held reply becomes this turn's reply; its audio may play."""
        p.committed = True
        self._current = m
        if p.ready_at is not None:  # else _preemptive records it when the transcript arrives
            self._record_user(m, p.text, p.ready_at)
        p.gate.set()

    def _record_user(self, m: TurnMetrics, text: str, at: float) -> None:
        m.stt_final_at, m.user_text = at, text
        self.conversation.add_user(text)
        self.on_event({"type": "transcript", "final": True, "text": text, "turn": m.index})

    async def _preemptive(self, m: TurnMetrics, p: _Preempt, spec: asyncio.Task) -> None:
        try:
            got = await asyncio.shield(spec)
            await self._words_kept()
        except asyncio.CancelledError:
            if p.committed and p.ready_at is None:  # the user spoke again before the reply began
                self._keep_words(spec, m)
            raise
        if not got or not got[0]:
            if p.committed:  # nothing was heard after all: behave as an empty final
                self._set_state(State.LISTENING)
            return
        p.text, p.ready_at = got
        if p.committed:
            self._record_user(m, p.text, p.ready_at)
        # the history already holds the user's words if committed
        messages = self.conversation.for_llm(None if p.committed else p.text)
        await self._reply_to(m, messages, gate=p.gate, committed=lambda: p.committed)

    def listen(self, now: float, source: AudioSource) -> None:
        """Audio arrived up to `now`: lets the transcriber run an interim pass on `source()`."""
        self.transcriber.update(now, source)
        onset = self._candidate
        if onset is not None and now - onset > self.options.backchannel_max_ms / 1000:
            self._candidate = None  # too long for a backchannel: the user wants the floor
            self._spawn(self._cut_in(onset))

    async def _cut_in(self, onset: float) -> None:
        await self.barge_in(onset)
        self._set_state(State.USER_SPEAKING)

    async def _judge(self, m: TurnMetrics, event: SpeechEnded, final: asyncio.Task[Transcript], onset: float) -> None:
        """Short user speech during a reply: a backchannel is let go; anything else interrupts."""
        transcript = await final
        if is_backchannel(transcript.text):
            self.backchannels += 1
            self.on_event({"type": "backchannel", "text": transcript.text, "at": onset})
            return
        await self.barge_in(onset)
        m.user_last_voiced, m.endpoint_at = event.last_voiced, event.decided_at
        self.turns.append(m)
        self._set_state(State.THINKING)
        self._start_reply(m, self._turn(m, final), f"turn-{m.index}")

    def _start_reply(self, m: TurnMetrics, body, name: str) -> None:
        """The reply in flight, and the turn a barge-in will mark as interrupted."""
        self._reply, self._current = asyncio.create_task(body, name=name), m

    def _keep_words(self, words: Awaitable, m: TurnMetrics | None = None) -> None:
        """User words no reply will answer (a monologue piece cut by the VAD, or a turn whose reply
        was cancelled before it began) still join the history, in order, once transcribed."""
        before = self._words

        async def keep() -> None:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            got = await words
            text, at = (got.text, got.at) if isinstance(got, Transcript) else (got or ("", None))
            if text:
                self.conversation.add_user(text)
                if m is not None:
                    m.user_text, m.stt_final_at = text, at
                self.on_event({"type": "transcript", "final": True, "text": text, "turn": m.index if m else None})

        self._words = self._spawn(keep())

    async def _words_kept(self) -> None:
        if self._words is not None:
            await asyncio.gather(self._words, return_exceptions=True)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _interim(self, t: Transcript) -> None:
        if not t.final:
            self.on_event({"type": "transcript", "final": False, "text": t.text, "turn": len(self.turns),
                           "at": t.at, "audio_end": t.audio_end})
            self._prefill_while_listening(t.text)

    def _prefill_while_listening(self, text: str) -> None:
        """Part of preemption: while the user still speaks, the LLM reads the conversation and
        their words so far, so the reply started at the pause only has their last words to read
        (~10 ms a token on 2 cores). One at a time, and never beside a reply."""
        prefill = getattr(self.llm, "prefill", None)
        if (prefill is None or not self.options.preemptive or self._pending_user is None
                or self._preempt is not None or self._candidate is not None
                or (self._reply is not None and not self._reply.done())
                or (self._prefill is not None and not self._prefill.done())):
            return
        self.prefills += 1
        self._prefill = asyncio.create_task(
            self._prefill_now(prefill, self.conversation.for_llm(text)),
            name="llm-prefill")

    async def _prefill_now(self, prefill, messages: list[dict]) -> None:
        async with self.clock.working():  # compute: a virtual clock must not skip past it
            await prefill(messages)

    def min_speech_ms(self, normal_ms: int) -> int:
        """Voiced audio that confirms user speech now: shorter while the agent is being heard."""
        if self.options.barge_in and self.state is State.SPEAKING:
            return min(normal_ms, self.options.barge_in_min_speech_ms)
        return normal_ms

    def speaking_since(self) -> float | None:
        """Media time the reply in flight was first heard, or None."""
        if self._rid is None or self._reply is None or self._reply.done():
            return None
        return self.playout.first_played_at(self._rid)

    def idle(self) -> bool:
        """True when nobody has the floor: no user speech, no reply in progress."""
        return (self._pending_user is None and not self._background
                and (self._reply is None or self._reply.done()))

    async def barge_in(self, at: float) -> None:
        """Cancel the reply in flight: one cancel, then record what the user actually heard."""
        task, m = self._reply, self._current
        if task is None or task.done():
            return
        t0 = time.perf_counter()
        if m is not None:  # before the cancel: the reply's own turn event must already say so
            m.interrupted = True
            m.barge_in_at = at
        if self._rid is not None:
            self.tts.cancel(self._rid)  # the TTS times its own acknowledgement from here
        task.cancel()
        self.playout.flush()
        await asyncio.gather(task, return_exceptions=True)
        if m is not None:
            m.tts["cancellation_latency_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        log.info("barge-in at %.2f: reply cancelled in %.1f ms", at, (time.perf_counter() - t0) * 1000)

    async def aclose(self) -> None:
        tasks = [*self._background, *([self._prefill] if self._prefill is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
            await asyncio.gather(self._reply, return_exceptions=True)
        await self.transcriber.aclose()

    async def wait_reply(self) -> None:
        if self._reply is not None:
            await asyncio.gather(self._reply, return_exceptions=True)

    # --- one turn -----------------------------------------------------------------------------
    async def _turn(self, m: TurnMetrics, final: asyncio.Task[Transcript]) -> None:
        try:  # often already done: the speculative pass at the pause was the final
            transcript = await asyncio.shield(final)
            await self._words_kept()
        except asyncio.CancelledError:  # the user spoke again before the reply began: keep their words
            self._keep_words(final, m)
            raise
        if not transcript.text:
            m.stt_final_at = transcript.at
            self.on_event({"type": "transcript", "final": True, "text": "", "turn": m.index})
            log.info("turn %d: no words recognised; still listening", m.index)
            self._set_state(State.LISTENING)
            return
        self._record_user(m, transcript.text, transcript.at)
        await self._reply_to(m, self.conversation.for_llm())

    def greet(self) -> None:
        """Say `options.greeting` as the agent's first turn: a reply like any other (barge-in cuts
        it, the history keeps what was heard), whose words come from the options, not the LLM."""
        if not self.options.greeting:
            return
        m = TurnMetrics(index=len(self.turns))
        self.turns.append(m)
        self._set_state(State.THINKING)
        self._start_reply(m, self._reply_to(m, [], script=self.options.greeting), "greeting")

    async def _reply_to(
        self, m: TurnMetrics, messages: list[dict], gate: asyncio.Event | None = None,
        committed: Callable[[], bool] = lambda: True, script: str | None = None,
    ) -> None:
        """One reply in one scope: thinking and speaking as children of a TaskGroup. Audio waits for
        `gate` (a preemptive reply); an uncommitted reply leaves no trace when cancelled."""
        rid = self._rid = self.tts.new_request_id()
        m.llm_request_at = m.llm_first_token_at = m.first_phrase_at = m.tts_first_chunk_at = None
        m.tts_last_chunk_at = None
        phrases: asyncio.Queue[str | None] = asyncio.Queue()
        generated: list[str] = []
        underruns_before = self.playout.underruns
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._think(m, messages, phrases, generated, script))
                tg.create_task(self._speak(m, phrases, rid, gate))
        finally:
            if not committed():
                self.playout.forget(rid)
                return  # noqa: B012 — a discarded preemptive reply: nothing was heard or said
            m.agent_text = "".join(generated).strip()
            m.heard_text = self.playout.heard_text(rid)
            m.first_audio_played_at = self.playout.first_played_at(rid)
            m.agent_stopped_at = self.playout.stopped_at(rid)
            if self.tts.last_metrics is not None and self.tts.last_metrics.request_id == rid:
                m.tts = {**self.tts.last_metrics.as_dict(), **m.tts}
            m.tts["playout_underrun_frames"] = self.playout.underruns - underruns_before  # output starved
            if m.heard_text or m.first_audio_played_at is not None:  # nothing played: nothing was said
                self.conversation.add_agent(m.heard_text, m.interrupted or _cancelled())
            self.playout.forget(rid)
            self.on_event({"type": "turn", "metrics": m.as_dict()})
            if self._reply is asyncio.current_task():
                self._set_state(State.LISTENING)

    async def _think(
        self, m: TurnMetrics, messages: list[dict], phrases: asyncio.Queue[str | None], generated: list[str],
        script: str | None = None,
    ) -> None:
        """LLM deltas (or a `script`) → phrases (first one short). An LLM failure becomes a spoken apology."""
        splitter = PhraseSplitter(self.options.first_phrase_min_words, self.options.first_phrase_max_words)
        m.llm_request_at = self.clock.now()
        try:
            async with self.clock.working():
                async for delta in (_said(script) if script is not None else self.llm.stream(messages)):
                    if m.llm_first_token_at is None:
                        m.llm_first_token_at = self.clock.now()
                    generated.append(delta)
                    for p in splitter.push(delta):
                        self._phrase(m, p, phrases)
            for p in splitter.flush():
                self._phrase(m, p, phrases)
        except LLMError as exc:
            log.error("LLM failed during turn %d: %s", m.index, exc)
            m.error = str(exc)
            generated[:] = [APOLOGY]
            self._phrase(m, APOLOGY, phrases)
        finally:
            phrases.put_nowait(None)

    def _phrase(self, m: TurnMetrics, phrase: str, phrases: asyncio.Queue[str | None]) -> None:
        if m.first_phrase_at is None:
            m.first_phrase_at = self.clock.now()
        phrases.put_nowait(phrase)

    async def _speak(
        self, m: TurnMetrics, phrases: asyncio.Queue[str | None], rid: str, gate: asyncio.Event | None
    ) -> None:
        async def source():
            while (p := await phrases.get()) is not None:
                yield p

        async with contextlib.aclosing(self.tts.stream_phrases(source(), rid)) as chunks:
            await self._play(m, chunks, gate)
        await self.playout.drain(rid)

    async def _play(self, m: TurnMetrics, chunks, gate: asyncio.Event | None) -> None:
        async for chunk in chunks:
            if m.tts_first_chunk_at is None and chunk.samples.size:
                m.tts_first_chunk_at = self.clock.now()
            if chunk.final:
                m.tts_last_chunk_at = self.clock.now()
            if gate is not None and not gate.is_set():
                await gate.wait()  # a preemptive reply: held until the endpoint is confirmed
            if chunk.samples.size and self.state is not State.SPEAKING:
                self._set_state(State.SPEAKING)
            await self.playout.play(chunk)

    def _set_state(self, state: State) -> None:
        if state is not self.state:
            self.state = state
            self.on_event({"type": "state", "state": state.value})


async def _said(text: str):
    yield text


def _cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
