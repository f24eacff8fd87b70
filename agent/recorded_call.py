"""The call control of an edge with no far end to act on (`converse`, evals): it records what the
agent did to the call, and hanging up ends the session's input, as a caller putting the phone down."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RecordedCall:
    transfer_ok: bool = True  # what a transfer answers (False: the far end refused it)
    ended: Callable[[], None] | None = None  # set by the wiring: stops the session's input
    hung_up: str | None = None  # the reason, once hung up
    transfers: list[str] = field(default_factory=list)
    dtmf: list[str] = field(default_factory=list)

    async def hang_up(self, reason: str = "") -> None:
        self.hung_up = reason or "hang_up"
        if self.ended is not None:
            self.ended()

    async def transfer(self, target: str) -> bool:
        self.transfers.append(target)
        return self.transfer_ok

    async def send_dtmf(self, digits: str) -> None:
        self.dtmf.append(digits)

    def as_dict(self) -> dict[str, Any]:
        return {"hung_up": self.hung_up, "transfers": self.transfers, "dtmf": self.dtmf}
