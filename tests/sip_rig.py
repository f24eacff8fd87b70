"""The SIP test rig: the real SIP edge (transport/sip.py) and agent wiring (agent/phone.py) answering SIPp.

Run by tests/test_sip.py as `python -m tests.sip_rig SCENARIO` inside a network namespace with only
loopback (`unshare -n`); prints one JSON object. The agent is a real `AgentStack` session (real
Silero VAD, turn manager, StreamingTTS, playout) over `FakeSTT`, `FakeLLM` and `FakeTTSEngine`
(tests/fakes.py). SIPp cannot count the RTP it receives, so the callers' SDP names a socket of this
rig as their media address ([rigport]): what arrives there is what a caller would hear.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import time
from pathlib import Path

import numpy as np

from agent.api import Agent
from agent.config import AgentConfig
from agent.phone import run_call
from agent.stack import AgentStack
from pipeline.clock import RealClock
from tests.fakes import FakeLLM, FakeSTT, FakeTTSEngine
from transport.g711 import decode
from transport.sip import SipCall, SipOptions, SipServer

SCENARIOS = Path(__file__).parent / "data" / "sip"
SIP_PORT, SIPP_PORT, RIG_PORT = 5060, 5070, 40000
GREETING = "Hello there, thank you for calling the test line of the agent."  # ~3.8 s of fake voice


class Rig:
    def __init__(self, max_calls: int = 1) -> None:
        self.llm = FakeLLM(RealClock(), ["Your number is noted."] * 5)
        self.stt = FakeSTT(answer=lambda audio: "hello")
        stack = AgentStack(AgentConfig(), stt=self.stt, tts_engine=FakeTTSEngine(),
                           llm=self.llm,  # type: ignore[arg-type]
                           agent=Agent(greeting=GREETING, end_call=False))
        self.events: list[dict] = []
        self.calls: list[SipCall] = []
        self.sessions_done = 0

        async def on_call(call: SipCall) -> None:
            self.calls.append(call)
            try:
                await run_call(stack, call, on_event=self.events.append)
            finally:
                self.sessions_done += 1

        self.server = SipServer(on_call, SipOptions(host="127.0.0.1", port=SIP_PORT, max_calls=max_calls))
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", RIG_PORT))
        self.rtp.setblocking(False)
        self.rtp_packets: list[bytes] = []
        self.logs: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: self.logs.append(f"{record.levelname} {record.name}: {record.getMessage()}")
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)

    async def __aenter__(self) -> Rig:
        await self.server.start()
        asyncio.get_running_loop().add_reader(self.rtp.fileno(), self._rtp_in)
        return self

    async def __aexit__(self, *exc) -> None:
        asyncio.get_running_loop().remove_reader(self.rtp.fileno())
        await self.server.close()
        self.rtp.close()

    def _rtp_in(self) -> None:
        try:
            while True:
                self.rtp_packets.append(self.rtp.recv(2048))
        except BlockingIOError:
            pass

    async def sipp(self, scenario: str, duration_ms: int = 3000, port: int = SIPP_PORT, calls: int = 1) -> dict:
        cmd = ["sipp", f"127.0.0.1:{SIP_PORT}", "-sf", str(SCENARIOS / scenario), "-m", str(calls), "-l", "1",
               "-i", "127.0.0.1",
               "-p", str(port), "-mp", str(port + 2000), "-d", str(duration_ms), "-key", "rigport", str(RIG_PORT),
               "-timeout", "40s", "-timeout_error", "-nostdin", "-trace_err", "-error_file", f"/tmp/sipp-{port}.err"]
        Path(f"/tmp/sipp-{port}.err").unlink(missing_ok=True)  # noqa: ASYNC240 (a stale one from an earlier run)
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT, cwd="/tmp")
        out, _ = await proc.communicate()
        return {"rc": proc.returncode, "errors": _tail(f"/tmp/sipp-{port}.err"),
                "out": out.decode(errors="replace")[-1500:] if proc.returncode else ""}

    async def wait_call(self, n: int = 1, timeout: float = 10.0) -> SipCall:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n:
            if time.monotonic() > deadline:
                raise TimeoutError("no call was answered")
            await asyncio.sleep(0.05)
        return self.calls[n - 1]

    async def settle(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while (self.server.calls or self.sessions_done < len(self.calls)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def heard(self) -> dict:
        """What reached the caller's media address: packets, and how many carried sound."""
        voiced = 0
        for p in self.rtp_packets:
            if len(p) > 12 and p[1] & 0x7F in (0, 8):
                x = decode(p[12:], p[1] & 0x7F)
                voiced += float(np.sqrt(np.mean(x**2))) > 0.01
        return {"packets": len(self.rtp_packets), "voiced": voiced}

    def report(self, **extra) -> dict:
        return {
            "heard": self.heard(), "calls": len(self.calls), "open_calls": len(self.server.calls),
            "sessions_done": self.sessions_done, "rejected": self.server.rejected,
            "packets_in": [c.packets_in for c in self.calls], "packets_out": [c.packets_out for c in self.calls],
            "end_reasons": [c.end_reason for c in self.calls], "dtmf_in": [c.dtmf_in for c in self.calls],
            "stt_calls": len(self.stt.calls),
            "user_texts": [e["text"] for e in self.events if e["type"] == "transcript" and e.get("final")],
            "llm_requests": len(self.llm.requests), "logs": self.logs[-60:], **extra,
        }


async def call() -> dict:
    async with Rig() as rig:
        sipp = await rig.sipp("call.xml", duration_ms=6000)
        await rig.settle()
        return rig.report(sipp=sipp)


async def limits() -> dict:
    async with Rig(max_calls=1) as rig:
        first = asyncio.create_task(rig.sipp("call.xml", duration_ms=4000))
        await rig.wait_call()
        busy = await rig.sipp("busy.xml", port=5080)
        nocodec = await rig.sipp("nocodec.xml", port=5090)
        first_result = await first
        await rig.settle()
        return rig.report(sipp=first_result, busy=busy, nocodec=nocodec)


async def bye_mid_reply() -> dict:
    async with Rig() as rig:
        before = set(asyncio.all_tasks())
        sipp = await rig.sipp("call.xml", duration_ms=1200)  # BYE while the greeting plays
        await rig.settle()
        await asyncio.sleep(0.3)
        left = [t.get_name() for t in asyncio.all_tasks() - before if not t.done()]
        return rig.report(sipp=sipp, leftover_tasks=left)


def _resources() -> dict:
    import os
    import threading

    return {"fds": len(os.listdir("/proc/self/fd")), "threads": threading.active_count(),
            "tasks": len([t for t in asyncio.all_tasks() if not t.done()])}


async def many() -> dict:
    """50 calls in a row (one at a time): what a call holds must be given back every time."""
    async with Rig() as rig:
        warm = await rig.sipp("call.xml", duration_ms=700, calls=5)
        await rig.settle()
        await asyncio.sleep(0.5)
        after_5 = _resources()
        sipp = await rig.sipp("call.xml", duration_ms=700, calls=45)
        await rig.settle()
        await asyncio.sleep(0.5)
        after_50 = _resources()
        return rig.report(sipp=sipp, warm=warm, after_5=after_5, after_50=after_50, answered=len(rig.calls),
                          sessions_done=rig.sessions_done)


async def dtmf() -> dict:
    async with Rig() as rig:
        sipp = await rig.sipp("dtmf.xml", duration_ms=1500)
        await rig.settle()
        prompts = [m["content"] for req in rig.llm.requests for m in req if m["role"] == "user"]
        return rig.report(sipp=sipp, user_prompts=prompts)


async def malformed() -> dict:
    async with Rig() as rig:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2.0)
        s.bind(("127.0.0.1", 5099))
        sut = ("127.0.0.1", SIP_PORT)
        garbage = [
            b"\x00\xffnot sip at all\r\n\r\n",
            b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK1\r\n"
            b"Content-Length: 0\r\n\r\n",  # no From, To, Call-ID, CSeq
            b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK2\r\n"
            b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: bad-sdp\r\nCSeq: 1 INVITE\r\n"
            b"Content-Type: application/sdp\r\nContent-Length: 24\r\n\r\nm=audio banana RTP/AVP x",
        ]
        answers = []
        for datagram in garbage:
            s.sendto(datagram, sut)
            answers.append(await asyncio.to_thread(_first_lines, s))
        s.sendto(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK3\r\n"
                 b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: opt\r\nCSeq: 1 OPTIONS\r\n"
                 b"Content-Length: 0\r\n\r\n", sut)
        options = await asyncio.to_thread(_first_lines, s)
        s.close()
        sipp = await rig.sipp("call.xml", duration_ms=2000)  # and a real call still works
        await rig.settle()
        return rig.report(sipp=sipp, answers=answers, options=options)


def _tail(path: str) -> str:
    p = Path(path)
    return p.read_text(errors="replace")[-2000:] if p.exists() else ""


def _first_lines(s: socket.socket) -> list[str]:
    """Status lines of what the server sent back within a moment (100 Trying, then a final answer)."""
    got = []
    try:
        while True:
            got.append(s.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace"))
            s.settimeout(0.5)
    except TimeoutError:
        pass
    s.settimeout(2.0)
    return got


async def agent_bye() -> dict:
    async with Rig() as rig:
        sipp = asyncio.create_task(rig.sipp("agent_bye.xml"))
        c = await rig.wait_call()
        await asyncio.sleep(1.5)
        await c.hang_up("the test says goodbye")
        result = await sipp
        await rig.settle()
        return rig.report(sipp=result)


async def refer() -> dict:
    async with Rig() as rig:
        sipp = asyncio.create_task(rig.sipp("refer.xml"))
        c = await rig.wait_call()
        await asyncio.sleep(0.5)
        ok = await c.transfer("operator")
        if ok:
            await c.hang_up("transferred")
        result = await sipp
        await rig.settle()
        return rig.report(sipp=result, transferred=ok, targets=c.transfers)


async def refer_refused() -> dict:
    async with Rig() as rig:
        sipp = asyncio.create_task(rig.sipp("refer_refused.xml", duration_ms=1500))
        c = await rig.wait_call()
        await asyncio.sleep(0.5)
        ok = await c.transfer("sip:operator@127.0.0.1")
        still_up = not c.ended.is_set()
        result = await sipp
        await rig.settle()
        return rig.report(sipp=result, transferred=ok, still_up=still_up)


if __name__ == "__main__":
    name = sys.argv[1]
    doc = asyncio.run(globals()[name]())
    print(json.dumps(doc, default=str))
