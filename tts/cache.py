"""A bounded cache of synthesized phrases, so greetings and IVR prompts start with no synthesis.

Segmented LRU (2Q): a phrase enters a small *trial* segment the first time it is synthesized and
moves to the *kept* segment when it is asked for again; a phrase that left the trial segment
unasked is remembered by key alone for a while, so a greeting said once per call is kept on its
second call even when a long call pushed it out of trial in between. LLM replies (temperature > 0)
rarely repeat a phrase word for word, so they only churn the trial segment and never push a greeting out. The cap
is small on purpose: every sample held is resident memory for the life of the server, and a 10-minute
cache (the old default, ~50 MB) filled by ~0.3 MB per call for ~170 calls, which looked exactly like
a leak in `rejoinder soak-bench`.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

DEFAULT_MAX_SAMPLES = 22050 * 120  # 2 min of 22 kHz audio, ~10 MB of float32, both segments together
TRIAL_SHARE = 0.25  # of the cap, for phrases heard once (30 s by default: a reply or two)
GHOSTS = 2048  # keys (no audio) of phrases that left the trial segment unasked: a few hundred KB at most


class PhraseCache:
    """Keyed on voice + voice options + exact phrase text; bounded by total samples held.

    `max_samples=0` turns the cache off."""

    def __init__(self, max_samples: int = DEFAULT_MAX_SAMPLES, trial_share: float = TRIAL_SHARE) -> None:
        self.max_samples = max_samples
        self.trial_samples = int(max_samples * trial_share)
        self._trial: OrderedDict[tuple, np.ndarray] = OrderedDict()  # seen once, LRU first
        self._kept: OrderedDict[tuple, np.ndarray] = OrderedDict()  # asked for again, LRU first
        self._ghosts: OrderedDict[tuple, None] = OrderedDict()  # left trial unasked: keys only
        self._held_trial = 0
        self._held_kept = 0
        self.hits = 0
        self.lookups = 0

    def get(self, key: tuple) -> np.ndarray | None:
        self.lookups += 1
        audio = self._kept.get(key)
        if audio is not None:
            self._kept.move_to_end(key)
        else:
            audio = self._trial.pop(key, None)
            if audio is None:
                return None
            self._held_trial -= len(audio)
            self._keep(key, audio)  # a second request: promote it
        self.hits += 1
        return audio

    def put(self, key: tuple, audio: np.ndarray, keep: bool = False) -> None:
        """Hold a phrase's audio; `keep`: straight into the kept segment (a greeting made before any
        call, which every call asks for)."""
        if len(audio) > self.trial_samples or key in self._trial or key in self._kept:
            return
        audio = audio.copy()
        audio.setflags(write=False)
        if keep or key in self._ghosts:  # made before and asked for again (or known to be): keep it
            self._ghosts.pop(key, None)
            self._keep(key, audio)
            return
        self._trial[key] = audio
        self._held_trial += len(audio)
        while self._held_trial > self.trial_samples:
            old_key, old = self._trial.popitem(last=False)
            self._held_trial -= len(old)
            self._ghosts[old_key] = None
            if len(self._ghosts) > GHOSTS:
                self._ghosts.popitem(last=False)

    def _keep(self, key: tuple, audio: np.ndarray) -> None:
        room = self.max_samples - self.trial_samples
        if len(audio) > room:
            return
        self._kept[key] = audio
        self._held_kept += len(audio)
        while self._held_kept > room:
            _, old = self._kept.popitem(last=False)
            self._held_kept -= len(old)

    @property
    def held_samples(self) -> int:
        return self._held_trial + self._held_kept

    @property
    def held_bytes(self) -> int:
        return sum(a.nbytes for a in self._trial.values()) + sum(a.nbytes for a in self._kept.values())

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.lookups if self.lookups else None

    def __len__(self) -> int:
        return len(self._trial) + len(self._kept)
