"""G.711 μ-law and A-law (ITU-T G.711), the telephone codecs: 8-bit samples at 8 kHz.

Vectorised with numpy (the stdlib's `audioop` is deprecated and gone in Python 3.13). Encoding is
the standard segment search; decoding a table lookup. float32 in [-1, 1] on our side.
"""

from __future__ import annotations

import numpy as np

_BIAS = 0x84
_CLIP = 32635


def _decode_ulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign, exponent, mantissa = u & 0x80, (u >> 4) & 0x07, u & 0x0F
    magnitude = ((mantissa << 3) + _BIAS) << exponent
    return np.where(sign != 0, _BIAS - magnitude, magnitude - _BIAS).astype(np.int16)


def _decode_alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    sign, exponent, mantissa = a & 0x80, (a >> 4) & 0x07, a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1))
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


_ULAW = _decode_ulaw_table()
_ALAW = _decode_alaw_table()


def _pcm16(samples: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(np.asarray(samples, np.float32), -1.0, 1.0) * 32767).astype(np.int32)


def ulaw_encode(samples: np.ndarray) -> bytes:
    """float32 [-1, 1] → μ-law bytes."""
    x = _pcm16(samples)
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), _CLIP) + _BIAS
    exponent = np.clip(np.floor(np.log2(np.maximum(mag, 1))).astype(np.int32) - 7, 0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """μ-law bytes → float32 [-1, 1]."""
    return _ULAW[np.frombuffer(data, np.uint8)].astype(np.float32) / 32768.0


def alaw_encode(samples: np.ndarray) -> bytes:
    """float32 [-1, 1] → A-law bytes."""
    x = _pcm16(samples) >> 3  # A-law works on 13 bits
    sign = np.where(x >= 0, 0x80, 0)
    mag = np.minimum(np.where(x < 0, -x - 1, x), 0x0FFF)
    exponent = np.clip(np.floor(np.log2(np.maximum(mag, 1))).astype(np.int32) - 4, 0, 7)
    mantissa = np.where(exponent == 0, mag >> 1, mag >> exponent) & 0x0F
    return ((sign | (exponent << 4) | mantissa) ^ 0x55).astype(np.uint8).tobytes()


def alaw_decode(data: bytes) -> np.ndarray:
    """A-law bytes → float32 [-1, 1]."""
    return _ALAW[np.frombuffer(data, np.uint8)].astype(np.float32) / 32768.0
