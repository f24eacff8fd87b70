"""`--record-dir DIR`: every call as a stereo WAV (caller left, agent right, on the media clock) and
a JSON transcript (what was heard, interruptions, tool calls, per-turn metrics, what the agent did
to the call).

Off by default (a recording is personal data; when on, the browser page says so). Both channels are
kept at 16 kHz while the call runs (~7.7 MB a minute of call), written when it ends.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

from pipeline.audio import AudioFrame, StreamResampler
from transport.files import TimelineRecorder

log = logging.getLogger(__name__)

RATE = 16_000


class CallRecorder:
    """One call's recording; `user`/`agent` take frames as they pass, `close` writes both files."""

    def __init__(self, directory: Path, edge: str = "call") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.base = directory / f"{time.strftime('%Y%m%d-%H%M%S')}-{edge}-{secrets.token_hex(3)}"
        self.started = time.time()
        self._timeline = TimelineRecorder(sample_rate=RATE)
        self._resamplers: dict[tuple[int, int], StreamResampler] = {}

    def _add(self, channel: int, frame: AudioFrame) -> None:
        key = (channel, frame.sample_rate)
        rs = self._resamplers.get(key)
        if rs is None:
            rs = self._resamplers[key] = StreamResampler(frame.sample_rate, RATE)
        samples = rs(frame.samples)
        if samples.size:
            self._timeline.add(channel, AudioFrame(samples, RATE, frame.timestamp))

    def user(self, frame: AudioFrame) -> None:
        self._add(0, frame)

    def agent(self, frame: AudioFrame) -> None:
        self._add(1, frame)

    def close(self, turns: list[Any], history: list[Any], call: Any = None) -> tuple[Path, Path]:
        wav, doc = self.base.with_suffix(".wav"), self.base.with_suffix(".json")
        seconds = self._timeline.write(wav)
        report = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "seconds": round(seconds, 2), "wav": wav.name,
            "channels": {"left": "caller", "right": "agent"}, "sample_rate": RATE,
            "timeline_start": self._timeline.t0,
            "turns": [m.as_dict() if hasattr(m, "as_dict") else m for m in turns],
            "history": [dataclasses.asdict(m) if dataclasses.is_dataclass(m) and not isinstance(m, type) else m
                        for m in history],
            "call": call.as_dict() if hasattr(call, "as_dict") else None,
        }
        doc.write_text(json.dumps(report, indent=2, default=str) + "\n")
        log.info("recorded the call to %s (%.1f s)", wav, seconds)
        return wav, doc
