"""OpenAI-compatible speech endpoints of `rejoinder serve`: the agent's voice and ears as an API.

    POST /v1/audio/speech          JSON {"model", "input", "voice", "response_format", "speed",
                                   "stream_format", "stream"} → audio
    POST /v1/audio/transcriptions  multipart/form-data: file, model, language, response_format → text

Speech uses the server's loaded voice whatever `voice` and `model` say (both are accepted, as
OpenAI's clients always send them). `response_format`:
- "pcm" (the low-latency path): raw 16-bit little-endian mono at the voice's own rate (header
  `X-Sample-Rate`), sent with chunked transfer as `tts.stream.StreamingTTS` makes each chunk (the
  first after the first short phrase's first window); `"stream": false` sends it whole instead;
- "wav" (the default; OpenAI's is mp3, which is not made here): one WAV of the whole text, sent once
  it is all synthesized, with a Content-Length;
- `"stream_format": "sse"` (pcm only): server-sent events `{"type": "speech.audio.delta", "audio":
  base64 PCM}` per chunk, then `{"type": "speech.audio.done", ...}`.
`speed` 0.25–4.0 scales the voice's configured speaking rate. `input` is at most 4096 characters.

Transcription reads any file libsndfile does (WAV, FLAC, OGG, MP3) up to 25 MiB, and answers
`{"text": ...}` ("json", the default) or the bare text ("text"), from the server's speech recogniser
(its configured model and language: `language` is checked for form, then left to that setting).

Errors are OpenAI's shape, `{"error": {"message", "type": "invalid_request_error", "param", "code"}}`:
400 for a request that cannot be served as sent, 413 for an upload over the cap, 501 when the stack
has no voice or recogniser, 503 when `MAX_JOBS` requests are already being served. The token gate,
Host allow-list and body deadline of `transport.server` apply as on every route; the upload route
gets its own, larger body allowance (`UPLOAD_BODY`, applied by `transport.guard.body_deadline`).

The stack is seen through `SpeechStack` (`agent.stack.AgentStack` implements it); this module
imports nothing above `pipeline/`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.parser
import email.policy
import io
import json
import logging
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import soundfile as sf
from aiohttp import web

from pipeline.audio import sanitize, to_mono
from transport.guard import BadJSON, LargerBody, loads_bounded

log = logging.getLogger(__name__)

SPEECH_PATH = "/v1/audio/speech"
TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
MAX_INPUT_CHARS = 4096  # OpenAI's limit on `input`
MAX_FILE_BYTES = 25 * 1024 * 1024  # OpenAI's limit on an uploaded file
# The upload route's body: the file plus the form's other fields and boundaries; 60 s for it all
# (25 MiB at ~3.5 Mbit/s); two such bodies in memory at once at most.
UPLOAD_BODY = LargerBody(max_bytes=MAX_FILE_BYTES + 64 * 1024, timeout_s=60.0, at_once=2)
MAX_JOBS = 2  # speech + transcription requests served at once: they share 2 cores with live calls
SPEEDS = (0.25, 4.0)
FORMATS = ("wav", "pcm")
UNMADE_FORMATS = ("mp3", "opus", "aac", "flac")  # OpenAI's other formats: named in the error
TRANSCRIPT_FORMATS = ("json", "text")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})?$")


class SpeechStack(Protocol):
    """What the speech endpoints need from the agent (`agent.stack.AgentStack`, or a fake)."""

    @property
    def speech_rate(self) -> int:
        """The sample rate of what `synthesize_stream` yields."""
        ...

    def synthesize_stream(self, text: str, speed: float = 1.0) -> AsyncIterator[np.ndarray]:
        """Mono float32 chunks of `text` spoken by the loaded voice, as they are made."""
        ...

    async def transcribe_audio(self, samples: np.ndarray, rate: int) -> str:
        """The words in mono float32 `samples` at `rate` (off the event loop)."""
        ...


class RequestError(Exception):
    """A request the endpoint cannot serve as sent: OpenAI's error shape, naming the field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.status = message, param, status

    def response(self) -> web.Response:
        return openai_error(self.status, self.message, self.param)


def openai_error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": None}},
                             status=status, headers=headers)


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    response_format: str = "wav"
    speed: float = 1.0
    sse: bool = False
    stream: bool = True  # pcm only: chunked as made (True) or whole


def parse_speech(params: Any) -> SpeechRequest:
    """A `SpeechRequest` from the JSON body, or `RequestError` naming what to change."""
    if not isinstance(params, dict):
        raise RequestError('expected a JSON object {"model": ..., "input": ..., "voice": ...}')
    text = params.get("input")
    if text is None:
        raise RequestError("'input' is required: the text to speak", "input")
    if not isinstance(text, str):
        raise RequestError(f"'input' must be a string, got {type(text).__name__}", "input")
    if not text.strip():
        raise RequestError("'input' is empty: give the text to speak", "input")
    if len(text) > MAX_INPUT_CHARS:
        raise RequestError(f"'input' is {len(text)} characters; the limit is {MAX_INPUT_CHARS}", "input")
    for name in ("model", "instructions"):
        if params.get(name) is not None and not isinstance(params[name], str):
            raise RequestError(f"'{name}' must be a string", name)
    voice = params.get("voice")
    if voice is not None and not isinstance(voice, str | dict):
        raise RequestError("'voice' must be a voice name (this server speaks with its loaded voice)", "voice")
    fmt = params.get("response_format", "wav")
    if fmt in UNMADE_FORMATS:
        raise RequestError(f"response_format {fmt!r} is not made by this server; use one of: "
                           f"{', '.join(FORMATS)}", "response_format")
    if fmt not in FORMATS:
        raise RequestError(f"unknown response_format {fmt!r}; use one of: {', '.join(FORMATS)}", "response_format")
    speed = params.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not math.isfinite(speed):
        raise RequestError(f"'speed' must be a number from {SPEEDS[0]} to {SPEEDS[1]}", "speed")
    if not SPEEDS[0] <= speed <= SPEEDS[1]:
        raise RequestError(f"'speed' {speed} is out of range {SPEEDS[0]}–{SPEEDS[1]}", "speed")
    stream_format = params.get("stream_format", "audio")
    if stream_format not in ("audio", "sse"):
        raise RequestError(f"unknown stream_format {stream_format!r}; use 'audio' or 'sse'", "stream_format")
    if stream_format == "sse" and fmt != "pcm":
        raise RequestError("stream_format 'sse' sends PCM deltas: use it with response_format 'pcm'", "stream_format")
    stream = params.get("stream", True)
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be true or false", "stream")
    return SpeechRequest(text, fmt, float(speed), stream_format == "sse", stream)


def pcm16(samples: np.ndarray) -> bytes:
    """Float32 in [-1, 1] → 16-bit little-endian PCM."""
    clean, _ = sanitize(np.asarray(samples, dtype=np.float32))
    return (np.round(clean * 32767.0)).astype("<i2").tobytes()


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    out = io.BytesIO()
    sf.write(out, sanitize(np.asarray(samples, dtype=np.float32))[0], rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


@dataclass
class Upload:
    """The fields of a transcription request's form: the file's bytes and the text fields."""

    file: bytes | None
    filename: str | None
    fields: dict[str, str]


def parse_form(content_type: str, body: bytes) -> Upload:
    """multipart/form-data → `Upload` (blocking: the stdlib's MIME parser; run it in a thread)."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type.lower():
        raise RequestError("send multipart/form-data with the audio in a 'file' field "
                           "(curl -F file=@speech.wav -F model=whisper-1)", "file")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("utf-8", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise RequestError("the multipart/form-data body could not be read", "file")
    upload = Upload(None, None, {})
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if name == "file":
            upload.file, upload.filename = data, part.get_filename()
        elif len(data) <= 1024:
            upload.fields[name] = data.decode("utf-8", "replace").strip()
    return upload


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """An uploaded file → mono float32 and its rate (blocking), or `RequestError`."""
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise RequestError(f"'file' is not audio this server can read (WAV, FLAC, OGG, MP3): {exc}", "file") from None
    mono, _ = sanitize(to_mono(samples))
    if mono.size == 0:
        raise RequestError("'file' holds no audio samples", "file")
    return mono, int(rate)


class SpeechAPI:
    """The handlers, bound to one stack; `MAX_JOBS` requests are served at once, the rest get 503."""

    def __init__(self, stack: object) -> None:
        self.stack = stack
        self.jobs = 0

    def _busy(self) -> web.Response | None:
        if self.jobs >= MAX_JOBS:
            return openai_error(503, f"{MAX_JOBS} speech requests are being served; try again soon",
                                kind="server_error", headers={"Retry-After": "2"})
        return None

    async def speech(self, request: web.Request) -> web.StreamResponse:
        """`POST /v1/audio/speech`."""
        try:
            try:
                params = loads_bounded(await request.read(), 64 * 1024, 8)
            except BadJSON as exc:
                raise RequestError(f'body {exc}; send {{"model": "tts-1", "input": "Hello.", "voice": "alloy"}}'
                                   ) from None
            req = parse_speech(params)
        except RequestError as exc:
            return exc.response()
        synthesize = getattr(self.stack, "synthesize_stream", None)
        if synthesize is None:
            return openai_error(501, "this server has no voice loaded", kind="server_error")
        busy = self._busy()
        if busy is not None:
            return busy
        self.jobs += 1
        try:
            rate = int(self.stack.speech_rate)  # type: ignore[attr-defined]
            async with contextlib.aclosing(synthesize(req.text, req.speed)) as chunks:
                if req.response_format == "pcm" and (req.stream or req.sse):
                    return await self._stream(request, req, chunks, rate)
                parts = []
                async for samples in chunks:
                    if request.transport is None or request.transport.is_closing():
                        break  # the client went away: stop synthesizing for nobody
                    parts.append(samples)
            audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            headers = {"X-Sample-Rate": str(rate)}
            if req.response_format == "wav":
                return web.Response(body=wav_bytes(audio, rate), content_type="audio/wav", headers=headers)
            return web.Response(body=pcm16(audio), content_type="audio/pcm", headers=headers)
        finally:
            self.jobs -= 1

    async def _stream(self, request: web.Request, req: SpeechRequest, chunks: AsyncIterator[np.ndarray],
                      rate: int) -> web.StreamResponse:
        """Chunked transfer, one write per chunk as it is made. The first chunk is made before the
        headers are sent, so a voice that fails at once is still a JSON error, not a cut stream."""
        first = await anext(chunks, None)
        resp = web.StreamResponse(headers={"X-Sample-Rate": str(rate), "Cache-Control": "no-cache"})
        resp.content_type = "text/event-stream" if req.sse else "audio/pcm"
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            samples = first
            while samples is not None:
                if samples.size:
                    data = pcm16(samples)
                    if req.sse:
                        data = _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
                    await resp.write(data)
                samples = await anext(chunks, None)
            if req.sse:
                await resp.write(_sse({"type": "speech.audio.done",
                                       "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}))
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            log.info("%s: speech client went away mid-stream", request.remote)
            raise
        return resp

    async def transcriptions(self, request: web.Request) -> web.Response:
        """`POST /v1/audio/transcriptions`."""
        transcribe = getattr(self.stack, "transcribe_audio", None)
        try:
            upload = await asyncio.to_thread(parse_form, request.headers.get("Content-Type", ""),
                                             await request.read())
            if upload.file is None:
                raise RequestError("'file' is required: the audio to transcribe", "file")
            if len(upload.file) > MAX_FILE_BYTES:
                raise RequestError(f"'file' is {len(upload.file)} bytes; the limit is {MAX_FILE_BYTES} (25 MiB)",
                                   "file", status=413)
            fmt = upload.fields.get("response_format") or "json"
            if fmt not in TRANSCRIPT_FORMATS:
                raise RequestError(f"response_format {fmt!r} is not made by this server; use one of: "
                                   f"{', '.join(TRANSCRIPT_FORMATS)}", "response_format")
            language = upload.fields.get("language")
            if language and not _LANGUAGE.match(language):
                raise RequestError(f"'language' {language[:20]!r} is not a language code such as 'en'", "language")
            if transcribe is None:
                return openai_error(501, "this server has no speech recogniser loaded", kind="server_error")
            samples, rate = await asyncio.to_thread(decode_audio, upload.file)
        except RequestError as exc:
            return exc.response()
        busy = self._busy()
        if busy is not None:
            return busy
        self.jobs += 1
        try:
            text = await transcribe(samples, rate)
        finally:
            self.jobs -= 1
        if fmt == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        return web.json_response({"text": text})


def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()
