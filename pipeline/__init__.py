"""Shared vocabulary and wiring: audio frames, clocks, events, VAD, model assets, the session."""
