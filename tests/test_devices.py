"""Local devices (`transport.devices`, `rejoinder talk`) on a FAKE sounddevice module.

There is no sound card here: `FakeSD` stands in for sounddevice/PortAudio, calling the stream
callbacks from its own threads at real-time pace, like PortAudio does. The microphone plays a real
recording; the speaker records what it is given. `test_talk_converses_on_local_devices` runs the
REAL embedded stack behind them.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from agent.talk import talk
from pipeline.audio import AudioFrame, read_audio, resample
from pipeline.clock import RealClock
from tests.fakes import DATA, words
from transport.devices import DeviceError, DeviceMicrophone, DeviceSpeaker


class _Stream:
    def __init__(self, sd: "FakeSD", samplerate, channels, dtype, blocksize, device, callback, out: bool) -> None:
        self.sd, self.rate, self.block, self.callback, self.out = sd, samplerate, blocksize, callback, out
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def close(self) -> None:
        pass

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        self.close()

    def _run(self) -> None:
        t0, n = time.monotonic(), 0
        while not self._stop.is_set():
            delay = t0 + n * self.block / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if self.out:
                buf = np.full((self.block, 1), np.nan, np.float32)
                self.callback(buf, self.block, None, None)
                self.sd.played.append(buf[:, 0].copy())
            else:
                i = n * self.block
                chunk = self.sd.mic[i : i + self.block]
                chunk = np.pad(chunk, (0, self.block - len(chunk)))
                self.callback(chunk.reshape(-1, 1), self.block, None, None)
            n += 1


class FakeSD:
    """The parts of sounddevice that transport.devices uses."""

    def __init__(self, mic: np.ndarray | None = None, broken: bool = False) -> None:
        self.mic = mic if mic is not None else np.zeros(0, np.float32)
        self.played: list[np.ndarray] = []
        self.broken = broken

    def InputStream(self, **kw):  # noqa: N802 (sounddevice's names)
        return _Stream(self, out=False, **kw)

    def OutputStream(self, **kw):  # noqa: N802
        return _Stream(self, out=True, **kw)

    def check_input_settings(self, **kw):
        if self.broken:
            raise RuntimeError("Error querying device -1")

    check_output_settings = check_input_settings

    def query_devices(self):
        return []


async def test_microphone_frames_are_20ms_and_stamped_on_the_clock():
    audio, rate = read_audio(DATA / "goforward.wav")
    sd = FakeSD(audio)
    clock = RealClock()
    got: list[AudioFrame] = []
    async for f in DeviceMicrophone(clock, sample_rate=rate, sd=sd).frames():
        got.append(f)
        if len(got) == 25:
            break
    assert all(f.samples.shape == (rate // 50,) and f.sample_rate == rate for f in got)
    np.testing.assert_array_equal(np.concatenate([f.samples for f in got]), audio[: 25 * rate // 50])
    stamps = [f.timestamp for f in got]
    assert stamps == sorted(stamps) and abs(stamps[-1] - clock.now()) < 0.2
    assert 0.3 < stamps[-1] - stamps[0] < 0.7, "frames were not paced like a device"


async def test_speaker_plays_in_order_silence_when_empty_and_bounds_its_buffer():
    sd = FakeSD()
    with DeviceSpeaker(sample_rate=48_000, max_buffer_s=0.1, sd=sd) as spk:
        for i in range(20):  # 400 ms at once (a stalled loop): only the newest ~100 ms are kept
            spk.push(AudioFrame(np.full(960, (i + 1) / 100, np.float32), 48_000, i * 0.02))
        assert spk.dropped >= 15
        await asyncio.sleep(0.3)
    out = np.concatenate(sd.played)
    assert not np.isnan(out).any(), "the callback left part of a buffer unwritten"
    levels = [v for v in np.unique(np.round(out, 3)) if v > 0]
    assert min(levels) >= 0.15 and max(levels) == 0.2, "the oldest audio was not the part dropped"
    assert (out[-4800:] == 0).all(), "an idle speaker must play silence"
    with pytest.raises(ValueError, match="48000 Hz"):
        DeviceSpeaker(sd=sd).push(AudioFrame(np.zeros(480, np.float32), 24_000, 0.0))


async def test_talk_without_a_device_says_so_before_loading_models():
    from agent.config import load_config

    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="no usable microphone.*--list-devices"):
        await talk(load_config(), sd=FakeSD(broken=True))
    assert time.monotonic() - t0 < 1.0


@pytest.mark.models
async def test_talk_converses_on_local_devices():
    from agent.config import load_config

    audio, rate = read_audio(DATA / "librivox-0880.wav")
    mic = np.concatenate([np.zeros(8000, np.float32), resample(audio, rate, 16_000)])
    sd = FakeSD(mic)
    lines: list[str] = []
    answered = asyncio.Event()

    def say(line: str) -> None:
        lines.append(line)
        if line.startswith("agent:"):
            answered.set()

    task = asyncio.create_task(talk(load_config(), progress=lambda s: None, say=say, sd=sd))
    try:
        await asyncio.wait_for(answered.wait(), 120)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    you = next(line for line in lines if line.startswith("you:"))
    assert {"young", "man"} <= set(words(you)), lines
    played = np.concatenate(sd.played)
    assert np.sum(np.abs(played) > 0.05) > 48_000 * 0.1, "the speaker played no reply"
