"""Playout (fakes, virtual clock): pacing, heard text, flush, stale chunks, underruns, backpressure.

Fakes: `RecordingSink` (tests/fakes.py) as the edge, and hand-made `AudioChunk`s in place of the TTS.
Real: `Playout` and its heard-text ledger, on a `VirtualClock`. No models."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pipeline.clock import VirtualClock
from tests.fakes import RecordingSink, settle
from tts.chunks import AudioChunk, words_in_share
from tts.playout import Playout

RATE = 16_000


def chunk(rid: str, i: int, seconds: float, text: str, final: bool = False) -> AudioChunk:
    return AudioChunk(rid, "v", i, i * seconds, np.full(int(seconds * RATE), 0.1, np.float32), RATE, text, final)


@pytest.fixture
async def playing():
    clock = VirtualClock()
    sink = RecordingSink()
    playout = Playout(clock, sink, sample_rate=RATE)
    task = asyncio.create_task(playout.run())
    yield clock, sink, playout
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_whole_reply_is_played_in_order_and_heard(playing):
    clock, sink, playout = playing
    t0 = clock.now()
    for i, text in enumerate(["one two", "three four", "five six"]):
        await playout.play(chunk("r1", i, 0.2, text))
    await playout.play(AudioChunk("r1", "v", 3, 0.6, np.zeros(0, np.float32), RATE, "", final=True))
    await asyncio.wait_for(playout.drain("r1"), 5)
    assert playout.playing_request == "r1"
    assert playout.heard_text("r1") == "one two three four five six"
    first = playout.first_played_at("r1")
    assert first is not None and 0 <= first - t0 < 0.05
    assert playout.stopped_at("r1") - first == pytest.approx(0.6, abs=0.03)
    assert playout.underruns == 0


async def test_flush_mid_reply_cuts_heard_text_and_drops_stale_chunks(playing):
    clock, sink, playout = playing
    for i, text in enumerate(["alpha beta", "gamma delta", "epsilon zeta"]):
        await playout.play(chunk("r1", i, 0.4, text))
    await settle(clock, 0.6)  # first chunk fully played, second one half
    playout.flush()
    heard = playout.heard_text("r1")
    assert heard.startswith("alpha beta")
    assert "epsilon" not in heard
    assert playout.buffered_s == 0
    n_voiced = len(sink.voiced_times())
    await playout.play(chunk("r1", 3, 0.4, "stale words"))  # a late chunk of the cancelled request
    await settle(clock, 0.5)
    assert len(sink.voiced_times()) == n_voiced, "a stale chunk was played after the flush"
    await asyncio.wait_for(playout.drain("r1"), 1)


async def test_underrun_counted_when_reply_starves(playing):
    clock, sink, playout = playing
    await playout.play(chunk("r1", 0, 0.1, "hello"))
    await settle(clock, 0.3)  # nothing more arrives, reply not final
    assert playout.underruns >= 5
    await playout.play(AudioChunk("r1", "v", 1, 0.1, np.zeros(0, np.float32), RATE, "", final=True))
    before = playout.underruns
    await settle(clock, 0.2)
    assert playout.underruns == before, "silence after the final chunk is not an underrun"


async def test_play_waits_when_too_far_ahead(playing):
    clock, sink, playout = playing
    t0 = clock.now()
    for i in range(10):  # 4 s of audio, max_ahead is 1.5 s
        await playout.play(chunk("r1", i, 0.4, f"w{i}"))
    assert clock.now() - t0 >= 2.4  # producer was held back until the buffer drained
    assert playout.buffered_s <= 1.5 + 0.4


async def test_forgetting_a_request_mid_reply_drops_its_audio(playing):
    """A reply cancelled without a flush (a session closing mid-reply) is forgotten while audio of
    it is queued: that audio must not play, and the playout must not fail on it (it raised a
    KeyError and took the session down)."""
    clock, sink, playout = playing
    for i in range(3):
        await playout.play(chunk("r1", i, 0.2, f"word{i}"))
    await settle(clock, 0.1)
    playout.forget("r1")
    heard_until = clock.now()
    await playout.play(chunk("r2", 0, 0.2, "next", final=True))
    await asyncio.wait_for(playout.drain("r2"), 5)
    await settle(clock, 0.1)
    late = [t for t in sink.voiced_times() if t > heard_until + 0.03]
    assert late and sum(0.02 for _ in late) == pytest.approx(0.2, abs=0.03), "r1 played on after it was forgotten"


@pytest.mark.parametrize("share, expected", [
    (0.0, 0), (0.01, 0), (0.05, 1), (0.3, 1), (0.5, 2), (0.9, 3), (0.99, 4), (1.0, 4),
])
def test_words_in_a_share_of_the_audio_go_by_letters(share, expected):
    # "a" is over in the first 4% of the phrase; "unfortunately" fills half of it
    words = ["a", "unfortunately", "long", "day"]
    assert words_in_share(words, share) == expected
