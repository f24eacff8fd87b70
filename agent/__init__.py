"""The conversation: turn manager, context, LLM adapters, configuration and the `rejoinder` CLI."""
