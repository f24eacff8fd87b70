"""Piper (VITS, ONNX) as a TTS engine: the default voice is en_US-joe-medium from PyPI."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from pipeline.assets import model_path
from tts.engine import VoiceOptions

log = logging.getLogger(__name__)


class PiperEngine:
    """One loaded Piper voice. `voice` is a bundled key ("piper-joe") or a path to a voice .onnx file
    (its .onnx.json beside it)."""

    def __init__(self, voice: str = "piper-joe", options: VoiceOptions | None = None, threads: int = 1) -> None:
        import onnxruntime
        from piper import PiperConfig, PiperVoice

        onnx_path, config_path = _resolve(voice)
        self.voice_id = onnx_path.name.removesuffix(".onnx")
        self.options = options or VoiceOptions()
        sess = onnxruntime.SessionOptions()
        # On 2 cores the LLM decodes on one; Piper's default (all cores) fights it and raises TTFA.
        sess.intra_op_num_threads = threads
        sess.inter_op_num_threads = 1
        import json

        config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        self._voice = PiperVoice(
            session=onnxruntime.InferenceSession(str(onnx_path), sess_options=sess, providers=["CPUExecutionProvider"]),
            config=config,
        )
        self.sample_rate = int(config.sample_rate)
        self._lock = threading.Lock()
        from piper import SynthesisConfig

        self._syn = SynthesisConfig(length_scale=1.0 / self.options.rate, volume=self.options.volume)

    def synthesize(self, text: str) -> np.ndarray:
        with self._lock:
            parts = [c.audio_float_array for c in self._voice.synthesize(text, self._syn)]
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)


def _resolve(voice: str) -> tuple[Path, Path]:
    if voice == "piper-joe":
        d = model_path("piper-joe")
        return d / "en_US-joe-medium.onnx", d / "en_US-joe-medium.onnx.json"
    p = Path(voice).expanduser()
    cfg = p.with_name(p.name + ".json")
    if not p.is_file() or not cfg.is_file():
        raise FileNotFoundError(f"Piper voice not found: need {p} and {cfg} (or use the bundled 'piper-joe')")
    return p, cfg
