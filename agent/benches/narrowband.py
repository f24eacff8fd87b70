"""`rejoinder narrowband-bench`: Whisper's word error rate on the phone path vs the 16 kHz path.

Each shared recording (tests/data: LibriVox, CMU) is transcribed as it is (resampled to 16 kHz) and
after the phone edges' round trip: 8 kHz, G.711 μ-law (or A-law) encode and decode (transport/g711.py,
what the SIP and Twilio edges do), back to 16 kHz with the project's resampler. Same engine, same
options, one pass each (Whisper at temperature 0 is deterministic on the same input).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.benches.stats import machine
from agent.benches.stt import load_clips, normalize, wer
from pipeline.audio import STT_RATE, resample
from transport.g711 import PCMA, PCMU, decode, encode


def phone_leg(audio: Any, rate: int, payload_type: int = PCMU) -> Any:
    """What a caller's audio is after a G.711 phone leg, at the STT rate."""
    narrow = resample(audio, rate, 8000)
    return resample(decode(encode(narrow, payload_type), payload_type), 8000, STT_RATE)


def run_narrowband(engine: Any, progress: Callable[[str], None] = print) -> dict:
    rows = []
    totals = {"wide": [0, 0], "ulaw": [0, 0], "alaw": [0, 0]}  # edits, words
    for clip in load_clips():
        wide = resample(clip.audio, clip.rate, STT_RATE)
        texts = {"wide": engine.transcribe(wide).text,
                 "ulaw": engine.transcribe(phone_leg(clip.audio, clip.rate, PCMU)).text,
                 "alaw": engine.transcribe(phone_leg(clip.audio, clip.rate, PCMA)).text}
        n = len(normalize(clip.reference))
        row: dict[str, Any] = {"clip": clip.name, "words": n}
        for k, text in texts.items():
            w = wer(clip.reference, text)
            totals[k][0] += round(w * n)
            totals[k][1] += n
            row[f"wer_{k}"] = round(w * 100, 1)
        rows.append(row)
        progress(f"{clip.name}: WER 16 kHz {row['wer_wide']}%, μ-law {row['wer_ulaw']}%, A-law {row['wer_alaw']}%")
    summary = {k: round(100 * e / max(1, w), 1) for k, (e, w) in totals.items()}
    return {"machine": machine(), "n_clips": len(rows), "words": totals["wide"][1], "wer_percent": summary,
            "rows": rows}
