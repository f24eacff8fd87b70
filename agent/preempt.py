"""The preemptive-reply gate: a reply started at the user's first silence, heard only if they were done.

At `SpeechPaused` the transcriber starts a speculative final pass (stt/transcriber.py) and a
`Preempt` starts a reply on it at once: its LLM and TTS run, but its audio waits behind `gate`. At
the endpoint (`SpeechEnded` with the same last voiced audio) the turn manager adopts it: `commit`
opens the gate and the reply, already synthesised, plays a hangover sooner than one started then.
`SpeechResumed`, a monologue cut by the VAD, or an endpoint on other audio discard it: cancelled
unheard, and since it was never committed it leaves nothing behind (agent/reply.py).

Who decides is the turn manager (agent/turns.py); this file holds what one guess is, how it turns
into a prompt, and the one-at-a-time bookkeeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.reply import Reply, ReplyOwner
from pipeline.events import SpeechEnded, TurnMetrics


class Host(ReplyOwner, Protocol):
    """What a preemptive reply needs from the turn manager besides a reply's stages: the user's
    words reach the history in order, whether this guess is adopted or not."""

    def record_user(self, m: TurnMetrics, text: str, at: float) -> None: ...
    def keep_words(self, words: Awaitable[Any], m: TurnMetrics | None = None) -> None: ...
    async def words_kept(self) -> None: ...

    def heard_nothing(self) -> None:
        """The adopted turn had no words after all: the floor is free again."""


@dataclass(eq=False)
class Preempt:
    """A reply started at the first silence, waiting behind `gate` for the endpoint."""

    last_voiced: float  # the pause it answers: adopted only by an endpoint on the same audio
    metrics: TurnMetrics  # the user's turn in progress, which becomes the reply's turn
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    reply: Reply | None = None
    text: str = ""  # the speculative transcript, once ready
    ready_at: float | None = None
    committed: bool = False  # the endpoint adopted it: its audio may play, its words are history

    def live(self) -> bool:
        return self.reply is not None and not self.reply.done()

    def commit(self, host: Host, m: TurnMetrics) -> Reply:
        """Endpoint confirmed: the held reply becomes turn `m`'s reply; its audio may play."""
        assert self.reply is not None, "a Preempt is held only once its reply has started"
        self.committed = True
        if self.ready_at is not None:  # else `prompt` records it when the transcript arrives
            host.record_user(m, self.text, self.ready_at)
        self.gate.set()
        return self.reply

    async def prompt(self, host: Host, spec: asyncio.Task) -> list[dict] | None:
        """The reply's prompt: the speculative transcript. Uncommitted, the user's words are only
        in the prompt; committed (the endpoint came first), they join the history as well."""
        try:
            got = await asyncio.shield(spec)
            await host.words_kept()
        except asyncio.CancelledError:
            if self.committed and self.ready_at is None:  # the user spoke again before the reply began
                host.keep_words(spec, self.metrics)
            raise
        if not got or not got[0]:
            if self.committed:  # nothing was heard after all: behave as an empty final
                host.heard_nothing()
            return None
        self.text, self.ready_at = got
        if self.committed:
            host.record_user(self.metrics, self.text, self.ready_at)
        # the history already holds the user's words if committed
        return host.conversation.for_llm(None if self.committed else self.text)


class PreemptGate:
    """At most one held guess at a time, and a count of those thrown away unheard."""

    def __init__(self) -> None:
        self.held: Preempt | None = None
        self.discarded = 0

    def start(self, host: Host, m: TurnMetrics, last_voiced: float, spec: asyncio.Task) -> Preempt:
        """At the first silence: drop any older guess, and start a reply on the speculative final."""
        self.discard()
        p = self.held = Preempt(last_voiced, m)
        p.reply = Reply(host, m, lambda: p.prompt(host, spec), name="preemptive", gate=p.gate,
                        committed=lambda: p.committed)
        return p

    def discard(self) -> None:
        """The user went on: drop the held reply, unheard."""
        p, self.held = self.held, None
        self._drop(p)

    def take(self, event: SpeechEnded) -> Preempt | None:
        """At the endpoint: the held guess if it answers this audio and still runs, for the caller
        to commit; any other is dropped. Either way nothing is held after."""
        p, self.held = self.held, None
        if p is not None and p.live() and p.last_voiced == event.last_voiced:
            return p
        self._drop(p)
        return None

    def _drop(self, p: Preempt | None) -> None:
        if p is not None and p.reply is not None and p.live():
            p.reply.cancel()
            self.discarded += 1
