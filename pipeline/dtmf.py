"""Keypad digits (RFC 4733 events, Twilio `dtmf` messages) gathered into one entry per user turn.

Shared by the phone edges: a caller types "4 7 1 2 #", the agent hears one turn "4712".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class DigitCollector:
    """Keypad digits → one user turn: `#` ends the entry at once ("4 7 1 2 #" → "4712"), or a pause of
    `pause_s` after the last key does. `*` and A-D are kept as typed."""

    def __init__(self, on_digits: Callable[[str], Any], pause_s: float = 2.0) -> None:
        self.on_digits, self.pause_s = on_digits, pause_s
        self._keys: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def press(self, key: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if key == "#":
            self.flush()
            return
        self._keys.append(key)
        self._timer = asyncio.get_running_loop().call_later(self.pause_s, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        digits, self._keys = "".join(self._keys), []
        if digits:
            self.on_digits(digits)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
