"""Listening: transcription engines and the streaming transcriber."""
