"""A small Python WebRTC client for `rejoinder serve`: sends a microphone track, receives the agent.

Used by the end-to-end tests and handy for scripted calls against a running server. It speaks the
same contract as the page: `POST /offer`, an audio track each way, and the "events" data channel.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from pipeline.audio import resample
from transport.pacing import FramePacer
from transport.webrtc import EVENTS_CHANNEL, enable_loopback_candidates, frame_to_mono, rtc_configuration


class ScriptedMicTrack(MediaStreamTrack):
    """Plays `lead_s` of silence, then a recording, then silence forever: 20 ms s16 frames, real-time paced.

    `voiced_end` is the wall time (time.monotonic) at which the recording's last voiced frame had been
    sent; `speech_end` the same for its last frame (trailing silence included).
    """

    kind = "audio"

    def __init__(self, samples: np.ndarray, sample_rate: int, lead_s: float = 0.5) -> None:
        super().__init__()
        self.rate = sample_rate
        self.step = sample_rate // 50
        lead = np.zeros(int(lead_s * sample_rate), np.float32)
        self.audio = np.concatenate([lead, samples.astype(np.float32)])
        self.pos = 0
        self._pacer = FramePacer(sample_rate)  # after a stall, the late frames go at once (catch up)
        self.speech_end: float | None = None
        self.voiced_end: float | None = None
        voiced = [i for i in range(0, len(self.audio), self.step)
                  if np.sqrt(np.mean(np.square(self.audio[i : i + self.step]))) > 0.01]
        self._last_voiced_pos = voiced[-1] if voiced else -1

    def say(self, samples: np.ndarray, sample_rate: int) -> None:
        """Speak `samples` next (e.g. to barge in), after what is still unsent of the recording."""
        if sample_rate != self.rate:
            samples = resample(samples, sample_rate, self.rate)
        if self.pos > len(self.audio):  # silence was sent past the end: keep positions aligned
            self.audio = np.pad(self.audio, (0, self.pos - len(self.audio)))
        self.audio = np.concatenate([self.audio, samples.astype(np.float32)])

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait(self.pos)
        chunk = self.audio[self.pos : self.pos + self.step]
        if self.pos == self._last_voiced_pos:
            self.voiced_end = time.monotonic() + self.step / self.rate  # once this frame has played out
        if len(chunk) < self.step:
            if self.speech_end is None:
                self.speech_end = time.monotonic()
            chunk = np.pad(chunk, (0, self.step - len(chunk)))
        pcm = (np.clip(chunk, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self.pos
        frame.time_base = fractions.Fraction(1, self.rate)
        self.pos += self.step
        return frame


class AgentCall:
    """One call to the server: collects the agent's audio (with arrival times) and the events."""

    def __init__(self, mic: MediaStreamTrack, ice_servers: list[str] | None = None) -> None:
        enable_loopback_candidates()
        self.pc = RTCPeerConnection(rtc_configuration(ice_servers or []))
        self.pc.addTrack(mic)
        self.channel = self.pc.createDataChannel(EVENTS_CHANNEL)
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)
        self.events: list[dict] = []
        self.event_times: list[float] = []  # arrival (time.monotonic) of each event
        self.audio: list[tuple[float, np.ndarray, int]] = []  # arrival time, mono samples, rate
        self.connect_s: float | None = None
        self._new_event = asyncio.Event()
        self._reader: asyncio.Task | None = None

    async def connect(self, base_url: str, token: str | None = None, timeout: float = 20.0) -> None:
        """Offer, answer, and wait until the peer connection is connected."""
        t0 = time.monotonic()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        offer = {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base_url}/offer", json=offer, headers=headers) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"/offer answered {resp.status}: {body.get('error')}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected":
            if self.pc.connectionState == "failed" or time.monotonic() > deadline:
                raise RuntimeError(f"peer connection did not connect (state {self.pc.connectionState})")
            await asyncio.sleep(0.01)
        self.connect_s = time.monotonic() - t0

    def send(self, event: dict) -> None:
        self.channel.send(json.dumps(event))

    async def wait_event(self, predicate, timeout: float) -> dict:
        """Wait for an event matching `predicate` (already received ones count)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for e in self.events[seen:]:
                if predicate(e):
                    return e
            seen = len(self.events)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching event within {timeout} s; got {[e.get('type') for e in self.events]}")
            self._new_event.clear()
            try:
                await asyncio.wait_for(self._new_event.wait(), remaining)
            except TimeoutError:
                pass

    def received(self, since: float = 0.0, rate: int = 16_000) -> np.ndarray:
        """The agent's audio that arrived after `since` (monotonic), resampled to `rate`."""
        parts = [resample(s, r, rate) for t, s, r in self.audio if t >= since]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def first_voiced_after(self, since: float, threshold: float = 0.01) -> float | None:
        """Arrival time of the first received frame louder than `threshold` RMS after `since`."""
        for t, s, _ in self.audio:
            if t >= since and s.size and float(np.sqrt(np.mean(s * s))) > threshold:
                return t - len(s) / 48_000
        return None

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.pc.close()

    def _on_message(self, message: Any) -> None:
        self.events.append(json.loads(message))
        self.event_times.append(time.monotonic())
        self._new_event.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._reader is None:
            self._reader = asyncio.create_task(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.AudioFrame), "an audio track yields audio frames"
            self._received(time.monotonic(), frame_to_mono(frame), frame.sample_rate)

    def _received(self, at: float, mono: np.ndarray, rate: int) -> None:
        """One frame of the agent's voice arrived (a subclass may also listen to it)."""
        self.audio.append((at, mono, rate))
