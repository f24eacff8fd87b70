"""The loaded components of the agent (models, LLM endpoint), shared by every session.

Loading is the slow part (models from disk, the embedded LLM server); a session is cheap to make.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from agent.api import Agent, with_greeting
from agent.config import AgentConfig
from agent.context import Conversation
from agent.decide import Mode
from agent.flows import FlowState
from agent.llm import LLMError, OpenAICompatibleLLM
from agent.llm_server import EmbeddedLLMServer
from agent.llm_supervisor import LLMSupervisor, SupervisorOptions
from agent.metrics import Metrics
from agent.prompts import PRIMER, SPEECH_SYSTEM_PROMPT
from agent.recording import CallRecorder
from agent.session import Session
from agent.turns import TurnManager, TurnOptions
from pipeline.audio import STT_RATE, resample
from pipeline.clock import Clock
from pipeline.stages import CallControl, STTEngine, TTSEngine
from stt.echo import EchoCanceller
from stt.engines import load_stt
from stt.transcriber import StreamingTranscriber
from stt.vad import SileroVAD, VADSegmenter
from tts.cache import PhraseCache
from tts.engines import load_tts
from tts.playout import Playout, Sink
from tts.stream import StreamingTTS
from tts.text import PhraseSplitter

log = logging.getLogger(__name__)


@dataclass
class AgentStack:
    config: AgentConfig
    stt: STTEngine  # the configured engine of stt/engines.py
    tts_engine: TTSEngine  # the configured voice of tts/engines.py
    llm: OpenAICompatibleLLM
    cache: PhraseCache = field(default_factory=PhraseCache)
    load_times: dict[str, float] = field(default_factory=dict)
    llm_supervisor: LLMSupervisor | None = None  # None: an unwatched LLM, always reported up
    agent: Agent | None = None  # what every session runs (`--agent FILE.py:NAME`); None: the plain assistant
    metrics: Metrics = field(default_factory=Metrics)  # Prometheus, fed by every session's events
    record_dir: Path | None = None  # `--record-dir`: each call as a stereo WAV + JSON (agent/recording.py)

    def observe(self, event: dict) -> None:
        """An event from an edge (the browser's own voice-to-voice figure) for the metrics."""
        self.metrics.observe(event)

    def metrics_text(self) -> bytes:
        """What `GET /metrics` serves (Prometheus text format)."""
        return self.metrics.text()

    def _default_agent(self) -> Agent:
        """No --agent: the configured system prompt (`system_prompt` in the config), no tools."""
        return Agent(instructions="", end_call=False) if self.config.system_prompt == SPEECH_SYSTEM_PROMPT \
            else _PromptAgent(self.config.system_prompt)

    def health(self) -> dict[str, Any]:
        """What `/health` serves: ``ok`` is False while the LLM is not up (replies would only apologise).

        STT and TTS run in this process: once loaded they are up for as long as it is."""
        if self.llm_supervisor is not None:
            llm = self.llm_supervisor.health()
        else:
            llm = {"state": "up", "restarts": 0, "last_error": None, "url": self.llm.base_url}
        return {"ok": llm["state"] == "up", "components": {"llm": llm, "stt": {"state": "up"}, "tts": {"state": "up"}}}

    # --- the speech API (transport/speech_api.py's SpeechStack) -----------------------------------
    @property
    def speech_rate(self) -> int:
        """The loaded voice's sample rate: what `synthesize_stream` yields."""
        return self.tts_engine.sample_rate

    async def synthesize_stream(self, text: str, speed: float = 1.0) -> AsyncGenerator[np.ndarray, None]:
        """`text` in the loaded voice, chunk by chunk as `StreamingTTS` makes them (phrase cache
        shared with the calls); `speed` scales the configured speaking rate (kept within 0.25–4)."""
        engine = self.tts_engine
        if speed != 1.0:  # a copy with its own rate: the loaded voice (shared by calls) is left as it is
            engine = copy.copy(engine)
            rate = min(4.0, max(0.25, engine.options.rate * speed))
            engine.options = dataclasses.replace(engine.options, rate=rate)
        tts = StreamingTTS(engine, self.cache, chunk_ms=self.config.tts.chunk_ms)
        async with contextlib.aclosing(tts.speak(text)) as chunks:
            async for chunk in chunks:
                if chunk.samples.size:
                    yield chunk.samples

    async def transcribe_audio(self, samples: np.ndarray, rate: int) -> str:
        """The words in mono float32 `samples` at `rate`, by the loaded recogniser in a worker thread."""

        def run() -> str:
            return self.stt.transcribe(resample(samples, rate, STT_RATE)).text

        return await asyncio.to_thread(run)

    def new_session(
        self, clock: Clock, sink: Sink, output_rate: int = 24_000, on_event: Callable[[dict], None] | None = None,
        turn_options: TurnOptions | None = None, call: CallControl | None = None, agent: Agent | None = None,
        edge: str = "call",
    ) -> Session:
        """One conversation's stages, wired: echo → VAD → transcriber → turn manager → TTS → playout → `sink`."""
        echo = EchoCanceller(self.config.echo) if self.config.echo_cancel else None

        recorder = CallRecorder(self.record_dir, edge) if self.record_dir is not None else None

        def sink_and_reference(frame):
            if echo is not None:
                echo.played(frame)  # what the user's speaker is about to play: the echo reference
            if recorder is not None:
                recorder.agent(frame)
            return sink(frame)

        playout = Playout(clock, sink_and_reference, sample_rate=output_rate)
        tts = StreamingTTS(self.tts_engine, self.cache, chunk_ms=self.config.tts.chunk_ms, working=clock.working)
        agent = agent or self.agent or self._default_agent()
        options = with_greeting(turn_options or self.config.turns, agent)
        mode = cast(Mode, self.config.llm.resolved_tool_mode())
        flow = agent.new_flow_state()  # where this call is in the agent's flow, if it has one
        # the chit-chat example exchange teaches the plain assistant its style; beside tools it taught
        # the 0.5B to answer in prose where a call was due (order desk eval: 2/5 with it)
        primer = PRIMER if not agent.box else ()
        # interim passes while the user speaks, a speculative final at the pause when replies may start there
        transcriber = StreamingTranscriber(self.stt, clock, options.transcriber_options(self.config.transcriber))
        edge_event = on_event or (lambda e: None)

        def observed(event: dict) -> None:  # every event feeds the metrics, then goes to the edge
            self.metrics.observe(event)
            edge_event(event)

        turns = TurnManager(
            transcriber, self.llm, tts, playout, clock,
            Conversation(agent.system_prompt(mode), primer, step=agent.step_note(flow)),
            options=options, on_event=observed, tools=agent.box, tool_mode=mode, call=call,
            flow=flow, flow_prompt=lambda state: agent.step_note(state) or "",
        )
        segmenter = VADSegmenter(self.config.vad, SileroVAD())
        self.metrics.call_started()

        def closed() -> None:
            self.metrics.call_ended()
            if recorder is not None:
                try:
                    recorder.close(turns.turns, turns.conversation.messages, call)
                except OSError as exc:  # a full disk must not take the server down with the call
                    log.error("could not write the recording %s: %s", recorder.base, exc)

        return Session(segmenter, turns, playout, clock, echo, on_closed=closed,
                       tap=recorder.user if recorder is not None else None)


@contextlib.asynccontextmanager
async def load_stack(
    config: AgentConfig, progress: Callable[[str], None] = lambda s: None,
    supervisor_options: SupervisorOptions | None = None, agent: Agent | None = None,
    record_dir: Path | None = None,
):
    """Load models and reach (or start) the LLM. Fails fast with a clear message on any of them.

    The LLM is supervised from then on: an embedded server that dies or hangs is restarted, a
    remote endpoint that goes away is probed until it answers again (`AgentStack.health()`)."""
    times: dict[str, float] = {}
    async with contextlib.AsyncExitStack() as stack:
        if config.llm.base_url:
            supervisor = LLMSupervisor(url=config.llm.base_url, api_key=config.llm.api_key,
                                       options=supervisor_options or config.supervisor)
        else:
            from pipeline.assets import ASSETS

            progress(f"starting the embedded LLM ({ASSETS[config.embedded_llm.model].description}, llama.cpp)…")
            server = EmbeddedLLMServer(
                model=config.embedded_llm.model,
                n_threads=config.embedded_llm.threads, n_parallel=config.embedded_llm.slots,
                n_ctx=config.embedded_llm.n_ctx * config.embedded_llm.slots,  # llama.cpp splits it over the slots
                warm_system_prompt=agent.system_prompt("grammar") if agent else config.system_prompt,
                warm_primer=PRIMER,
            )
            supervisor = LLMSupervisor(server=server, options=supervisor_options or config.supervisor)
        stack.push_async_callback(supervisor.aclose)
        llm_start = asyncio.create_task(supervisor.start())  # the embedded model loads while we load the rest
        stack.push_async_callback(_cancel, llm_start)  # runs before aclose: a failed load stops the start
        t = time.perf_counter()
        progress(f"loading speech recognition ({config.stt.url or 'Whisper ' + config.stt.model})…")
        stt = await asyncio.to_thread(load_stt, config.stt)
        times["stt_s"] = time.perf_counter() - t
        t = time.perf_counter()
        progress(f"loading the voice ({config.tts.voice})…")
        tts = await asyncio.to_thread(load_tts, config.tts)
        times["tts_s"] = time.perf_counter() - t
        cache = PhraseCache()
        greeting = (agent.greeting if agent is not None else None) or config.turns.greeting
        if greeting:  # ready before the first call is answered: its first audio is a cache hit
            t = time.perf_counter()
            splitter = PhraseSplitter(config.turns.first_phrase_min_words, config.turns.first_phrase_max_words)
            await StreamingTTS(tts, cache, chunk_ms=config.tts.chunk_ms).warm([*splitter.push(greeting),
                                                                                *splitter.flush()])
            times["greeting_s"] = time.perf_counter() - t
        t = time.perf_counter()
        await llm_start
        llm = OpenAICompatibleLLM(config.llm, endpoint=supervisor, prefill=not config.llm.base_url)
        stack.push_async_callback(llm.aclose)
        await llm.check()
        times["llm_s"] = time.perf_counter() - t
        progress("ready.")
        yield AgentStack(config, stt, tts, llm, cache=cache, load_times=times, llm_supervisor=supervisor,
                         agent=agent, record_dir=record_dir)


async def _cancel(task: asyncio.Task) -> None:
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)


__all__ = ["AgentStack", "load_stack", "LLMError"]


class _PromptAgent(Agent):
    """The config file's own `system_prompt`, used verbatim (no tools)."""

    def __init__(self, prompt: str) -> None:
        super().__init__(instructions="", end_call=False)
        self._prompt = prompt

    def system_prompt(self, mode: Mode, state: FlowState | None = None) -> str:
        return self._prompt
