"""Silero VAD and the speech segmenter, tested on the REAL Silero v6 ONNX model and real speech clips.

Every test marked `models` runs the pinned model through onnxruntime (about 0.2 ms per 32 ms
window), so the whole file takes a few seconds. Reference onsets come from the clips' own energy
envelope (`energetic_span`, tests/fakes.py). The two unmarked tests load no model: one validates
options; `test_state_machine_on_scripted_probabilities` scripts the probabilities (`ScriptedVAD`, a
fake model, here) to pin the exact hysteresis and timing rules, which real speech cannot hit
window by window.
"""

from __future__ import annotations

import re
import time

import numpy as np
import onnxruntime as ort
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.assets import model_file
from pipeline.audio import AudioFrame, frames_from_array, read_audio
from pipeline.events import SpeechEnded, SpeechPaused, SpeechResumed, SpeechStarted
from stt.vad import WINDOW, SileroVAD, VADOptions, VADSegmenter
from tests.fakes import DATA, energetic_span

RATE = 16_000
CLIPS = ["goforward.wav", "librivox-0870.wav", "librivox-0880.wav", "librivox-0920.wav",
         *(f"cards/00{i}.wav" for i in range(1, 6))]
LEAD, TAIL = 0.5, 1.0  # silence put around each clip, seconds


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD()


def load(name: str) -> np.ndarray:
    x, sr = read_audio(DATA / name)
    assert sr == RATE
    return x - x.mean()


def room(n: int, seed: int = 0) -> np.ndarray:
    """A quiet room: white noise at -70 dBFS (real microphones are never digitally silent)."""
    return (np.random.default_rng(seed).standard_normal(n) * 10 ** (-70 / 20)).astype(np.float32)


def padded(x: np.ndarray, lead: float = LEAD, tail: float = TAIL) -> np.ndarray:
    return np.concatenate([room(int(lead * RATE), 1), x, room(int(tail * RATE), 2)]).astype(np.float32)


def segment(x: np.ndarray, rate: int = RATE, *, vad: SileroVAD, frame_ms: int = 20, start: float = 0.0,
            options: VADOptions | None = None) -> tuple[list, VADSegmenter]:
    seg = VADSegmenter(options or VADOptions(), vad=vad)
    events: list = []
    for frame in frames_from_array(x, rate, start, frame_ms):
        events += seg.process(frame)
    events += seg.flush()
    return events, seg


def letters(events: list) -> str:
    code = {SpeechStarted: "S", SpeechPaused: "P", SpeechResumed: "R", SpeechEnded: "E"}
    return "".join(code[type(e)] for e in events)


def ended(events: list) -> list[SpeechEnded]:
    return [e for e in events if isinstance(e, SpeechEnded)]


def one_utterance(events: list) -> SpeechEnded:
    assert re.fullmatch(r"S(PR)*PE", letters(events)), letters(events)
    return ended(events)[0]


# --- the model itself ---------------------------------------------------------------------------


@pytest.mark.models
def test_model_inputs_and_context_match_the_official_wrapper(vad: SileroVAD) -> None:
    """Same numbers as silero_vad's OnnxWrapper: each call sees the previous call's last 64 samples first."""
    x = load("librivox-0880.wav")[: 40 * WINDOW]
    sess = ort.InferenceSession(str(model_file("silero-vad")), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input", "state", "sr"]
    state, context, expected = np.zeros((2, 1, 128), np.float32), np.zeros((1, 64), np.float32), []
    for i in range(0, len(x), WINDOW):
        inp = np.concatenate([context, x[None, i : i + WINDOW]], axis=1)
        out, state = sess.run(None, {"input": inp, "state": state, "sr": np.array(RATE, np.int64)})
        context = inp[:, -64:]
        expected.append(float(out[0, 0]))
    vad.reset()
    got = [vad(x[i : i + WINDOW]) for i in range(0, len(x), WINDOW)]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert max(got) > 0.9 and min(got) < 0.1  # the clip has both speech and silence
    vad.reset()
    assert vad(x[:WINDOW]) == pytest.approx(expected[0], abs=1e-6)  # reset really starts a new stream


@pytest.mark.models
def test_model_rejects_wrong_window_size(vad: SileroVAD) -> None:
    with pytest.raises(ValueError, match="512"):
        vad(np.zeros(480, np.float32))


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="neg_threshold"):
        VADOptions(threshold=0.3, neg_threshold=0.5)
    with pytest.raises(ValueError, match="pause_ms"):
        VADOptions(pause_ms=600, hangover_ms=500)


class ScriptedVAD:
    """Returns the scripted probabilities in order, then 0.0."""

    def __init__(self, probs: list[float]) -> None:
        self.probs = list(probs)

    def __call__(self, chunk: np.ndarray) -> float:
        return self.probs.pop(0) if self.probs else 0.0

    def reset(self) -> None:
        pass


def test_state_machine_on_scripted_probabilities() -> None:
    w = WINDOW / RATE
    script = (
        [0.0] * 5
        + [0.6] + [0.4] * 3  # onset at window 5; 0.4 keeps speech going (above neg_threshold, no silence yet)
        + [0.9] * 4  # the 8th voiced window (12) confirms: SpeechStarted(at=window 5)
        + [0.1, 0.1, 0.4]  # 0.4 after silence began is still silence: the 3rd silent window pauses
        + [0.7]  # window 16 resumes
        + [0.1] * 16  # windows 17..32: paused at 19, ended at 32
        + [0.9] * 7 + [0.0] * 20  # 7 voiced windows (224 ms): too short for a turn
    )
    seg, events, at = VADSegmenter(VADOptions(pause_ms=96), vad=ScriptedVAD(script)), [], []
    for frame in frames_from_array(room(len(script) * WINDOW), RATE):
        got = seg.process(frame)
        events += got
        at += [frame.end] * len(got)
    assert letters(events) == "SPRPE"
    started, paused, resumed, paused2, end = events
    assert started.at == pytest.approx(5 * w) and at[0] == pytest.approx(13 * w, abs=0.02)
    assert paused.last_voiced == pytest.approx(13 * w) and at[1] == pytest.approx(16 * w, abs=0.02)
    assert resumed.at == pytest.approx(16 * w)
    assert paused2.last_voiced == pytest.approx(17 * w) and at[3] == pytest.approx(20 * w, abs=0.02)
    assert (end.started, end.last_voiced, end.decided_at) == pytest.approx((5 * w, 17 * w, 33 * w))
    # all 5 windows before the onset (less than pad_ms exist), windows 5..16, then pad_ms
    assert len(end.audio) == 5 * WINDOW + 12 * WINDOW + round(0.2 * RATE)
    assert seg.speech_windows == 5 + 1 + 7 and seg.windows == len(script)


# --- real speech ------------------------------------------------------------------------------


@pytest.mark.models
@pytest.mark.parametrize("name", CLIPS)
def test_each_clip_is_one_utterance_with_accurate_onset(name: str, vad: SileroVAD) -> None:
    x = load(name)
    first, last = energetic_span(x)
    events, _ = segment(padded(x), vad=vad)
    utt = one_utterance(events)
    assert utt.started == events[0].at
    assert LEAD + first - 0.05 <= utt.started <= LEAD + first + 0.15, (utt.started, LEAD + first)
    assert LEAD + last - 0.15 <= utt.last_voiced <= LEAD + last + 0.25, (utt.last_voiced, LEAD + last)
    # the endpoint is decided exactly one hangover (16 windows = 512 ms) after the last voiced window
    assert utt.decided_at - utt.last_voiced == pytest.approx(0.512, abs=1e-9)
    # nothing is missed: the padded audio spans the whole energetic part, and it is 16 kHz float32
    assert utt.audio.dtype == np.float32
    span = len(utt.audio) / RATE
    assert span == pytest.approx(utt.last_voiced - utt.started + 0.4, abs=0.01)
    assert utt.started - 0.2 <= LEAD + first and utt.last_voiced + 0.2 >= LEAD + last
    pauses = [e for e in events if isinstance(e, SpeechPaused)]
    assert pauses[-1].last_voiced == utt.last_voiced


@pytest.mark.models
def test_speech_in_white_noise_at_10db_snr(vad: SileroVAD) -> None:
    rng = np.random.default_rng(7)
    for name in ["librivox-0880.wav", "goforward.wav", "cards/005.wav"]:
        x = load(name)
        first, last = energetic_span(x)
        s0, s1 = int(first * RATE), int(last * RATE)
        speech_rms = np.sqrt(np.mean(x[s0:s1] ** 2))
        clean = padded(x)
        noisy = clean + rng.standard_normal(len(clean)).astype(np.float32) * speech_rms * 10 ** (-10 / 20)
        ref = one_utterance(segment(clean, vad=vad)[0])
        utt = one_utterance(segment(noisy.astype(np.float32), vad=vad)[0])
        assert abs(utt.started - ref.started) <= 0.1, name
        assert abs(utt.last_voiced - ref.last_voiced) <= 0.2, name


@pytest.mark.models
@pytest.mark.parametrize("dbfs", [-30, -10])
def test_white_noise_alone_is_not_speech(dbfs: float, vad: SileroVAD) -> None:
    noise = np.random.default_rng(-dbfs).standard_normal(20 * RATE) * 10 ** (dbfs / 20)
    events, seg = segment(np.clip(noise, -1, 1).astype(np.float32), vad=vad)
    assert seg.windows == -(-20 * RATE // WINDOW)  # every window went through the model path
    assert seg.speech_windows / seg.windows < 0.01
    assert events == []


@pytest.mark.models
def test_ten_minutes_of_digital_silence_keeps_memory_and_cpu_bounded(vad: SileroVAD) -> None:
    seg = VADSegmenter(vad=vad)
    zeros = np.zeros(RATE // 50, np.float32)
    most, t0 = 0, time.perf_counter()
    for i in range(600 * 50):
        assert seg.process(AudioFrame(zeros, RATE, i * 0.02)) == []
        most = max(most, seg.buffered_samples)
    assert time.perf_counter() - t0 < 10
    assert seg.windows == 600 * RATE // WINDOW
    assert most <= 0.2 * RATE + 2 * WINDOW  # the pre-roll and one partial window, nothing more
    # and after an utterance the buffers shrink back to the pre-roll
    for frame in frames_from_array(padded(load("cards/001.wav")), RATE, 600.0):
        seg.process(frame)
    assert seg.buffered_samples <= 0.2 * RATE + 2 * WINDOW


@pytest.mark.models
def test_nan_and_inf_are_sanitized(vad: SileroVAD) -> None:
    rng = np.random.default_rng(3)
    junk = room(5 * RATE)
    junk[: RATE // 2] = np.nan  # a broken device: half a second of NaN
    hits = rng.choice(len(junk), 40, replace=False)
    junk[hits] = rng.choice([np.nan, np.inf, -np.inf], 40)
    events, seg = segment(junk, vad=vad)
    assert events == [] and seg.speech_windows == 0
    # speech with sprinkled NaNs is still one clean utterance
    x = padded(load("librivox-0880.wav"))
    x[rng.choice(len(x), 20, replace=False)] = np.nan
    utt = one_utterance(segment(x, vad=vad)[0])
    assert np.isfinite(utt.audio).all() and np.abs(utt.audio).max() <= 1.0


@pytest.mark.models
@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_other_sample_rates_segment_like_16k(rate: int, vad: SileroVAD) -> None:
    for name in ["librivox-0920.wav", "cards/002.wav"]:
        x = padded(load(name))
        ref = one_utterance(segment(x, vad=vad)[0])
        y = soxr.resample(x, RATE, rate).astype(np.float32)
        utt = one_utterance(segment(y, rate, vad=vad)[0])
        # at 8 kHz the band above 4 kHz is gone, and with it some of a final fricative ("wa-s")
        tol = 0.2 if rate < RATE else 0.07
        assert abs(utt.started - ref.started) <= tol, (name, utt.started, ref.started)
        assert abs(utt.last_voiced - ref.last_voiced) <= tol, (name, utt.last_voiced, ref.last_voiced)
        # the audio handed on is 16 kHz whatever came in
        assert len(utt.audio) / RATE == pytest.approx(utt.last_voiced - utt.started + 0.4, abs=0.01)


@pytest.mark.models
def test_stereo_is_mixed_to_mono(vad: SileroVAD) -> None:
    """A headset with a dead left channel: the channels are averaged, not the first one taken."""
    x = padded(load("librivox-0870.wav"))
    ref = one_utterance(segment(x / 2, vad=vad)[0])
    seg, events = VADSegmenter(vad=vad), []
    stereo = np.stack([np.zeros_like(x), x], axis=1)  # shape (n, 2), as soundfile and sounddevice give it
    for i in range(0, len(x), 960):
        events += seg.process(AudioFrame(stereo[i : i + 960], RATE, i / RATE))
    events += seg.flush()
    utt = one_utterance(events)
    assert utt.started == pytest.approx(ref.started, abs=1e-9)
    assert utt.last_voiced == pytest.approx(ref.last_voiced, abs=1e-9)
    np.testing.assert_allclose(utt.audio, ref.audio, atol=1e-6)


@pytest.mark.models
def test_dc_offset_is_removed(vad: SileroVAD) -> None:
    x = padded(load("goforward.wav"))
    ref = one_utterance(segment(x, vad=vad)[0])
    utt = one_utterance(segment(x + np.float32(0.3), vad=vad)[0])
    assert abs(utt.started - ref.started) <= 0.07 and abs(utt.last_voiced - ref.last_voiced) <= 0.07
    assert abs(float(utt.audio.mean())) < 0.01  # downstream (STT) gets the offset removed too


@pytest.mark.models
def test_clipped_speech_is_detected(vad: SileroVAD) -> None:
    x = padded(load("librivox-0920.wav"))
    ref = one_utterance(segment(x, vad=vad)[0])
    utt = one_utterance(segment(np.clip(x * 20, -1, 1), vad=vad)[0])
    # a hard-clipped onset looks less like speech to Silero: it is confirmed a few windows later
    assert abs(utt.started - ref.started) <= 0.2 and abs(utt.last_voiced - ref.last_voiced) <= 0.2


@pytest.mark.models
def test_quiet_speech_is_boosted_for_the_model(vad: SileroVAD) -> None:
    x = padded(load("goforward.wav"))
    quiet = (x / np.abs(x).max() * 10 ** (-50 / 20)).astype(np.float32)  # peaks at -50 dBFS
    ref = one_utterance(segment(x, vad=vad)[0])
    utt = one_utterance(segment(quiet, vad=vad)[0])
    assert abs(utt.started - ref.started) <= 0.1
    assert segment(quiet, vad=vad, options=VADOptions(max_gain_db=0))[0] == []  # Silero alone misses it


@pytest.mark.models
def test_short_bursts_do_not_start_a_turn(vad: SileroVAD) -> None:
    rng = np.random.default_rng(5)
    x = room(3 * RATE)
    x[RATE : RATE + 800] += rng.standard_normal(800).astype(np.float32) * 0.5  # a 50 ms click
    speech = load("librivox-0920.wav")
    loud = int(np.argmax(np.convolve(speech**2, np.ones(1600), "valid")))
    x[2 * RATE : 2 * RATE + 2400] += speech[loud : loud + 2400]  # 150 ms of voice: a cough, an "mm"
    events, seg = segment(x, vad=vad)
    assert seg.speech_windows >= 2  # the model did hear voice...
    assert events == []  # ...but too little to be a turn


@pytest.mark.models
def test_pause_shorter_than_hangover_pauses_then_resumes(vad: SileroVAD) -> None:
    a, b = load("cards/001.wav"), load("cards/003.wav")
    (a0, a1), (b0, _) = energetic_span(a), energetic_span(b)
    gap = 0.3  # longer than pause_ms, shorter than hangover_ms
    x = np.concatenate([room(RATE // 2), a[int(a0 * RATE) : int(a1 * RATE)], room(int(gap * RATE)), b[int(b0 * RATE) :],
                        room(RATE)])
    events, _ = segment(x, vad=vad)
    utt = one_utterance(events)
    resumed = [e for e in events if isinstance(e, SpeechResumed)]
    second = 0.5 + (a1 - a0) + gap
    assert any(abs(r.at - second) <= 0.15 for r in resumed), (resumed, second)
    pauses = [e for e in events if isinstance(e, SpeechPaused)]
    assert all(len(p.audio) < len(q.audio) for p, q in zip(pauses, pauses[1:]))  # the utterance so far grows
    assert utt.started < 0.5 + 0.15
    # the same two words 0.8 s apart are two turns
    x = np.concatenate([room(RATE // 2), a[int(a0 * RATE) : int(a1 * RATE)], room(int(0.8 * RATE)), b[int(b0 * RATE) :],
                        room(RATE)])
    assert letters(segment(x, vad=vad)[0]).count("E") == 2


@pytest.mark.models
def test_long_monologue_is_cut_into_bounded_utterances(vad: SileroVAD) -> None:
    parts = []
    while sum(map(len, parts)) < 65 * RATE:
        for name in ["librivox-0870.wav", "librivox-0920.wav", "librivox-0880.wav"]:
            x = load(name)
            first, last = energetic_span(x)
            parts += [x[int(first * RATE) : int(last * RATE)], room(int(0.2 * RATE))]
    x = padded(np.concatenate(parts))
    events, seg = segment(x, vad=vad)
    utts = ended(events)
    assert len(utts) >= 3 and letters(events).count("S") == len(utts)
    assert all(len(u.audio) <= VADOptions().max_utterance_s * RATE for u in utts)
    # cut utterances follow each other without a gap: the next one starts where the last was cut,
    # at its quietest window of the last second (between words, not at an arbitrary sample)
    for u, nxt in zip(utts, utts[1:]):
        assert nxt.started == pytest.approx(u.last_voiced) and u.decided_at - 1.0 <= u.last_voiced <= u.decided_at
    # ... and say so: the turn manager must not answer a piece the user is still talking through
    assert [u.continued for u in utts] == [True] * (len(utts) - 1) + [False]
    covered = sum(u.last_voiced - u.started for u in utts)
    assert covered >= 0.97 * (len(x) / RATE - LEAD - TAIL)
    assert seg.buffered_samples == 0  # flushed


@pytest.mark.models
@settings(max_examples=12, deadline=None)
@given(sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=8), offset=st.floats(0, 1e5))
def test_frame_sizes_and_timestamps_do_not_change_segmentation(sizes: list[int], offset: float, vad: SileroVAD) -> None:
    x = padded(load("cards/004.wav"))
    ref = segment(x, vad=vad)[0]
    seg, events, i, k = VADSegmenter(vad=vad), [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        events += seg.process(AudioFrame(x[i : i + n], RATE, offset + i / RATE))
        i, k = i + n, k + 1
    events += seg.flush()
    assert letters(events) == letters(ref)
    for got, want in zip(ended(events), ended(ref)):
        assert got.started == pytest.approx(want.started + offset, abs=1e-6)
        assert got.last_voiced == pytest.approx(want.last_voiced + offset, abs=1e-6)
        np.testing.assert_array_equal(got.audio, want.audio)


@pytest.mark.models
def test_timestamp_gap_shows_in_event_times(vad: SileroVAD) -> None:
    """A transport that drops 5 s of frames: times after the gap follow the frames' own timestamps."""
    x = padded(load("cards/005.wav"))
    ref = one_utterance(segment(x, vad=vad)[0])
    seg, events = VADSegmenter(vad=vad), []
    for frame in frames_from_array(x, RATE):
        t = frame.timestamp + (5.0 if frame.timestamp >= 0.3 else 0.0)  # the gap is before the speech
        events += seg.process(AudioFrame(frame.samples, RATE, t))
    events += seg.flush()
    utt = one_utterance(events)
    assert utt.started == pytest.approx(ref.started + 5.0, abs=1e-6)
    assert utt.decided_at == pytest.approx(ref.decided_at + 5.0, abs=1e-6)


@pytest.mark.models
def test_flush_ends_speech_in_progress(vad: SileroVAD) -> None:
    x = load("librivox-0870.wav")
    x = padded(x[: len(x) // 2], tail=0)  # the stream stops mid-sentence
    seg, events = VADSegmenter(vad=vad), []
    for frame in frames_from_array(x, RATE):
        events += seg.process(frame)
    assert seg.in_speech and letters(events).startswith("S") and "E" not in letters(events)
    tail = seg.flush(now=99.0)
    assert letters(tail) == "E" and tail[0].decided_at == 99.0
    assert tail[0].last_voiced == pytest.approx(len(x) / RATE, abs=0.04)
    assert not seg.in_speech and seg.flush() == []
