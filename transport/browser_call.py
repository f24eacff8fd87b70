"""Call control on the browser edge: what `end_call`, `transfer` and `send_dtmf` mean in a web page.

A browser call has no PSTN behind it, so a transfer and keypad digits are shown on the page (an
event on the data channel) for the person prototyping the flow; hanging up tells the page, then
closes the peer connection. The phone edges implement the same protocol with BYE, REFER and RFC 4733.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class BrowserCall:
    """`pipeline.stages.CallControl` over one peer: `send` an event, `close` the peer (spawned)."""

    def __init__(self, send: Callable[[dict], None], close: Callable[[], Any], grace_s: float = 0.3) -> None:
        self._send, self._close, self.grace_s = send, close, grace_s
        self.hung_up = False
        self.transfers: list[str] = []

    async def hang_up(self, reason: str = "") -> None:
        if self.hung_up:
            return
        self.hung_up = True
        self._send({"type": "hangup", "reason": reason or "the agent ended the call"})
        # the goodbye has been played out of the server; its last frames are still on the wire
        asyncio.get_running_loop().call_later(self.grace_s, self._close)

    async def transfer(self, target: str) -> bool:
        self.transfers.append(target)
        self._send({"type": "transfer", "target": target})
        return True  # the page shows it; the goodbye then ends the call

    async def send_dtmf(self, digits: str) -> None:
        self._send({"type": "dtmf", "digits": digits})
