"""Hosted STT through an OpenAI-compatible endpoint: a fake aiohttp server stands in for it (no model).

The fake checks what a real server would parse: a multipart form with a 16 kHz 16-bit WAV of the
utterance, the model name and the language.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import soundfile as sf
from aiohttp import web

from pipeline.clock import VirtualClock
from pipeline.events import SpeechEnded, SpeechStarted
from stt.engines import load_stt
from stt.openai_stt import OpenAITranscriber, STTError
from stt.transcriber import StreamingTranscriber
from stt.whisper import WhisperOptions


class FakeServer:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        audio, rate = sf.read(io.BytesIO(form["file"].file.read()), dtype="float32")
        self.requests.append({"path": request.path, "model": form.get("model"), "language": form.get("language"),
                              "rate": rate, "audio": audio, "auth": request.headers.get("Authorization")})
        if self.status != 200:
            return web.json_response({"error": {"message": "model overloaded"}}, status=self.status)
        return web.json_response({"text": "  Go forward   ten meters. "})

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/audio/transcriptions", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}/v1"

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


def tone(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


async def test_transcribes_a_wav_in_memory_through_the_endpoint() -> None:
    server = FakeServer()
    async with server as url:
        engine = load_stt(WhisperOptions(url=url, model="my-whisper"))
        assert isinstance(engine, OpenAITranscriber)
        audio = tone(1.5)
        r = await asyncio.to_thread(engine.transcribe, audio)
    assert r.text == "Go forward ten meters." and r.audio_s == pytest.approx(1.5)
    (req,) = server.requests
    assert req["path"] == "/v1/audio/transcriptions" and req["model"] == "my-whisper" and req["language"] == "en"
    assert req["rate"] == 16000 and len(req["audio"]) == len(audio)
    np.testing.assert_allclose(req["audio"], audio, atol=1e-4)  # 16-bit WAV of the very samples


async def test_bundled_model_key_becomes_whisper_1_and_silence_sends_nothing() -> None:
    server = FakeServer()
    async with server as url:
        engine = OpenAITranscriber(url, model="tiny.en")
        assert (await asyncio.to_thread(engine.transcribe, np.zeros(16000, np.float32))).text == ""
        await asyncio.to_thread(engine.transcribe, tone())
    assert [r["model"] for r in server.requests] == ["whisper-1"]


async def test_endpoint_failure_names_the_endpoint() -> None:
    async with FakeServer(status=500) as url:
        engine = OpenAITranscriber(url)
        with pytest.raises(STTError, match=r"127\.0\.0\.1.*failed"):
            await asyncio.to_thread(engine.transcribe, tone())


async def test_streaming_transcriber_drives_the_hosted_engine() -> None:
    server = FakeServer()
    async with server as url:
        clock = VirtualClock()
        tr = StreamingTranscriber(OpenAITranscriber(url), clock)
        tr.handle(SpeechStarted(0.0))
        final = await tr.handle(SpeechEnded(0.0, 1.0, 1.5, tone()))
        await tr.aclose()
    assert final.final and final.text == "Go forward ten meters." and len(server.requests) == 1
