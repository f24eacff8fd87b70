"""What every `rejoinder` command shares: logging, one-line errors, config with CLI overrides,
the model and agent options (agent/cli.py has the commands that run the agent, agent/cli_bench.py
the ones that measure it)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import click

from agent.config import AgentConfig, load_config


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "openai", "aioice", "aiortc", "faster_whisper"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def progress(msg: str) -> None:
    click.echo(msg, err=True)


def fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


def config(ctx: click.Context, **overrides) -> AgentConfig:
    try:
        return load_config(ctx.obj.get("config"), **overrides)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
        raise  # unreachable


def run(coro):
    """Run a coroutine; turn the expected failures into one clear line and exit code 2."""
    from agent.llm import LLMError
    from agent.llm_server import EmbeddedLLMError
    from pipeline.assets import ModelAssetError
    from pipeline.audio import AudioFileError

    try:
        return asyncio.run(coro)
    except (LLMError, EmbeddedLLMError, ModelAssetError, AudioFileError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)


def write_json(doc: dict, path: Path | None, also_stdout: bool) -> None:
    text = json.dumps(doc, indent=2, default=float)
    if path is not None:
        path.write_text(text + "\n")
    if also_stdout:
        click.echo(text)


_model_options = [
    click.option("--stt-model", help="Whisper model: tiny.en (default), base, or a CTranslate2 directory."),
    click.option("--stt-url", help="OpenAI-compatible transcription endpoint (…/v1) instead of local Whisper."),
    click.option("--llm-url", help="OpenAI-compatible endpoint (…/v1). Default: the embedded model."),
    click.option("--llm-model", help="Model name at --llm-url."),
    click.option("--voice", help="Piper voice: piper-joe (default) or a path to a .onnx voice."),
    click.option("--rate", type=float, help="Speaking rate, 1.0 = natural."),
    click.option("--agent", "agent_spec", metavar="FILE.py:NAME",
                 help="Run this agent (instructions, greeting, tools; see README 'Build your own agent')."),
]


def model_options(f):
    for opt in reversed(_model_options):
        f = opt(f)
    return f


def agent_option(ctx: click.Context, spec: str | None):
    """The agent to run: `--agent FILE.py:NAME`, or the one `agent.run.serve` passed, or None (the plain
    assistant). A missing file or name is a one-line error before anything loads."""
    if spec is None:
        return (ctx.obj or {}).get("agent")
    from agent.api import load_agent

    try:
        return load_agent(spec)
    except ValueError as exc:
        fail(str(exc))


record_option = click.option(
    "--record-dir", type=click.Path(file_okay=False, path_type=Path),
    help="Record every call here: a stereo WAV (caller left, agent right) and a JSON transcript. Off by default.")


def overrides(stt_model=None, stt_url=None, llm_url=None, llm_model=None, voice=None, rate=None,
               agent_spec=None) -> dict:
    return {"stt.model": stt_model, "stt.url": stt_url, "llm.url": llm_url, "llm.model": llm_model,
            "tts.voice": voice, "tts.rate": rate}
