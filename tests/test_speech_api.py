"""The OpenAI-compatible speech endpoints of `rejoinder serve` (transport/speech_api.py).

A real aiohttp server on 127.0.0.1 (`served`) with the token gate on. Fast tests run on
`FakeSpeechStack` (the real `StreamingTTS` over `FakeTTSEngine`: 16 kHz, 60 ms of tone per
character; `FakeSTT` answering "N samples" for the 16 kHz audio it was given), through aiohttp and
through the official `openai` client (so the contract is OpenAI's). The test marked `models` runs the
real `AgentStack` methods with the real Piper voice and Whisper: speech → WAV → transcription.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json

import aiohttp
import numpy as np
import pytest
import soundfile as sf

from tests.fakes import FakeSpeechStack, FakeStack, served, words

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEXT = "Hello there. How are you today?"


def expected_samples(stack: FakeSpeechStack) -> int:
    """What the fake voice made for the phrases it was given (60 ms per character at 16 kHz)."""
    return sum(int(len(t) * 0.06 * 16_000) for t in stack.engine.calls)


def wav_file(seconds: float, rate: int, fmt: str = "WAV", subtype: str | None = "PCM_16") -> bytes:
    x = (0.2 * np.sin(np.arange(int(seconds * rate)) * 0.07)).astype(np.float32)
    out = io.BytesIO()
    sf.write(out, x, rate, format=fmt, subtype=subtype)
    return out.getvalue()


async def post_speech(url: str, body, headers=None):
    """(status, headers, body bytes) of POST /v1/audio/speech."""
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/audio/speech", data=data,
                             headers={**AUTH, "Content-Type": "application/json"} if headers is None else headers) as r:
            return r.status, r.headers, await r.read()


async def post_upload(url: str, file: bytes | None, headers=None, **fields):
    """(status, headers, body text) of POST /v1/audio/transcriptions with a multipart form."""
    form = aiohttp.FormData(default_to_multipart=True)
    if file is not None:
        form.add_field("file", file, filename="speech.wav", content_type="audio/wav")
    for k, v in fields.items():
        form.add_field(k, v)
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/audio/transcriptions", data=form,
                             headers=AUTH if headers is None else headers) as r:
            return r.status, r.headers, await r.text()


def openai_error_of(body: bytes | str) -> dict:
    doc = json.loads(body)
    assert set(doc) == {"error"} and {"message", "type", "param"} <= set(doc["error"]), doc
    return doc["error"]


# --- speech --------------------------------------------------------------------------------------
async def test_speech_wav_is_one_whole_wav():
    stack = FakeSpeechStack()
    async with served(stack, token=TOKEN) as url:
        status, headers, body = await post_speech(url, {"model": "tts-1", "input": TEXT, "voice": "alloy",
                                                        "response_format": "wav"})
    assert status == 200, body
    assert headers["Content-Type"] == "audio/wav" and int(headers["Content-Length"]) == len(body)
    assert headers["X-Sample-Rate"] == "16000"
    audio, rate = sf.read(io.BytesIO(body), dtype="int16")
    assert rate == 16_000 and len(audio) == expected_samples(stack) > 0
    assert sf.info(io.BytesIO(body)).subtype == "PCM_16" and sf.info(io.BytesIO(body)).channels == 1


async def test_speech_defaults_to_wav():
    stack = FakeSpeechStack()
    async with served(stack, token=TOKEN) as url:
        status, headers, body = await post_speech(url, {"model": "tts-1", "input": "Hi.", "voice": "alloy"})
    assert status == 200 and headers["Content-Type"] == "audio/wav" and body[:4] == b"RIFF"


async def test_speech_pcm_streams_chunked_as_made():
    stack = FakeSpeechStack()
    async with served(stack, token=TOKEN) as url:
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/v1/audio/speech", headers=AUTH,
                                 json={"model": "tts-1", "input": TEXT, "voice": "x", "response_format": "pcm"}) as r:
                assert r.status == 200
                assert r.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in r.headers
                assert r.headers["Content-Type"] == "audio/pcm" and r.headers["X-Sample-Rate"] == "16000"
                pieces = [piece async for piece, _ in r.content.iter_chunks()]
    pcm = np.frombuffer(b"".join(pieces), "<i2")
    assert len(pcm) == expected_samples(stack)
    assert len([p for p in pieces if p]) > 1  # written chunk by chunk (100 ms chunks of ~2 s)
    # the tone itself, as 16-bit PCM
    first = stack.engine.synthesize(stack.engine.calls[0])
    assert np.abs(pcm[:1000] - np.round(first[:1000] * 32767)).max() <= 1


async def test_speech_pcm_whole_when_stream_is_false():
    stack = FakeSpeechStack()
    async with served(stack, token=TOKEN) as url:
        status, headers, body = await post_speech(url, {"input": TEXT, "response_format": "pcm", "stream": False})
    assert status == 200 and int(headers["Content-Length"]) == len(body) == 2 * expected_samples(stack)


async def test_speech_sse_deltas_are_the_pcm():
    stack = FakeSpeechStack()
    async with served(stack, token=TOKEN) as url:
        status, headers, body = await post_speech(url, {"input": TEXT, "response_format": "pcm",
                                                        "stream_format": "sse"})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in body.decode().split("\n\n") if line.startswith("data: ")]
    assert [e["type"] for e in events[-1:]] == ["speech.audio.done"]
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"}
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(pcm) == 2 * expected_samples(stack)


async def test_speech_speed_reaches_the_stack():
    stack = FakeSpeechStack()
    async with served(stack, token=TOKEN) as url:
        for speed in (0.25, 2, 4.0):
            status, _, body = await post_speech(url, {"input": "Hi.", "speed": speed})
            assert status == 200, body
    assert stack.speeds == [0.25, 2.0, 4.0]


@pytest.mark.parametrize(("body", "param", "says"), [
    (b"{not json", None, "not JSON"),
    (b"[1, 2]", None, "JSON object"),
    ({"model": "tts-1", "voice": "alloy"}, "input", "required"),
    ({"input": "   "}, "input", "empty"),
    ({"input": ""}, "input", "empty"),
    ({"input": "a" * 4097}, "input", "4096"),
    ({"input": 42}, "input", "string"),
    ({"input": "Hi.", "response_format": "ogg"}, "response_format", "unknown response_format"),
    ({"input": "Hi.", "response_format": "mp3"}, "response_format", "not made by this server"),
    ({"input": "Hi.", "speed": 0.1}, "speed", "out of range"),
    ({"input": "Hi.", "speed": 4.5}, "speed", "out of range"),
    ({"input": "Hi.", "speed": "fast"}, "speed", "number"),
    ({"input": "Hi.", "speed": True}, "speed", "number"),
    ({"input": "Hi.", "stream_format": "xml"}, "stream_format", "unknown stream_format"),
    ({"input": "Hi.", "stream_format": "sse", "response_format": "wav"}, "stream_format", "pcm"),
    ({"input": "Hi.", "stream": "yes"}, "stream", "true or false"),
    ({"input": "Hi.", "voice": 7}, "voice", "voice"),
])
async def test_speech_bad_input_is_400(body, param, says):
    stack = FakeSpeechStack()
    async with served(stack, token=TOKEN) as url:
        status, _, raw = await post_speech(url, body)
    assert status == 400, raw
    error = openai_error_of(raw)
    assert error["type"] == "invalid_request_error" and error["param"] == param and says in error["message"]
    assert stack.engine.calls == []  # nothing was synthesized


async def test_speech_input_of_4096_characters_is_accepted():
    stack = FakeSpeechStack()
    async with served(stack, token=TOKEN) as url:
        status, _, body = await post_speech(url, {"input": ("word " * 820)[:4096], "response_format": "pcm",
                                                  "stream": False})
    assert status == 200 and len(body) > 0


async def test_speech_body_keeps_the_server_cap():
    async with served(FakeSpeechStack(), token=TOKEN) as url:
        status, _, body = await post_speech(url, json.dumps({"input": "Hi.", "pad": "x" * 70_000}))
    assert status == 413, body


async def test_no_voice_or_recogniser_is_501():
    async with served(FakeStack(), token=TOKEN) as url:
        status, _, body = await post_speech(url, {"input": "Hi."})
        assert status == 501 and openai_error_of(body)["type"] == "server_error"
        status, _, text = await post_upload(url, wav_file(0.5, 16_000), model="whisper-1")
        assert status == 501, text


async def test_busy_is_503(monkeypatch):
    from transport import speech_api

    monkeypatch.setattr(speech_api, "MAX_JOBS", 0)
    async with served(FakeSpeechStack(), token=TOKEN) as url:
        status, headers, body = await post_speech(url, {"input": "Hi."})
        assert status == 503 and headers["Retry-After"] and openai_error_of(body)["type"] == "server_error"
        status, _, text = await post_upload(url, wav_file(0.5, 16_000), model="whisper-1")
        assert status == 503, text


# --- transcriptions ------------------------------------------------------------------------------
@pytest.mark.parametrize(("fmt", "subtype"), [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")])
async def test_transcription_reads_each_format_and_resamples(fmt, subtype):
    stack = FakeSpeechStack()
    async with served(stack, token=TOKEN) as url:
        status, headers, text = await post_upload(url, wav_file(1.0, 8_000, fmt, subtype), model="whisper-1")
    assert status == 200, text
    assert json.loads(text) == {"text": "16000 samples"} and stack.rates == [8_000]


async def test_transcription_above_the_server_cap_is_accepted():
    """5 s of 16 kHz WAV is 160 KB: over the 64 KiB cap of every other route."""
    stack = FakeSpeechStack()
    async with served(stack, token=TOKEN) as url:
        status, _, text = await post_upload(url, wav_file(5.0, 16_000), model="whisper-1", language="en")
    assert status == 200 and json.loads(text) == {"text": "80000 samples"}


async def test_transcription_as_text():
    async with served(FakeSpeechStack(), token=TOKEN) as url:
        status, headers, text = await post_upload(url, wav_file(0.5, 16_000), model="whisper-1",
                                                  response_format="text")
    assert status == 200 and headers["Content-Type"].startswith("text/plain") and text.strip() == "8000 samples"


@pytest.mark.parametrize(("file", "fields", "param", "says"), [
    (None, {"model": "whisper-1"}, "file", "required"),
    (b"this is not audio at all" * 10, {"model": "whisper-1"}, "file", "not audio"),
    (wav_file(0.0, 16_000), {"model": "whisper-1"}, "file", "no audio"),
    (wav_file(0.5, 16_000), {"response_format": "srt"}, "response_format", "not made by this server"),
    (wav_file(0.5, 16_000), {"language": "english please"}, "language", "language code"),
], ids=["no-file", "not-audio", "no-samples", "srt", "bad-language"])
async def test_transcription_bad_input_is_400(file, fields, param, says):
    stack = FakeSpeechStack()
    async with served(stack, token=TOKEN) as url:
        status, _, text = await post_upload(url, file, **fields)
    assert status == 400, text
    error = openai_error_of(text)
    assert error["param"] == param and says in error["message"]
    assert stack.stt.calls == []


async def test_transcription_not_multipart_is_400():
    async with served(FakeSpeechStack(), token=TOKEN) as url:
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/v1/audio/transcriptions", json={"file": "x"}, headers=AUTH) as r:
                assert r.status == 400
                assert "multipart/form-data" in openai_error_of(await r.text())["message"]


async def test_transcription_over_25_mb_is_413():
    big = b"\0" * (25 * 1024 * 1024 + 100 * 1024)
    stack = FakeSpeechStack()
    async with served(stack, token=TOKEN) as url:
        status, _, text = await post_upload(url, big, model="whisper-1")
    assert status == 413, text[:200]
    assert stack.stt.calls == []


async def test_file_over_25_mib_within_the_body_cap_is_413():
    """The body allowance has room for the form's other fields: the file itself is checked too."""
    from transport.speech_api import MAX_FILE_BYTES

    async with served(FakeSpeechStack(), token=TOKEN) as url:
        status, _, text = await post_upload(url, b"\0" * (MAX_FILE_BYTES + 10), model="whisper-1")
    assert status == 413 and openai_error_of(text)["param"] == "file"


async def _slow_upload(port: int, declared: int, sent: bytes) -> asyncio.StreamReader:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                 f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {declared}\r\n\r\n".encode()
                 + sent)
    await writer.drain()
    reader._writer = writer  # type: ignore[attr-defined]  # kept open with the reader
    return reader


async def test_upload_still_has_a_body_deadline(monkeypatch):
    from transport import server
    from transport.guard import LargerBody

    monkeypatch.setattr(server, "UPLOAD_BODY", LargerBody(max_bytes=1 << 20, timeout_s=0.3, at_once=2))
    async with served(FakeSpeechStack(), token=TOKEN, body_timeout_s=0.1) as url:
        reader = await _slow_upload(int(url.rsplit(":", 1)[1]), 100_000, b"--b\r\n")
        head = await asyncio.wait_for(reader.read(200), 5)
    assert head.startswith(b"HTTP/1.1 408"), head


async def test_uploads_at_once_are_bounded(monkeypatch):
    from transport import server
    from transport.guard import LargerBody

    monkeypatch.setattr(server, "UPLOAD_BODY", LargerBody(max_bytes=1 << 20, timeout_s=5.0, at_once=1))
    stack = FakeSpeechStack()
    async with served(stack, token=TOKEN) as url:
        reader = await _slow_upload(int(url.rsplit(":", 1)[1]), 100_000, b"--b\r\n")  # holds the one slot
        await asyncio.sleep(0.2)
        status, headers, text = await post_upload(url, wav_file(0.5, 16_000), model="whisper-1")
        assert status == 503 and headers["Retry-After"], text
        reader._writer.close()  # type: ignore[attr-defined]
        await asyncio.sleep(0.2)
        status, _, text = await post_upload(url, wav_file(0.5, 16_000), model="whisper-1")
        assert status == 200, text


# --- health, token -------------------------------------------------------------------------------
async def test_healthz():
    stack = FakeSpeechStack()
    async with served(stack, token=TOKEN) as url:
        async with aiohttp.ClientSession(headers=AUTH) as http:
            async with http.get(url + "/healthz") as r:
                assert r.status == 200 and await r.json() == {"ok": True}
            stack.up = False
            async with http.get(url + "/healthz") as r:
                assert r.status == 503 and await r.json() == {"ok": False}
            stack.health = lambda: 1 / 0  # type: ignore[method-assign]
            async with http.get(url + "/healthz") as r:
                assert r.status == 503 and await r.json() == {"ok": False}


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/audio/speech"), ("POST", "/v1/audio/transcriptions"),
                                              ("GET", "/healthz")])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
async def test_new_routes_need_the_token(method, path, headers):
    stack = FakeSpeechStack()
    async with served(stack, token=TOKEN) as url:
        async with aiohttp.ClientSession() as http:
            async with http.request(method, url + path, headers=headers, json={"input": "Hi."}) as r:
                assert r.status == 401
    assert stack.engine.calls == [] and stack.stt.calls == []


# --- the official client -------------------------------------------------------------------------
async def test_openai_client_speaks_and_transcribes():
    import openai

    stack = FakeSpeechStack()
    async with served(stack, token=TOKEN) as url:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=TOKEN, max_retries=0)
        try:
            speech = await client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="wav")
            wav = speech.content
            audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
            assert rate == 16_000 and len(audio) == expected_samples(stack)

            pieces = []
            async with client.audio.speech.with_streaming_response.create(
                    model="tts-1", voice="alloy", input=TEXT, response_format="pcm", speed=1.5) as response:
                assert response.headers["X-Sample-Rate"] == "16000"
                async for piece in response.iter_bytes():
                    pieces.append(piece)
            assert len(b"".join(pieces)) == 2 * len(audio) and stack.speeds[-1] == 1.5

            result = await client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", wav, "audio/wav"))
            assert result.text == f"{len(audio)} samples"
            text = await client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", wav),
                                                            response_format="text")
            assert str(text).strip() == f"{len(audio)} samples"

            with pytest.raises(openai.BadRequestError) as bad:
                await client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", speed=9.0)
            assert bad.value.status_code == 400 and "speed" in bad.value.message
            with pytest.raises(openai.BadRequestError) as bad:
                await client.audio.transcriptions.create(model="whisper-1", file=("x.wav", b"not audio" * 20))
            assert "not audio" in bad.value.message
            with pytest.raises(openai.AuthenticationError):
                wrong = openai.AsyncOpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
                await wrong.audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
        finally:
            await client.close()


# --- the real voice and recogniser ---------------------------------------------------------------
@pytest.mark.models
async def test_real_voice_round_trip():
    """Piper speaks a sentence through /v1/audio/speech; Whisper hears it back through
    /v1/audio/transcriptions (the real `AgentStack` methods; no LLM is needed)."""
    from typing import Any, cast

    from agent.config import AgentConfig
    from agent.stack import AgentStack
    from stt.engines import load_stt
    from tts.engines import load_tts

    cfg = AgentConfig()
    stack = AgentStack(cfg, load_stt(cfg.stt), load_tts(cfg.tts), llm=cast(Any, None))
    sentence = "The quick brown fox jumps over the lazy dog near the river bank."
    async with served(stack, token=TOKEN) as url:
        status, headers, wav = await post_speech(url, {"model": "tts-1", "voice": "alloy", "input": sentence,
                                                       "response_format": "wav"})
        assert status == 200 and int(headers["X-Sample-Rate"]) == stack.speech_rate
        status, _, fast = await post_speech(url, {"input": sentence, "response_format": "pcm", "speed": 2.0})
        assert status == 200
        status, _, text = await post_upload(url, wav, model="whisper-1")
    assert status == 200, text
    said, heard = words(sentence), words(json.loads(text)["text"])
    overlap = len(set(said) & set(heard)) / len(set(said))
    assert overlap >= 0.7, (said, heard)
    normal = sf.info(io.BytesIO(wav)).frames
    assert len(fast) // 2 < 0.75 * normal  # speed 2: clearly shorter than the voice's own pace
