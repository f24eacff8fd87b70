"""The turn manager: who has the floor. Events in; replies started, held, adopted and cut.

The manager is the floor policy of one session; everything else it delegates:
* listening: VAD events and audio go to the `StreamingTranscriber` it was given (built beside it by
  `AgentStack.new_session`), which returns interim transcripts and a timely final;
* one reply: `agent/reply.py`, one task (one cancellation scope) from the final transcript to the
  last sample played; barge-in is `Reply.interrupt`, the one way back;
* preemption: `agent/preempt.py`, a reply started at the first silence and held behind a gate
  until the endpoint confirms the user is done (or dropped, unheard, when they go on).

What stays here: when user speech interrupts (barge-in at once, or judged at its end when
backchannels are ignored), which user words join the history and in what order, and when the LLM
may read the user's interim words ahead of the reply (prefill while listening). `Floor` lists every
state this can be in; `TurnManager.floor` is a snapshot of it. `State`, its visible part, is what
the `{"type": "state"}` events carry to the page.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agent.context import Conversation
from agent.decide import Mode
from agent.flows import FlowState
from agent.preempt import PreemptGate
from agent.reply import APOLOGY, LLM, Reply
from agent.tools import ToolBox, ToolResult
from pipeline.clock import Clock
from pipeline.events import SpeechEnded, SpeechPaused, SpeechResumed, SpeechStarted, Transcript, TurnMetrics, VADEvent
from pipeline.stages import CallControl
from pipeline.tasks import TaskSet
from stt.transcriber import AudioSource, StreamingTranscriber, TranscriberOptions
from tts.playout import Playout
from tts.stream import StreamingTTS

__all__ = ["APOLOGY", "BACKCHANNELS", "LLM", "Floor", "State", "TurnManager", "TurnOptions", "is_backchannel"]

log = logging.getLogger(__name__)


class State(enum.Enum):
    """Who has the floor, as the page shows it (`{"type": "state", "state": value}` events)."""

    LISTENING = "listening"
    USER_SPEAKING = "user_speaking"
    THINKING = "thinking"
    SPEAKING = "speaking"


@dataclass(frozen=True)
class Floor:
    """Every state of the turn manager, in one place: `state` is what the page sees, the rest what
    it acts on besides. The usual combinations:

    * idle: LISTENING, nothing else.
    * the user talks: USER_SPEAKING, `user_turn`; `held_reply` after a pause (a guess, unheard);
      `continuing` once the VAD has cut a long monologue (the next utterance is the same turn).
    * the agent answers: THINKING (reply started, no audio yet), then SPEAKING; `replying`.
    * the user talks over a reply: barge-in cancels it at once (back to USER_SPEAKING), or, with
      backchannels ignored, the reply goes on while `judging_since` the speech's onset: SPEAKING
      with `user_turn` until it ends (a backchannel: talk on) or runs long (cut in).
    With `barge_in` off, a reply may play on under USER_SPEAKING until the next one replaces it.
    """

    state: State
    user_turn: bool  # user speech started and its turn not yet ended (its metrics are pending)
    continuing: bool  # the last utterance was cut at the VAD's length cap: the next one continues it
    judging_since: float | None  # onset of user speech during a reply, judged as backchannel or not
    held_reply: bool  # a preemptive reply started at the pause, not yet adopted or dropped (agent/preempt.py)
    replying: bool  # a reply is in flight: reading its prompt, thinking or speaking (agent/reply.py)
    prefilling: bool  # the LLM is reading the user's interim words
    side_tasks: int  # judgments, cut-ins, and user words still joining the history


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
    # A reply stops at the first sentence end after this many words (the LLM is closed there): a
    # misheard question once got a 200-token answer, a minute of monologue. 0: no cap.
    max_reply_words: int = 60

    def transcriber_options(self, base: TranscriberOptions | None = None) -> TranscriberOptions:
        """What this policy asks of the transcriber (built beside it, `AgentStack.new_session`): the
        configured passes (`base`, the [transcriber] section), with a speculative final at the first
        silence only when a reply may start there."""
        base = base or TranscriberOptions()
        return dataclasses.replace(base, speculative=base.speculative and self.preemptive)


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
    """The floor policy of one session: its conversation, its turns' metrics, the reply in flight."""

    def __init__(
        self,
        transcriber: StreamingTranscriber,
        llm: LLM,
        tts: StreamingTTS,
        playout: Playout,
        clock: Clock,
        conversation: Conversation,
        options: TurnOptions | None = None,
        on_event: Callable[[dict], None] | None = None,
        tools: ToolBox | None = None,
        tool_mode: Mode = "grammar",
        call: CallControl | None = None,
        flow: FlowState | None = None,
        flow_prompt: Callable[[FlowState], str] | None = None,
    ) -> None:
        self.llm, self.tts, self.playout, self.clock = llm, tts, playout, clock
        # what a reply may do besides talking (agent/tools.py), how the LLM is asked to choose
        # (agent/decide.py), and the call it acts on (set by the edge; None: a call with no controls)
        self._tools, self.tool_mode, self.call = tools or ToolBox(), tool_mode, call
        # a call flow (agent/flows.py): the node decides the tools; `flow_prompt` renders the note
        # on the step the call is at (told after the history, `Conversation.step`)
        self.flow, self._flow_prompt = flow, flow_prompt
        self.options = options or TurnOptions()
        # interim transcripts while the user speaks, and (preemptive) a final started speculatively
        # at the first silence; the manager shows the interims and prefills the LLM with them
        self.transcriber = transcriber
        self.transcriber.on_transcript = self._interim
        self.conversation = conversation
        self.on_event: Callable[[dict], None] = on_event or (lambda e: None)
        self.turns: list[TurnMetrics] = []
        self.backchannels = 0  # user speech during a reply that let the agent talk on
        self.prefills = 0
        # the floor (documented together in `Floor`)
        self.state = State.LISTENING
        self._pending_user: TurnMetrics | None = None  # Floor.user_turn
        self._continuing = False  # Floor.continuing
        self._candidate: float | None = None  # Floor.judging_since
        self._preempts = PreemptGate()  # Floor.held_reply
        self._reply: Reply | None = None  # Floor.replying: the reply in flight, or the last one
        self._prefill: asyncio.Task | None = None  # Floor.prefilling
        self._tasks = TaskSet("turns")  # Floor.side_tasks
        self._words: asyncio.Task | None = None  # the last user words joining the history without a reply

    @property
    def tools(self) -> ToolBox:
        """The tools of this moment: the flow node's, or the agent's."""
        return self.flow.tools if self.flow is not None else self._tools

    def tool_done(self, result: ToolResult) -> None:
        """A reply's tool call finished: the flow may move on (its next turn is told the new step)."""
        if self.flow is None or (node := self.flow.after(result)) is None:
            return
        if self._flow_prompt is not None:
            self.conversation.step = self._flow_prompt(self.flow)
        self.on_event({"type": "flow", "node": node, "after": result.call.name})

    @property
    def floor(self) -> Floor:
        return Floor(
            state=self.state, user_turn=self._pending_user is not None, continuing=self._continuing,
            judging_since=self._candidate, held_reply=self._preempts.held is not None,
            replying=self._replying(), prefilling=self._prefill is not None and not self._prefill.done(),
            side_tasks=len(self._tasks),
        )

    @property
    def preempts_discarded(self) -> int:
        """Preemptive replies dropped unheard (the user went on)."""
        return self._preempts.discarded

    # --- events in ----------------------------------------------------------------------------
    async def handle(self, event: VADEvent) -> None:
        """One VAD event, in order; the transcriber sees every one of them."""
        if isinstance(event, SpeechStarted):
            if self._replying() and self.options.barge_in:
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
            self._preempts.discard()
            self.keep_words(self._final(event))
        elif isinstance(event, SpeechEnded) and self._candidate is not None:
            m = self._pending_user or TurnMetrics(index=len(self.turns), user_started=event.started)
            self._pending_user, onset, self._candidate = None, self._candidate, None
            final = self._final(event)
            self._tasks.spawn(self._judge(m, event, final, onset), "judge")
        elif isinstance(event, SpeechEnded):
            m = self._pending_user or TurnMetrics(index=len(self.turns), user_started=event.started)
            self._pending_user = None
            m.user_last_voiced, m.endpoint_at = event.last_voiced, event.decided_at
            self.turns.append(m)
            self._set_state(State.THINKING)
            final = self._final(event)
            p = self._preempts.take(event)
            if p is not None:  # its metrics are `m`: it was started for this utterance's turn
                m.preemptive = True
                self._reply = p.commit(self, m)
            else:
                self._answer(m, final)
        elif isinstance(event, SpeechPaused):
            self.transcriber.handle(event)  # the speculative final pass starts
            spec = self.transcriber.speculation()
            if (self.options.preemptive and spec is not None and self._pending_user is not None
                    and self._candidate is None):
                self._preempts.start(self, self._pending_user, event.last_voiced, spec)
        elif isinstance(event, SpeechResumed):
            self.transcriber.handle(event)  # the speculative final pass is discarded
            self._preempts.discard()

    def listen(self, now: float, source: AudioSource) -> None:
        """Audio arrived up to `now` (the session calls this once per input frame, after its VAD
        events): the transcriber may run an interim pass on `source()`, and user speech being
        judged as a backchannel that has run too long cuts in. Both run on media time, so both
        ride on this one tick."""
        self.transcriber.update(now, source)
        onset = self._candidate
        if onset is not None and now - onset > self.options.backchannel_max_ms / 1000:
            self._candidate = None  # too long for a backchannel: the user wants the floor
            self._tasks.spawn(self._cut_in(onset), "cut-in")

    def _final(self, event: SpeechEnded) -> asyncio.Task[Transcript]:
        final = self.transcriber.handle(event)
        assert final is not None, "SpeechEnded always gives the final-transcript task"
        return final

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
        self._answer(m, final)

    # --- the user's words ---------------------------------------------------------------------
    def record_user(self, m: TurnMetrics, text: str, at: float) -> None:
        """Turn `m`'s final words: into the metrics, the history and the page."""
        m.stt_final_at, m.user_text = at, text
        self.conversation.add_user(text)
        self.on_event({"type": "transcript", "final": True, "text": text, "turn": m.index})

    async def user_typed(self, text: str) -> None:
        """A user turn that came as text, not speech (keypad digits on a phone call): it cuts a reply
        in flight, as speech would, and is answered as if `text` were its final transcript."""
        now = self.clock.now()
        if self._replying():
            await self.barge_in(now)
        m = TurnMetrics(index=len(self.turns), user_started=now, user_last_voiced=now, endpoint_at=now)
        self.turns.append(m)
        self._set_state(State.THINKING)
        final: asyncio.Future[Transcript] = asyncio.get_running_loop().create_future()
        final.set_result(Transcript(text, True, now, now))
        self._answer(m, final)

    def keep_words(self, words: Awaitable[Any], m: TurnMetrics | None = None) -> None:
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

        self._words = self._tasks.spawn(keep(), "keep-words")

    async def words_kept(self) -> None:
        """Wait until user words kept without a reply are in the history (a reply reads it next)."""
        if self._words is not None:
            await asyncio.gather(self._words, return_exceptions=True)

    def heard_nothing(self) -> None:
        self._set_state(State.LISTENING)

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
                or self._preempts.held is not None or self._candidate is not None
                or self._replying()
                or (self._prefill is not None and not self._prefill.done())):
            return
        self.prefills += 1
        self._prefill = asyncio.create_task(
            self._prefill_now(prefill, self.conversation.for_llm(text)),
            name="llm-prefill")

    async def _prefill_now(self, prefill: Callable[[list[dict]], Awaitable[Any]], messages: list[dict]) -> None:
        async with self.clock.working():  # compute: a virtual clock must not skip past it
            await prefill(messages)

    # --- questions from the session -----------------------------------------------------------
    def min_speech_ms(self, normal_ms: int) -> int:
        """Voiced audio that confirms user speech now: shorter while the agent is being heard."""
        if self.options.barge_in and self.state is State.SPEAKING:
            return min(normal_ms, self.options.barge_in_min_speech_ms)
        return normal_ms

    def speaking_since(self) -> float | None:
        """Media time the reply in flight was first heard, or None."""
        reply = self._reply
        return None if reply is None or reply.done() else reply.first_played_at()

    def idle(self) -> bool:
        """True when nobody has the floor: no user speech, no reply in progress."""
        floor = self.floor
        return not floor.user_turn and not floor.side_tasks and not floor.replying

    # --- replies ------------------------------------------------------------------------------
    def greet(self) -> None:
        """Say `options.greeting` as the agent's first turn: a reply like any other (barge-in cuts
        it, the history keeps what was heard), whose words come from the options, not the LLM."""
        if not self.options.greeting:
            return
        m = TurnMetrics(index=len(self.turns), call_answered_at=self.clock.now())
        self.turns.append(m)
        self._set_state(State.THINKING)
        self._reply = Reply(self, m, name="greeting", script=self.options.greeting)

    def _answer(self, m: TurnMetrics, final: asyncio.Future[Transcript]) -> None:
        """Start the reply to turn `m` (the reply a barge-in will cut): first its final transcript."""
        self._reply = Reply(self, m, lambda: self._heard(m, final), name=f"turn-{m.index}")

    async def _heard(self, m: TurnMetrics, final: asyncio.Future[Transcript]) -> list[dict] | None:
        """The reply's prompt: the user's final words join the history; none: no reply, listen on."""
        try:  # often already done: the speculative pass at the pause was the final
            transcript = await asyncio.shield(final)
            await self.words_kept()
        except asyncio.CancelledError:  # the user spoke again before the reply began: keep their words
            self.keep_words(final, m)
            raise
        if not transcript.text:
            m.stt_final_at = transcript.at
            self.on_event({"type": "transcript", "final": True, "text": "", "turn": m.index})
            log.info("turn %d: no words recognised; still listening", m.index)
            self._set_state(State.LISTENING)
            return None
        self.record_user(m, transcript.text, transcript.at)
        return self.conversation.for_llm()

    def reply_audible(self, reply: Reply) -> None:
        self._set_state(State.SPEAKING)

    def reply_ended(self, reply: Reply) -> None:
        if reply is self._reply:  # not one a newer reply has replaced
            self._set_state(State.LISTENING)

    def _replying(self) -> bool:
        return self._reply is not None and not self._reply.done()

    async def barge_in(self, at: float) -> None:
        """Cancel the reply in flight (the one way back, `Reply.interrupt`)."""
        if self._reply is not None:
            await self._reply.interrupt(at)

    async def wait_reply(self) -> None:
        if self._reply is not None:
            await self._reply.wait()

    async def aclose(self) -> None:
        """Stop everything this manager started, then the transcriber it was given."""
        if self._prefill is not None:
            self._prefill.cancel()
        await self._tasks.cancel_all()
        if self._prefill is not None:
            await asyncio.gather(self._prefill, return_exceptions=True)
        held = self._preempts.held  # a guess held at a pause when the call ended: it must not outlive it
        for reply in (self._reply, held.reply if held is not None else None):
            if reply is not None and not reply.done():
                reply.cancel()
                await reply.wait()
        await self.transcriber.aclose()

    def _set_state(self, state: State) -> None:
        if state is not self.state:
            self.state = state
            self.on_event({"type": "state", "state": state.value})
