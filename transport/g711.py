"""G.711 μ-law and A-law, the telephone codecs (8-bit samples at 8 kHz), for both phone edges.

The tables are aiortp's (already the SIP edge's RTP library); this wraps them for float32 [-1, 1]
samples. Payload types as in RTP: 0 = PCMU (μ-law), 8 = PCMA (A-law).
"""

from __future__ import annotations

import functools

import numpy as np
from aiortp.codecs import get_codec

PCMU, PCMA = 0, 8


def encode(samples: np.ndarray, payload_type: int = PCMU) -> bytes:
    """float32 [-1, 1] at 8 kHz → μ-law (0) or A-law (8) bytes."""
    pcm = np.clip(np.asarray(samples, np.float32) * 32768.0, -32768, 32767).astype("<i2").tobytes()
    return _codec(payload_type).encode(pcm)


def decode(payload: bytes, payload_type: int = PCMU) -> np.ndarray:
    """μ-law (0) or A-law (8) bytes → float32 [-1, 1] at 8 kHz."""
    return pcm_to_float(_codec(payload_type).decode(payload))


def pcm_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


@functools.cache
def _codec(payload_type: int):  # noqa: ANN202 - aiortp's Codec
    return get_codec(payload_type)  # stateless lookup tables: one per payload type will do
