"""The phrase cache (`tts.cache`) stays small over many calls, and keeps what repeats.

Fakes: `FakeTTSEngine` (tests/fakes.py) stands in for the voice; the cache and `StreamingTTS` are
real. Regression for the soak (`rejoinder soak-bench`): the server's RSS grew ~0.3 MiB per call
for ~170 calls because every LLM phrase (temperature 0.7, so almost never said twice) was kept in
a 10-minute (~50 MiB) cache shared by all sessions.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np

from tests.fakes import FakeTTSEngine
from tts.cache import PhraseCache
from tts.stream import StreamingTTS

WORDS = "sure I can help with that the weather today is sunny and warm our hours are nine to five".split()


def _reply(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))).capitalize() + "."


async def _speak(tts: StreamingTTS, text: str) -> int:
    async with contextlib.aclosing(tts.speak(text)) as chunks:
        async for _ in chunks:
            pass
    return tts.last_metrics.cache_hits


def test_the_default_cache_holds_a_few_mib_however_many_phrases_go_through_it():
    cache = PhraseCache()
    three_s = np.zeros(22050 * 3, np.float32)
    for i in range(300):  # ~15 min of distinct 22 kHz audio: ~80 MiB if all were kept
        cache.put(("voice", None, f"phrase {i}"), three_s)
    assert cache.held_bytes <= 12 * 2**20, f"the phrase cache holds {cache.held_bytes / 2**20:.1f} MiB"
    assert cache.held_bytes == cache.held_samples * 4


async def test_one_off_phrases_never_push_out_a_greeting():
    cache = PhraseCache(max_samples=16_000 * 20)  # 20 s at the fake voice's 16 kHz: 5 s of trial
    tts = StreamingTTS(FakeTTSEngine(), cache=cache)
    rng = random.Random(7)
    greeting_hits = []

    for _ in range(40):  # 40 calls: the greeting, then more reply audio than the whole cap, never heard again
        greeting_hits.append(await _speak(tts, "Hello, thanks for calling the order desk."))
        for _ in range(5):
            await _speak(tts, _reply(rng))
        assert cache.held_samples <= cache.max_samples
    # each call's replies (>20 s: a plain LRU would lose the greeting every call) push the greeting out of
    # trial unasked: made on the first call, made again and kept on the second (its key was remembered),
    # never synthesized again after that
    assert greeting_hits[:2] == [0, 0] and all(greeting_hits[2:]), greeting_hits


def test_a_phrase_pushed_out_of_trial_is_kept_when_it_comes_back():
    cache = PhraseCache(max_samples=1000)  # trial: 250 samples
    a = np.ones(100, np.float32)
    cache.put(("greeting",), a)
    for i in range(10):  # a long call: the greeting leaves the trial segment unasked
        cache.put((i,), a)
    assert cache.get(("greeting",)) is None
    cache.put(("greeting",), a)  # the next call makes it again: now it is kept
    for i in range(10, 40):
        cache.put((i,), a)
    assert cache.get(("greeting",)) is not None
    assert cache.held_samples <= 1000


def test_max_samples_zero_turns_the_cache_off():
    cache = PhraseCache(max_samples=0)
    cache.put(("x",), np.ones(10, np.float32))
    assert cache.get(("x",)) is None and len(cache) == 0 and cache.held_bytes == 0


async def test_a_warmed_greeting_is_a_cache_hit_on_every_call_however_much_else_is_said():
    """`StreamingTTS.warm` (what `load_stack` does with the agent's greeting before any call) puts it
    in the kept segment: the first call's greeting is already a hit, and one-off replies never push
    it out."""
    cache = PhraseCache(max_samples=16_000 * 20)
    tts = StreamingTTS(FakeTTSEngine(), cache=cache)
    await tts.warm(["Hello, thanks for calling the order desk."])
    rng = random.Random(3)
    hits = []
    for _ in range(10):
        hits.append(await _speak(tts, "Hello, thanks for calling the order desk."))
        for _ in range(5):
            await _speak(tts, _reply(rng))
    assert all(hits), hits
