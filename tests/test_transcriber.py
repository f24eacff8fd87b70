"""The streaming transcriber: interim transcripts, the speculative final, bad input, long input.

Real components, in the tests marked `models`: the Silero VAD and, in most, the default Whisper
model (`stt.whisper.DEFAULT_STT_MODEL`) on the shared recordings in tests/data. Fakes: `FakeSTT`
(tests/fakes.py) as `fake_engine` (records each call's audio, sleeps a fixed time, answers with the
audio length so a test can tell which pass produced the final) for the scheduling rules, which real
models cannot make exact; the unmarked tests use only it, scripted events, or no engine at all. All
run on the virtual clock, which charges compute at its real duration (pipeline/clock.py).
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc

import numpy as np
import pytest
import soxr

from agent.benches.stt import edit_distance, load_clips, normalize, number_words, room, stream_audio, wer
from pipeline.clock import VirtualClock
from pipeline.events import SpeechEnded, SpeechPaused, SpeechResumed, SpeechStarted
from stt.transcriber import StreamingTranscriber, TranscriberOptions
from stt.vad import SileroVAD, VADOptions
from stt.whisper import DEFAULT_STT_MODEL, WhisperEngine, WhisperOptions
from tests.fakes import FakeSTT

RATE = 16_000
FINAL_ONLY = TranscriberOptions(interim=False)
# WER bounds for the default model on the shared clips (stt-bench measures tiny.en at ~6% on
# LibriVox and ~12% on the CMU cards, base at ~2% / ~12%; "clubs" is often heard as "clothes")
WER_BOUND = {"tiny.en": (0.10, 0.20), "base": (0.05, 0.20)}.get(DEFAULT_STT_MODEL, (0.10, 0.20))


@pytest.fixture(scope="module")
def engine() -> WhisperEngine:
    return WhisperEngine(WhisperOptions())


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD()


@pytest.fixture(scope="module")
def clips() -> dict:
    return {c.name: c for c in load_clips()}


def padded(x: np.ndarray, rate: int = RATE, lead: float = 0.5, tail: float = 1.0) -> np.ndarray:
    return np.concatenate([room(lead, rate, 1), x, room(tail, rate, 2)]).astype(np.float32)


def fake_engine(delay: float = 0.05) -> FakeSTT:
    """Sleeps `delay` per call (in its worker thread) and answers "<n> samples"; records every call."""
    return FakeSTT(answer=lambda audio: f"{len(audio)} samples", delay_s=delay)


class Checked:
    """Wraps a real engine: records audio lengths and fails on non-finite samples."""

    def __init__(self, engine: WhisperEngine) -> None:
        self.engine, self.calls = engine, []

    def transcribe(self, audio: np.ndarray):
        assert np.isfinite(audio).all(), "non-finite samples reached the STT engine"
        self.calls.append(len(audio))
        return self.engine.transcribe(audio)


# --- text normalization (no model) ------------------------------------------------------------------


def test_normalization_for_wer() -> None:
    assert normalize("And Mr. John Dashwood, ill-disposed: 10 of clubs!") == \
        "and mister john dashwood ill disposed ten of clubs".split()
    assert number_words(0) == "zero" and number_words(105) == "one hundred five"
    assert number_words(2_340_017) == "two million three hundred forty thousand seventeen"
    assert edit_distance("a b c".split(), "a x c d".split()) == 2
    assert wer("go forward ten meters", "Go forward 10 meters.") == 0.0


# --- scheduling rules, on fake engines ------------------------------------------------------------


@pytest.mark.models
async def test_final_reuses_the_speculative_pass(clips, vad) -> None:
    """Fake engine, real VAD: one pause, no resume → one engine call, made at the pause, is the final."""
    eng = fake_engine(delay=0.05)
    run = await stream_audio(eng, padded(clips["goforward"].audio), RATE, VirtualClock(), FINAL_ONLY, vad=vad)
    (ended, final), = run.finals
    assert [type(e) for e in run.events] == [SpeechStarted, SpeechPaused, SpeechEnded]
    assert eng.calls == [len(run.events[1].audio)]  # the SpeechPaused audio, nothing after the endpoint
    assert run.transcriber.passes == {"speculative": 1} and run.transcriber.reused == 1
    assert final.text == f"{len(run.events[1].audio)} samples"
    assert final.final and final.audio_end == ended.last_voiced
    assert 0 <= final.at - ended.decided_at < 0.03  # ready at the endpoint: the pass ran during the hangover


@pytest.mark.models
async def test_without_speculation_the_final_pass_starts_at_the_endpoint(clips, vad) -> None:
    """The control for the test above: same input, speculation off → the pass's time is added."""
    eng = fake_engine(delay=0.2)
    opts = TranscriberOptions(interim=False, speculative=False)
    run = await stream_audio(eng, padded(clips["goforward"].audio), RATE, VirtualClock(), opts, vad=vad)
    (ended, final), = run.finals
    assert run.transcriber.passes == {"final": 1} and eng.calls == [len(ended.audio)]
    assert final.at - ended.decided_at >= 0.2


@pytest.mark.models
async def test_speculative_final_is_discarded_when_speech_resumes(clips, vad) -> None:
    """Fake engine, real VAD: "he was not ... an ill disposed young man" has a pause longer than
    SpeechPaused needs and shorter than the hangover. The first speculation is dropped; the final is
    the last one, which heard the whole sentence."""
    run = await stream_audio(fake_engine(0.05), padded(clips["librivox-0880"].audio), RATE, VirtualClock(),
                             FINAL_ONLY, vad=vad)
    kinds = [type(e) for e in run.events]
    assert kinds[0] is SpeechStarted and kinds[-2:] == [SpeechPaused, SpeechEnded] and SpeechResumed in kinds
    assert SpeechStarted not in kinds[1:]  # one utterance
    tr = run.transcriber
    assert tr.discarded == kinds.count(SpeechResumed) and tr.reused == 1
    pauses = [e for e in run.events if isinstance(e, SpeechPaused)]
    (ended, final), = run.finals
    assert final.text == f"{len(pauses[-1].audio)} samples"  # the last speculation, not an earlier one
    assert len(pauses[-1].audio) > len(pauses[0].audio) + RATE // 2
    assert [t.final for t in run.transcripts] == [True]


async def test_speculation_is_not_reused_when_speech_came_back() -> None:
    """Scripted events: pause, resume, and an end whose last voiced audio is later → a final pass runs."""
    clock, eng = VirtualClock(), fake_engine(0.01)
    tr = StreamingTranscriber(eng, clock, FINAL_ONLY)
    audio = np.full(16000, 0.1, np.float32)
    tr.handle(SpeechStarted(0.0))
    tr.handle(SpeechPaused(1.0, audio[:8000]))
    await asyncio.sleep(0.005)  # the speculative pass is running in its thread
    tr.handle(SpeechResumed(1.2))
    tr.handle(SpeechPaused(1.4, audio[:12000]))
    tr.handle(SpeechResumed(1.45))  # resumed before this speculation even started: it never runs
    final = await tr.handle(SpeechEnded(0.0, 1.5, 2.0, audio))
    assert final.text == "16000 samples" and tr.passes == {"speculative": 1, "final": 1}
    assert eng.calls == [8000, 16000] and tr.discarded == 2 and tr.reused == 0
    await tr.aclose()


@pytest.mark.models
async def test_at_most_one_pass_in_flight_and_interims_come_before_the_final(clips, vad) -> None:
    """Fake engine slower than the interim interval: passes never overlap, and none queues up."""
    eng = fake_engine(delay=0.4)
    run = await stream_audio(eng, padded(clips["librivox-0870"].audio), RATE, VirtualClock(),
                             TranscriberOptions(interim_interval_s=0.3), vad=vad)
    assert eng.max_active == 1
    tr = run.transcriber
    assert sum(tr.passes.values()) == len(eng.calls)
    assert tr.passes["interim"] >= 4
    # ~7 s of speech: with 0.4 s passes and 0.3 s idle between, about 10 interims; never a backlog
    assert tr.passes["interim"] <= 7.5 / 0.7 + 1
    flags = [t.final for t in run.transcripts]
    assert flags[-1] is True and flags.count(True) == 1 and flags[0] is False


# --- the real default model on the shared recordings ----------------------------------------------


@pytest.mark.models
async def test_wer_on_librivox_and_cmu_clips(engine, vad) -> None:
    """Real model + real VAD: every clip streamed; word error rate of the finals per corpus."""
    edits, words = {"librivox": 0, "cmu": 0}, {"librivox": 0, "cmu": 0}
    for clip in load_clips():
        run = await stream_audio(engine, padded(clip.audio, clip.rate), clip.rate, VirtualClock(), FINAL_ONLY, vad=vad)
        assert len(run.finals) == 1, clip.name
        ref = normalize(clip.reference)
        edits[clip.group] += edit_distance(ref, normalize(run.text))
        words[clip.group] += len(ref)
    librivox, cmu = edits["librivox"] / words["librivox"], edits["cmu"] / words["cmu"]
    assert librivox <= WER_BOUND[0], f"{DEFAULT_STT_MODEL}: LibriVox WER {librivox:.1%}"
    assert cmu <= WER_BOUND[1], f"{DEFAULT_STT_MODEL}: CMU WER {cmu:.1%}"


@pytest.mark.models
async def test_interim_then_final_on_real_speech(engine, clips, vad) -> None:
    """Real model: a 7 s LibriVox sentence gives growing interims, then exactly one final, last."""
    clip = clips["librivox-0870"]
    run = await stream_audio(engine, padded(clip.audio), RATE, VirtualClock(), vad=vad)
    interims = [t for t in run.transcripts if not t.final]
    (ended, final), = run.finals
    assert len(interims) >= 2 and run.transcripts[-1] is final
    assert all(a.at <= b.at and a.audio_end < b.audio_end for a, b in zip(interims, interims[1:]))
    assert all(t.at <= final.at and t.audio_end <= ended.last_voiced + 0.2 for t in interims)
    assert len(normalize(interims[-1].text)) > len(normalize(interims[0].text))
    assert wer(clip.reference, final.text) <= 0.1
    assert final.at >= ended.decided_at


@pytest.mark.models
async def test_nan_and_inf_input_is_sanitized(engine, clips, vad) -> None:
    """Real model: NaN/inf in the lead-in and scattered through the speech never reach Whisper."""
    x = padded(clips["goforward"].audio)
    x[1000:3000] = np.nan
    x[5000:5100] = np.inf
    x[8000 + np.arange(0, len(x) - 9000, 997)] = np.nan
    x[8500 + np.arange(0, len(x) - 9000, 1999)] = -np.inf
    checked = Checked(engine)
    run = await stream_audio(checked, x, RATE, VirtualClock(), FINAL_ONLY, vad=vad)
    assert checked.calls and normalize(run.text) == ["go", "forward", "ten", "meters"]


@pytest.mark.models
@pytest.mark.parametrize("rate,channels", [(8000, 1), (22050, 1), (44100, 1), (48000, 1), (48000, 2)])
async def test_other_rates_and_stereo(rate: int, channels: int, engine, clips, vad) -> None:
    """Real model: the clip resampled (and, for stereo, on two channels at different gains)."""
    x = soxr.resample(padded(clips["goforward"].audio), RATE, rate).astype(np.float32)
    if channels == 2:
        x = np.stack([x, 0.5 * x], axis=1)
    run = await stream_audio(engine, x, rate, VirtualClock(), FINAL_ONLY, vad=vad)
    assert len(run.finals) == 1
    assert wer("go forward ten meters", run.text) <= 0.25, run.text  # 8 kHz may lose one word


@pytest.mark.models
async def test_ten_minutes_of_room_noise_keep_memory_and_cpu_bounded(vad) -> None:
    """Real VAD, fake engine: no speech → no pass, no transcript, a small bounded buffer."""
    x = room(600.0, RATE, 7)
    eng = fake_engine()
    tracemalloc.start()
    cpu = time.process_time()
    try:
        run = await stream_audio(eng, x, RATE, VirtualClock(), vad=vad, frame_ms=32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    cpu = time.process_time() - cpu
    assert eng.calls == [] and run.transcripts == [] and run.events == []
    assert run.max_buffered_samples <= RATE  # the pre-roll and a partial window, not the stream
    assert peak < 8e6, f"peak traced memory {peak / 1e6:.1f} MB"
    assert cpu < 60, f"{cpu:.1f} CPU-s for 10 min of audio"


@pytest.mark.models
async def test_sixty_second_monologue_is_transcribed_in_pieces(engine, vad) -> None:
    """Real model: ~60 s of continuous reading (clips joined by 150 ms gaps) is cut by the VAD at
    max_utterance_s; each piece gets its own final, no pass sees more than one piece."""
    pieces, refs = [], []
    while sum(map(len, pieces)) < 62 * RATE:
        for clip in load_clips():
            pieces += [_trim(clip.audio), room(0.15, RATE, len(pieces))]
            refs.append(clip.reference)
    x = padded(np.concatenate(pieces))
    checked = Checked(engine)
    opts = TranscriberOptions(interim_interval_s=4.0)  # fewer interims: ~60 s of speech on a real model
    vo = VADOptions()
    run = await stream_audio(checked, x, RATE, VirtualClock(), opts, vo, vad=vad)
    assert len(run.finals) >= 2
    assert max(checked.calls) <= vo.max_utterance_s * RATE
    assert run.max_buffered_samples <= vo.max_utterance_s * RATE + RATE
    assert all(t.text for _, t in run.finals)
    err = wer(" ".join(refs), run.text)
    assert err <= 0.2, f"WER {err:.1%} over {len(run.finals)} pieces"


def _trim(x: np.ndarray) -> np.ndarray:
    """Cut leading/trailing near-silence (25 dB under the loudest 10 ms), keep 50 ms of it."""
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-20)
    idx = np.flatnonzero(db > db.max() - 25)
    return x[max(0, idx[0] * 160 - 800) : min(len(x), (idx[-1] + 1) * 160 + 800)]


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="interim_interval_s"):
        TranscriberOptions(interim_interval_s=0)

