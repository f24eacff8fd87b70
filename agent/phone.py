"""`rejoinder sip`: the agent answering phone calls over SIP (the SIP edge, transport/sip.py).

The edge moves audio and carries call control; here each answered call gets one session of the
loaded stack, its playout pulled by the edge at 8 kHz, and its keypad digits gathered into user turns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.api import Agent
from agent.stack import load_stack
from pipeline.dtmf import DigitCollector
from transport.sip import SipCall, SipOptions, SipServer
from transport.sip_media import RATE, parse_allow

log = logging.getLogger(__name__)


async def run_call(stack: Any, call: SipCall, on_event: Callable[[dict], None] | None = None) -> None:
    """One phone call: a session of `stack` (an `AgentStack`, or a fake with its `new_session`) on `call`."""
    session = stack.new_session(call.clock, lambda frame: None, output_rate=RATE, on_event=on_event, call=call)
    session.playout.paced_by_consumer = True  # the RTP sender pulls, one 20 ms frame per packet
    call.attach(session.playout.pull)
    typed: set[asyncio.Task] = set()

    def digits(text: str) -> None:
        log.info("%s: keypad entry %r", call.name, text)
        task = asyncio.get_running_loop().create_task(session.turns.user_typed(text), name="keypad turn")
        typed.add(task)
        task.add_done_callback(typed.discard)

    collector = DigitCollector(digits)
    call.on_dtmf = collector.press
    try:
        await session.run(call.frames())
    finally:
        collector.close()
        for task in list(typed):
            task.cancel()


async def sip(config, listen: str = "127.0.0.1:5060", max_calls: int = 1, allow: list[str] | None = None,
              agent: Agent | None = None, progress: Callable[[str], None] = print,
              record_dir: Path | None = None) -> None:
    """Answer SIP calls on `listen` (HOST:PORT, UDP) until cancelled: the models load once, each call
    gets its own session. Raises ValueError for an unsafe or malformed address before anything loads."""
    options = sip_options(listen, max_calls, allow or [])
    async with load_stack(config, progress, agent=agent, record_dir=record_dir) as stack:
        server = SipServer(lambda call: run_call(stack, call), options)
        await server.start()
        progress(f"answering SIP calls on udp {options.host}:{server.local_addr[1]} "
                 f"(at most {max_calls}; callers from {', '.join(str(n) for n in options.allow)})")
        try:
            await asyncio.Event().wait()
        finally:
            await server.close()


def sip_options(listen: str, max_calls: int, allow: list[str]) -> SipOptions:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:5060")
    return SipOptions(host=host.strip("[]"), port=int(port), max_calls=max_calls, allow=parse_allow(allow))
