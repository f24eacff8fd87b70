"""Speaking: text → phrases → streaming audio chunks, with cancellation, caching and metrics."""
