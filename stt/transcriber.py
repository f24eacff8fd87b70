"""The streaming transcriber: a growing utterance in, interim transcripts and a timely final out.

Whisper is not a streaming model (every call encodes a whole window: at least 10 s of features, see
stt/whisper.py), so streaming here means scheduling whole-utterance passes well:

* interim passes while the user speaks, on a worker thread, at most one in flight; a pass that
  is due while another runs is skipped, never queued (the next tick picks up the newer audio);
  the next interim waits `interim_interval_s` after the previous pass ends, so the engine is idle
  about half the time and the speculative pass at a pause seldom waits;
* a speculative final pass at `SpeechPaused` (the first silence), so that by the endpoint,
  `hangover - pause` later, the text is (nearly) ready;
* `SpeechResumed` discards the speculation; at `SpeechEnded`, a speculation that saw the same last
  voiced audio *is* the final, otherwise one final pass runs on the whole utterance.

Long monologues arrive in pieces: the VAD cuts an utterance at `max_utterance_s`, and each piece
gets its own final, so no pass ever sees more than one piece of audio.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipeline.clock import Clock
from pipeline.events import SpeechEnded, SpeechPaused, SpeechResumed, SpeechStarted, Transcript, VADEvent
from pipeline.tasks import TaskSet

log = logging.getLogger(__name__)


class Engine(Protocol):
    """Blocking whole-utterance transcription (WhisperEngine, OpenAITranscriber, fakes)."""

    def transcribe(self, audio: np.ndarray): ...  # -> object with .text


@dataclass
class TranscriberOptions:
    """When passes run. Durations are media seconds of the utterance's audio."""

    interim: bool = True  # interim transcripts while the user speaks
    interim_interval_s: float = 0.6  # idle time after any pass before the next interim pass: interims use
    # at most about half of one core, and a pause rarely finds the engine busy
    first_interim_s: float = 0.6  # speech needed before the first interim pass
    speculative: bool = True  # start the final pass at SpeechPaused
    reuse_margin_s: float = 0.0  # an interim pass whose audio reaches this far past the last voiced window is the final

    def __post_init__(self) -> None:
        if self.interim_interval_s <= 0 or self.first_interim_s < 0:
            raise ValueError(f"interim_interval_s must be > 0 and first_interim_s >= 0, got "
                             f"{self.interim_interval_s}, {self.first_interim_s}")


AudioSource = Callable[[], "tuple[np.ndarray, float] | None"]


@dataclass
class _Pass:
    """One engine call: its audio's end (media time) and the task that runs it."""

    kind: str  # interim | speculative | final
    audio_end: float
    task: asyncio.Task  # -> (text, done_at)


@dataclass
class _Speculation:
    last_voiced: float
    task: asyncio.Task | None = None  # -> (text, done_at) | None
    discarded: bool = False


class StreamingTranscriber:
    """Turns VAD events (and the utterance audio so far) into interim and final `Transcript`s.

    Feed every VAD event to `handle` in order; `handle(SpeechEnded)` returns a task whose result is
    the final transcript. Call `update(now, source)` as audio arrives (each frame is fine: it is
    cheap unless an interim pass is due). `on_transcript` sees every transcript, interim and final.
    """

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        options: TranscriberOptions | None = None,
        on_transcript: Callable[[Transcript], None] | None = None,
    ) -> None:
        self.engine, self.clock = engine, clock
        self.options = options or TranscriberOptions()
        self.on_transcript = on_transcript or (lambda t: None)
        self.passes: Counter[str] = Counter()  # engine calls by kind, for tests and the bench
        self.reused = 0  # finals that were the speculative (or an interim) pass
        self.discarded = 0  # speculations thrown away because speech resumed
        self._inflight: _Pass | None = None  # the engine call running now (at most one)
        self._waiting = 0  # final/speculative passes waiting for the engine: interims yield to them
        self._utt = 0  # utterance generation: results of an older one are dropped
        self._speaking = False  # between SpeechStarted and SpeechEnded, not paused
        self._next_interim = float("inf")  # media time of audio needed before the next interim pass
        self._latest: tuple[float, str] | None = None  # newest interim result: (audio_end, text)
        self._spec: _Speculation | None = None
        self._tasks = TaskSet()  # passes and finals; aclose() cancels what still waits

    # --- events --------------------------------------------------------------------------------
    def handle(self, event: VADEvent) -> asyncio.Task[Transcript] | None:
        """Feed one VAD event; for `SpeechEnded`, return the task that yields the final transcript."""
        spec: _Speculation | None
        if isinstance(event, SpeechStarted):
            self._new_utterance()
            self._speaking = True
            self._next_interim = event.at + self.options.first_interim_s
        elif isinstance(event, SpeechPaused):
            self._speaking = False
            if self.options.speculative:
                spec = self._spec = _Speculation(event.last_voiced)
                spec.task = self._tasks.spawn(self._speculate(event, spec))
        elif isinstance(event, SpeechResumed):
            self._speaking = True
            if self._spec is not None:
                self._spec.discarded = True  # a pass already running finishes, and is ignored
                self.discarded += 1
                self._spec = None
        elif isinstance(event, SpeechEnded):
            spec = self._spec
            reuse = spec is not None and not spec.discarded and abs(spec.last_voiced - event.last_voiced) < 1e-6
            task = self._tasks.spawn(self._final(event, spec if reuse else None))
            self._new_utterance()
            return task
        return None

    def speculation(self) -> asyncio.Task | None:
        """The speculative final pass in flight (result: (text, done_at) or None), if any."""
        spec = self._spec
        return spec.task if spec is not None and not spec.discarded else None

    def update(self, now: float, source: AudioSource) -> None:
        """Audio has arrived up to `now`: start an interim pass if one is due and the engine is free.

        `source()` returns the current utterance's 16 kHz audio and its end time (or None); it is
        only called when a pass starts.
        """
        if (not self.options.interim or not self._speaking or now < self._next_interim
                or self._inflight is not None or self._waiting):
            return
        got = source()
        if got is None:
            return
        audio, end = got
        self._next_interim = end + self.options.interim_interval_s
        p = self._start("interim", audio, end)
        utt = self._utt

        def done(task: asyncio.Task) -> None:
            if task.cancelled() or task.exception() is not None or utt != self._utt:
                return
            text, at = task.result()
            previous = self._latest
            self._latest = (end, text)
            if text and (previous is None or previous[1] != text):
                self.on_transcript(Transcript(text, False, at, end))

        p.task.add_done_callback(done)

    async def aclose(self) -> None:
        """Stop waiting passes; an engine call already running in its thread is left to finish."""
        await self._tasks.cancel_all()

    # --- passes --------------------------------------------------------------------------------
    def _new_utterance(self) -> None:
        self._utt += 1
        self._speaking, self._spec, self._latest = False, None, None
        self._next_interim = float("inf")

    def _start(self, kind: str, audio: np.ndarray, audio_end: float) -> _Pass:
        """Run one engine call in a worker thread; the engine must be free."""
        assert self._inflight is None, "the engine is busy: passes must not queue behind each other"
        self.passes[kind] += 1

        async def run() -> tuple[str, float]:
            async with self.clock.working():
                result = await asyncio.to_thread(self.engine.transcribe, audio)
            return (result.text or "").strip(), self.clock.now()

        p = _Pass(kind, audio_end, self._tasks.spawn(run()))

        def free(_task: asyncio.Task) -> None:
            if self._inflight is p:
                self._inflight = None
            self._next_interim = max(self._next_interim, self.clock.now() + self.options.interim_interval_s)

        p.task.add_done_callback(free)
        self._inflight = p
        return p

    async def _exclusive(self, kind: str, audio: np.ndarray, audio_end: float, cover: float | None = None,
                         still_wanted: Callable[[], bool] = lambda: True) -> tuple[str, float] | None:
        """Wait for the engine, then run one pass. Meanwhile, a pass (or result) whose audio reaches
        `cover` is taken instead. Interim passes do not start while this waits."""
        self._waiting += 1
        try:
            async with self.clock.working():  # waiting for compute is compute: no virtual-time jump
                while True:
                    if cover is not None and self._latest is not None and self._latest[0] >= cover:
                        return self._latest[1], self.clock.now()
                    running = self._inflight
                    if running is None:
                        break
                    if cover is not None and running.kind == "interim" and running.audio_end >= cover:
                        return await asyncio.shield(running.task)
                    await asyncio.wait({running.task})
                if not still_wanted():
                    return None
                return await asyncio.shield(self._start(kind, audio, audio_end).task)
        finally:
            self._waiting -= 1

    async def _speculate(self, event: SpeechPaused, spec: _Speculation) -> tuple[str, float] | None:
        return await self._exclusive(
            "speculative", event.audio, event.last_voiced, cover=event.last_voiced + self.options.reuse_margin_s,
            still_wanted=lambda: not spec.discarded,
        )

    async def _final(self, event: SpeechEnded, spec: _Speculation | None) -> Transcript:
        got = None
        if spec is not None:
            try:
                got = await asyncio.shield(spec.task)  # type: ignore[arg-type]
            except Exception:  # the speculation failed: the final pass below retries once
                log.exception("speculative STT pass failed; running the final pass")
        if got is not None:
            self.reused += 1
            text = got[0]
        else:
            got = await self._exclusive("final", event.audio, event.last_voiced)
            text = got[0] if got else ""
        final = Transcript(text, True, self.clock.now(), event.last_voiced)
        self.on_transcript(final)
        return final
