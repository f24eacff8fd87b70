"""A bounded LRU of synthesized phrases, so greetings and IVR prompts start with no synthesis."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class PhraseCache:
    """Keyed on voice + voice options + exact phrase text; bounded by total samples held."""

    def __init__(self, max_samples: int = 22050 * 600) -> None:  # ~10 min of 22 kHz audio, ~50 MB
        self.max_samples = max_samples
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._held = 0
        self.hits = 0
        self.lookups = 0

    def get(self, key: tuple) -> np.ndarray | None:
        self.lookups += 1
        audio = self._items.get(key)
        if audio is not None:
            self._items.move_to_end(key)
            self.hits += 1
        return audio

    def put(self, key: tuple, audio: np.ndarray) -> None:
        if len(audio) > self.max_samples or key in self._items:
            return
        audio = audio.copy()
        audio.setflags(write=False)
        self._items[key] = audio
        self._held += len(audio)
        while self._held > self.max_samples:
            _, old = self._items.popitem(last=False)
            self._held -= len(old)

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.lookups if self.lookups else None

    def __len__(self) -> int:
        return len(self._items)
