"""Local devices as an edge (`rejoinder talk`): the microphone in, the speaker out, via sounddevice.

PortAudio calls back from its own thread; frames cross to the event loop with
`call_soon_threadsafe`. The speaker buffer is small, like the WebRTC track's, so a barge-in flush in
`Playout` is heard at once: Playout paces, the device callback only drains what is due.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from pipeline.audio import AudioFrame
from pipeline.clock import Clock
from pipeline.mic_timeline import MicTimeline

log = logging.getLogger(__name__)


class DeviceError(RuntimeError):
    """sounddevice/PortAudio is missing, or the device could not be opened; the message says what to do."""


def load_sounddevice() -> Any:
    try:
        import sounddevice
    except ImportError as exc:  # no package, or no libportaudio (sounddevice raises OSError→ImportError)
        raise DeviceError(
            f"`rejoinder talk` needs sounddevice and PortAudio ({exc}): pip install 'rejoinder[talk]' "
            "and, on Debian/Ubuntu, apt-get install libportaudio2"
        ) from None
    return sounddevice


class DeviceMicrophone:
    """The microphone as 20 ms mono float32 frames, stamped on the session clock when they arrive."""

    def __init__(self, clock: Clock, device: int | str | None = None, sample_rate: int = 16_000,
                 sd: Any = None) -> None:
        self.clock, self.device, self.rate = clock, device, sample_rate
        self.sd = sd or load_sounddevice()
        self.overflows = 0

    async def frames(self) -> AsyncIterator[AudioFrame]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=100)  # 2 s: beyond it the loop is stuck

        def put(block: np.ndarray) -> None:
            if queue.full():
                queue.get_nowait()
                self.overflows += 1
            queue.put_nowait(block)

        def callback(indata, frames, time_info, status) -> None:  # PortAudio's thread
            if status:
                self.overflows += 1
            loop.call_soon_threadsafe(put, np.array(indata[:, 0], dtype=np.float32))

        try:
            stream = self.sd.InputStream(samplerate=self.rate, channels=1, dtype="float32",
                                         blocksize=self.rate // 50, device=self.device, callback=callback)
        except Exception as exc:
            raise DeviceError(f"cannot open the microphone {self.device or '(default)'}: {exc}; "
                              "list devices with `rejoinder talk --list-devices`") from None
        timeline = MicTimeline(self.clock, name="device microphone")  # never ahead of the clock
        with stream:
            while True:
                block = await queue.get()
                t = timeline.stamp(len(block) / self.rate)
                if t is not None:
                    yield AudioFrame(block, self.rate, t)


class DeviceSpeaker:
    """The speaker: `push` is the Playout sink; the device callback plays what is queued, else silence."""

    def __init__(self, device: int | str | None = None, sample_rate: int = 48_000, max_buffer_s: float = 0.12,
                 sd: Any = None) -> None:
        self.device, self.rate = device, sample_rate
        self.sd = sd or load_sounddevice()
        self._buf: deque[np.ndarray] = deque()
        self._queued = 0
        self._max = int(max_buffer_s * sample_rate)
        self._lock = threading.Lock()
        self._stream: Any | None = None  # a sounddevice.OutputStream while open
        self.underruns = 0
        self.dropped = 0

    def push(self, frame: AudioFrame) -> None:
        if frame.sample_rate != self.rate:
            raise ValueError(f"DeviceSpeaker plays {self.rate} Hz; got {frame.sample_rate} Hz frames")
        with self._lock:
            self._buf.append(frame.samples.astype(np.float32, copy=False))
            self._queued += len(frame.samples)
            while self._queued - len(self._buf[0]) >= self._max:  # keep latency (and stale audio) bounded
                self._queued -= len(self._buf.popleft())
                self.dropped += 1

    def _callback(self, outdata, frames, time_info, status) -> None:  # PortAudio's thread
        out = outdata[:, 0]
        filled = 0
        with self._lock:
            while filled < frames and self._buf:
                head = self._buf[0]
                take = min(len(head), frames - filled)
                out[filled : filled + take] = head[:take]
                filled += take
                if take == len(head):
                    self._buf.popleft()
                else:
                    self._buf[0] = head[take:]
                self._queued -= take
        if filled < frames:
            out[filled:] = 0

    def __enter__(self) -> "DeviceSpeaker":
        try:
            self._stream = self.sd.OutputStream(samplerate=self.rate, channels=1, dtype="float32",
                                                blocksize=self.rate // 100, device=self.device,
                                                callback=self._callback)
            self._stream.start()
        except Exception as exc:
            raise DeviceError(f"cannot open the speaker {self.device or '(default)'}: {exc}; "
                              "list devices with `rejoinder talk --list-devices`") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None


def check_devices(input_device: int | str | None = None, output_device: int | str | None = None,
                  sd: Any = None) -> Any:
    """Both devices open at the rates the agent uses, or a `DeviceError` saying which and what to do;
    returns the sounddevice module. Run it before the models load: a missing device should not cost a minute."""
    sd = sd or load_sounddevice()
    for kind, check, device, rate in (("microphone", sd.check_input_settings, input_device, 16_000),
                                      ("speaker", sd.check_output_settings, output_device, 48_000)):
        try:
            check(device=device, channels=1, samplerate=rate)
        except Exception as exc:
            raise DeviceError(f"no usable {kind} {device if device is not None else '(default)'}: {exc}; "
                              "list devices with `rejoinder talk --list-devices`") from None
    return sd


def list_devices(sd: Any = None) -> str:
    devices = (sd or load_sounddevice()).query_devices()
    return str(devices) if len(devices) else "no audio devices found (is PortAudio able to see a sound card?)"


__all__ = ["DeviceError", "DeviceMicrophone", "DeviceSpeaker", "check_devices", "list_devices"]
