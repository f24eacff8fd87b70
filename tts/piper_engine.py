"""Piper (VITS, ONNX) as a streaming TTS engine: the default voice is en_US-joe-medium from PyPI.

A VITS voice makes a whole phrase in one ONNX call, and most of that call is the vocoder, whose cost
grows with the audio's length. We cut the voice's graph in three once (cached on disk): the *prior*
(text encoder + duration predictor: phonemes → latent frames, the whole phrase, so prosody is that
of the whole phrase), the *flow* and the *decoder*. Flow and decoder are convolutional, so they run
on windows of frames with a margin of context on each side, and the first ~200 ms of a phrase is
ready after the prior plus one small window, whatever the phrase's length. With margins of
`FLOW_PAD` and `DECODER_PAD` frames the windowed audio matches the one-call audio to >60 dB.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.assets import (
    MANIFEST,
    CacheError,
    cache_dir,
    cache_problem,
    manifest_problem,
    model_path,
    sha256_of,
    writable_dir,
    write_manifest,
)
from pipeline.stages import VoiceOptions
from tts.engines import TTSOptions

log = logging.getLogger(__name__)

# Tensor names of the cut points in Piper's exported VITS graph (piper_train export_onnx).
_PRIOR_OUT = ("/Add_output_0", "/Cast_2_output_0")  # z_p: prior sample on frames; y_mask
_FLOW_OUT = "/Mul_7_output_0"  # z: flow output (masked), the vocoder's input
_DEC_OUT = "/dec/Tanh_output_0"  # audio [1, 1, frames * hop]
FLOW_PAD = 24  # frames of context for the flow windows (4 coupling layers of 4 k=5 convs): exact to >100 dB
DECODER_PAD = 8  # frames of context for the vocoder windows: >65 dB
FLOW_BLOCK = 192  # frames per flow call after the first (the flow is cheap: ~0.2 ms a frame)
WINDOW = 112  # frames per vocoder call at most (~1.3 s of audio, ~65 ms of compute idle); windows
# double from the first, so that the margins (fixed cost per call) stay a small share
MIN_TAIL = 32  # a phrase's last window is not left shorter than this (margins cost the same)
WARMUP_TEXT = "Hello, this is the voice warming up, so that the first reply starts at once."
TARGET_RMS = 0.09  # loudness the voice is scaled to (Piper's own per-sentence peak normalization
# cannot work when the first window is played before the phrase's peak is known)


class PiperEngine:
    """One loaded Piper voice. `voice` is a bundled key ("piper-joe") or a path to a voice .onnx file
    (its .onnx.json beside it). `stream(text)` yields a phrase's audio in pieces; the first piece is
    `first_samples` long (default ~200 ms) so the first chunk is ready early."""

    def __init__(
        self,
        voice: str = "piper-joe",
        options: VoiceOptions | None = None,
        threads: int = 1,
        streaming: bool = True,
        warmup: bool = True,
    ) -> None:
        from piper import PiperConfig, PiperVoice

        onnx_path, config_path = _resolve(voice)
        self.voice_id = onnx_path.name.removesuffix(".onnx")
        self.options = options or VoiceOptions()
        self.threads = threads
        config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        self.sample_rate = int(config.sample_rate)
        self.hop = int(getattr(config, "hop_length", 256) or 256)
        self._config = config
        self._english = (config.espeak_voice or "").lower().startswith("en")
        self._lock = threading.Lock()
        self._parts = _split_voice(onnx_path) if streaming and config.num_speakers <= 1 else None
        if self._parts is not None:
            self._prior, self._flow, self._dec = (self._session(p) for p in self._parts)
            self._voice = PiperVoice(session=self._prior, config=config)
        else:  # whole-phrase fallback: one ONNX call per sentence
            self._voice = PiperVoice(session=self._session(onnx_path), config=config)
        self.streaming = self._parts is not None
        self.gain = 1.0
        if warmup:
            # The first ONNX runs allocate arenas and the phonemizer loads its data: pay that at load,
            # not on the first reply; and take the voice's loudness from the warm-up phrase.
            audio = np.concatenate([a for a, _ in self.stream(WARMUP_TEXT, raw=True)])
            rms = float(np.sqrt(np.mean(audio**2))) if audio.size else 0.0
            self.gain = float(np.clip(TARGET_RMS / rms, 0.5, 4.0)) if rms > 1e-4 else 1.0
            for text in ("Hi.", "Okay, sure."):
                for _ in self.stream(text, raw=True):
                    pass

    def _session(self, path: Path):
        import onnxruntime

        sess = onnxruntime.SessionOptions()
        # On 2 cores the LLM decodes on one; Piper's default (all cores) fights it and raises TTFA.
        sess.intra_op_num_threads = self.threads
        sess.inter_op_num_threads = 1
        sess.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads > 1:  # spinning workers steal the LLM's core between our calls
            sess.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(str(path), sess_options=sess, providers=["CPUExecutionProvider"])

    def synthesize(self, text: str) -> np.ndarray:
        """Blocking: the whole phrase's audio (mono float32; empty if nothing is speakable)."""
        parts = [a for a, _ in self.stream(text)]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def stream(self, text: str, first_samples: int | None = None,
               raw: bool = False) -> Iterator[tuple[np.ndarray, int]]:
        """Blocking iterator over a phrase's audio: (piece, expected total samples of the phrase).
        Each `next()` is one bounded ONNX call (tens of ms), so a caller can stop
        between pieces: that is how a cancelled request stops within the phrase in flight."""
        first = max(1, -(-(first_samples or self.sample_rate // 5) // self.hop))
        text = self._speakable(text)
        if not text:
            return
        with self._lock:
            sentences = self._voice.phonemize(text)
        gain = 1.0 if raw else self.gain * self.options.volume
        sizes = [len(p) for p in sentences]
        before = 0  # samples of the phrase's earlier sentences
        for i, phonemes in enumerate(sentences):
            ids = self._voice.phonemes_to_ids(phonemes) if phonemes else []
            if len(ids) <= 2:  # only BOS/EOS: nothing to say
                continue
            feeds = {
                "input": np.array([ids], dtype=np.int64),
                "input_lengths": np.array([len(ids)], dtype=np.int64),
                "scales": np.array(
                    [self._config.noise_scale, self._config.length_scale / self.options.rate,
                     self._config.noise_w_scale],
                    dtype=np.float32,
                ),
            }
            if self.streaming:
                with self._lock:
                    zp, mask = self._prior.run(list(_PRIOR_OUT), feeds)
                pieces = self._windows(zp, mask, first, gain)
                here = zp.shape[2] * self.hop
                first = WINDOW  # later sentences of the phrase: the listener is busy with the first
            else:
                with self._lock:
                    audio = self._voice.session.run(None, feeds)[0].reshape(-1)
                pieces = iter([_finish(audio, gain)])
                here = audio.size
            # What the whole phrase will last: earlier sentences as made, this one as planned, the
            # rest estimated by phoneme count (the caller maps words to audio time with it).
            total = before + here + round(here / max(1, sizes[i]) * sum(sizes[i + 1 :]))
            for piece in pieces:
                before += piece.size
                yield piece, total

    def _windows(self, zp: np.ndarray, mask: np.ndarray, first: int, gain: float) -> Iterator[np.ndarray]:
        frames = zp.shape[2]
        z = np.empty_like(zp)
        z_done = 0
        start, width = 0, first
        while start < frames:
            end = min(frames, start + width)
            if start and frames - end < MIN_TAIL:
                end = frames
            lo, hi = max(0, start - DECODER_PAD), min(frames, end + DECODER_PAD)
            with self._lock:
                while z_done < hi:  # the flow runs ahead in blocks, with its own margins
                    s = z_done
                    e = min(frames, max(hi, s + (FLOW_BLOCK if s else 0)))
                    flo, fhi = max(0, s - FLOW_PAD), min(frames, e + FLOW_PAD)
                    feeds = {_PRIOR_OUT[0]: zp[:, :, flo:fhi], _PRIOR_OUT[1]: mask[:, :, flo:fhi]}
                    out = self._flow.run([_FLOW_OUT], feeds)[0]
                    z[:, :, s:e] = out[:, :, s - flo : e - flo]
                    z_done = e
                audio = self._dec.run([_DEC_OUT], {_FLOW_OUT: z[:, :, lo:hi]})[0].reshape(-1)
            yield _finish(audio[(start - lo) * self.hop : (end - lo) * self.hop], gain)
            start, width = end, min(WINDOW, width * 2)  # 18, 36, 72, 112 frames: each ready before
            # the audio already out has played, even when the cores are shared

    def _speakable(self, text: str) -> str:
        """Drop letters an English voice cannot say (espeak spells Cyrillic letter by letter and reads
        CJK as "Chinese letter"), with a warning; other voices get the text as it is."""
        if not self._english:
            return text
        kept, dropped = [], []
        for ch in text:
            if ch.isascii() or not (ch.isalpha() or unicodedata.category(ch).startswith("M")):
                kept.append(ch)
            elif unicodedata.name(ch, "").startswith("LATIN"):
                kept.append(ch)
            else:
                dropped.append(ch)
                kept.append(" ")
        if dropped:
            log.warning("voice %s cannot speak %r; skipped those letters", self.voice_id, "".join(dropped)[:40])
            return " ".join("".join(kept).split())
        return text


def _finish(audio: np.ndarray, gain: float) -> np.ndarray:
    audio = audio.astype(np.float32, copy=False)
    if gain != 1.0:
        audio = audio * np.float32(gain)
    return np.clip(audio, -1.0, 1.0)


_PARTS = ("prior.onnx", "flow.onnx", "decoder.onnx")


def _split_voice(onnx_path: Path) -> tuple[Path, Path, Path] | None:
    """Cut the voice graph into prior / flow / decoder models, once per voice file (cached by its
    sha256, each part checked against the folder's manifest on every load: a damaged part is rebuilt,
    not handed to onnxruntime). None, with a note in the log, if this voice's graph is not the one we
    know how to cut or the `onnx` package is missing: the engine then synthesizes whole phrases.
    A cache that cannot be written when the parts must be built is a `CacheError`."""
    target = cache_dir() / "piper-stream" / sha256_of(onnx_path)[:16]
    parts = tuple(target / name for name in _PARTS)
    problem = manifest_problem(target, _PARTS)
    if problem is None:
        return parts  # type: ignore[return-value]
    try:
        import onnx
    except ImportError:
        log.warning("package 'onnx' is not installed: Piper runs whole phrases (slower first audio); "
                    "`pip install onnx`")
        return None
    if problem != "is not built yet":
        log.warning("voice %s: the streaming parts cached in %s %s; rebuilding them",
                    onnx_path.name, target, problem)
    try:
        model = onnx.load(str(onnx_path))
        names = {o for n in model.graph.node for o in n.output}
        inputs = [i.name for i in model.graph.input]
    except Exception as exc:  # a voice we cannot read as a graph still speaks, in whole phrases
        log.warning("voice %s: could not read the graph for streaming (%s); whole-phrase synthesis",
                    onnx_path.name, exc)
        return None
    if not {*_PRIOR_OUT, _FLOW_OUT, _DEC_OUT} <= names or inputs != ["input", "input_lengths", "scales"]:
        log.warning("voice %s: graph not in the known Piper layout; whole-phrase synthesis", onnx_path.name)
        return None
    writable_dir(target)  # CacheError: say so, rather than run slower without a word of why
    cuts = ((inputs, list(_PRIOR_OUT)), (list(_PRIOR_OUT), [_FLOW_OUT]), ([_FLOW_OUT], [_DEC_OUT]))
    try:
        (target / MANIFEST).unlink(missing_ok=True)  # from here until the new one, the folder is not trusted
        for path, (ins, outs) in zip(parts, cuts):
            _extract(onnx_path, path, ins, outs)
        write_manifest(target, _PARTS)
    except CacheError:
        raise
    except OSError as exc:  # permissions changed, the disk filled up
        raise cache_problem(target, exc) from None
    except Exception as exc:  # a cut that fails must not cost the voice
        log.warning("voice %s: could not split the graph for streaming (%s); whole-phrase synthesis",
                    onnx_path.name, exc)
        return None
    log.info("voice %s split for streaming into %s", onnx_path.name, target)
    return parts  # type: ignore[return-value]


def _extract(onnx_path: Path, path: Path, ins: list[str], outs: list[str]) -> None:
    """One part, written beside its final name and renamed into place (atomic)."""
    import onnx.utils

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    os.close(fd)
    try:
        onnx.utils.extract_model(str(onnx_path), tmp, ins, outs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _resolve(voice: str) -> tuple[Path, Path]:
    if voice == "piper-joe":
        d = model_path("piper-joe")
        return d / "en_US-joe-medium.onnx", d / "en_US-joe-medium.onnx.json"
    p = Path(voice).expanduser()
    cfg = p.with_name(p.name + ".json")
    if not p.is_file() or not cfg.is_file():
        raise FileNotFoundError(f"Piper voice not found: need {p} and {cfg} (or use the bundled 'piper-joe')")
    return p, cfg


def load(options: TTSOptions) -> PiperEngine:
    """The engine registered as "piper" in `tts/engines.py`."""
    return PiperEngine(options.voice, options.voice_options, options.threads)
