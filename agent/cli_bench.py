"""The `rejoinder` commands that measure: benches and evals (each prints figures with n and the
machine; JSON with --json). Registered on the command group by agent/cli.py."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from agent.cli_common import (
    agent_option,
    config,
    fail,
    model_options,
    overrides,
    progress,
    run,
    write_json,
)


@click.command("stt-bench")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here.")
@click.option("--model", "models", multiple=True, help="Model(s) to measure (default: tiny.en and base).")
@click.option("--repeat", type=int, default=3, show_default=True, help="Plays of each clip (latency samples).")
@click.option("--baseline", is_flag=True, help="Also measure transcribing only after the endpoint (no streaming).")
def stt_bench(json_path, models, repeat, baseline) -> None:
    """Endpoint-to-final latency, WER and CPU of listening, on the shared speech clips."""
    from agent.benches.stt import run_bench, summary_lines

    doc = run(run_bench(list(models) or ["tiny.en", "base"], repeat=repeat, baseline=baseline, progress=progress))
    for line in summary_lines(doc):
        click.echo(line)
    write_json(doc, json_path, also_stdout=False)


@click.command("tts-bench")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the figures as JSON.")
@click.option("--reps", type=int, default=5, show_default=True, help="Repetitions of each input.")
@click.option("--load", type=click.Choice(["llm", "burn", "none"]), default="llm", show_default=True,
              help="What keeps the cores busy for the loaded run: the embedded LLM decoding (+1 busy loop), "
                   "two busy loops, or no loaded run.")
@click.option("--threads", type=int, help="ONNX threads for Piper (default: the configured tts.threads).")
@click.option("--voice", help="piper-joe (default) or a path to a Piper .onnx voice.")
@click.pass_context
def tts_bench(ctx, json_path, reps, load, threads, voice) -> None:
    """Benchmark the streaming TTS: TTFA, RTF, cadence, cancellation, cached TTFA; idle and loaded."""
    from agent.benches.tts import bench, summary_lines
    from tts.engines import load_tts

    cfg = config(ctx, **{"tts.voice": voice})
    n = threads or cfg.tts.threads
    doc = run(bench(lambda: load_tts(dataclasses.replace(cfg.tts, threads=n)), reps=reps, load=load, log=progress))
    for line in summary_lines(doc):
        click.echo(line)
    write_json(doc, json_path, also_stdout=False)



@click.command("turns-bench")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the figures here.")
@click.option("--delay", "delays", type=int, multiple=True, help="Echo delays in ms (default 20 80 140 200).")
@model_options
@click.pass_context
def turns_bench(ctx, json_path, delays, **models) -> None:
    """Turn-taking figures on the real stack: self-interruptions under echo, barge-in, preemption."""
    from agent.benches.turns import run_turns_bench

    cfg = config(ctx, **overrides(**models))
    if delays:
        doc = run(run_turns_bench(cfg, delays_ms=tuple(delays), progress=progress))
    else:
        doc = run(run_turns_bench(cfg, progress=progress))
    write_json(doc, json_path, also_stdout=True)


@click.command()
@click.option("--turns", type=int, default=10, show_default=True,
              help="User turns per configuration (and per session).")
@click.option("--sessions", type=int, default=1, show_default=True, help="Also run this many calls at once (load).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the figures here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG chart here.")
@click.option("--url", help="Bench a running `rejoinder serve` (http://HOST:PORT) instead of starting one here.")
@click.option("--browser", is_flag=True, help="Also run the plain turns through headless Chromium.")
@click.option("--compare", metavar="KEY=A,B",
              help="Configurations side by side, alternating (e.g. stt.model=tiny.en,base).")
@click.option("--fast-start", is_flag=True, help="No warm-up call and shorter pauses between turns (for tests).")
@model_options
@click.pass_context
def bench(ctx, turns, sessions, json_path, plot_path, url, browser, compare, fast_start, **models) -> None:
    """Voice-to-voice, barge-in, echo and underrun figures over the real WebRTC path, with a report."""
    from agent.benches.call import run_bench
    from agent.benches.report import plot, summary_lines

    if turns < 1 or sessions < 1:
        fail("--turns and --sessions must be at least 1")
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            fail("--plot needs matplotlib: pip install 'rejoinder[bench]'")
    cfg = config(ctx, **overrides(**models))
    doc = run(run_bench(cfg, turns=turns, sessions=sessions, url=url, compare=compare, fast_start=fast_start,
                         browser=browser, progress=progress))
    for line in summary_lines(doc):
        click.echo(line)
    write_json(doc, json_path, also_stdout=False)
    if plot_path is not None:
        plot(doc, plot_path)
        click.echo(f"wrote {plot_path}", err=True)


@click.command("soak-bench")
@click.option("--calls", type=int, default=200, show_default=True, help="Calls, one after another.")
@click.option("--warmup", type=int, default=20, show_default=True, help="Calls before the RSS baseline.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here.")
@model_options
@click.pass_context
def soak_bench(ctx, calls, warmup, json_path, **models) -> None:
    """Many short calls in a row: RSS, threads, fds, tasks and children after each (does anything leak?)."""
    from agent.benches.soak import run_soak, summary_lines

    if calls < 2 or not 1 <= warmup < calls:
        fail("--calls must be at least 2 and --warmup between 1 and calls - 1")
    doc = run(run_soak(config(ctx, **overrides(**models)), calls=calls, warmup=warmup, progress=progress))
    for line in summary_lines(doc):
        click.echo(line)
    write_json(doc, json_path, also_stdout=False)


@click.command("tools-bench")
@click.option("--modes", default="grammar,grammar-noguard", show_default=True,
              help="Decision modes side by side: grammar, native (the OpenAI tools API), and either with "
                   "-noguard (a tool that needs digits is offered even when the caller said none).")
@click.option("--set", "which", type=click.Choice(["dev", "heldout"]), default="dev", show_default=True,
              help="dev: the requests the guard was designed on; heldout: written after, never tuned on.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report.")
@model_options
@click.pass_context
def tools_bench(ctx, modes, which, json_path, **models) -> None:
    """Benchmark tool decisions: the right action and arguments on caller requests, per mode."""
    from agent.benches.tools import main as run_tools
    from agent.benches.tools import summary_lines

    cfg = config(ctx, **overrides(**models))
    doc = run(run_tools(cfg, [m.strip() for m in modes.split(",") if m.strip()], progress=progress, which=which))
    for line in summary_lines(doc):
        click.echo(line)
    write_json(doc, json_path, also_stdout=False)


@click.command("eval")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report.")
@model_options
@click.pass_context
def eval_(ctx, file, json_path, **models) -> None:
    """Run scripted calls against an agent and check what must happen (agent/evals.py)."""
    from agent.evals import EvalFile, run_eval

    cfg = config(ctx, **overrides(**models))
    try:
        EvalFile.load(file)  # a bad file is one line, before any model loads
    except ValueError as exc:
        fail(str(exc))
    doc = run(run_eval(cfg, file, progress=progress, agent=agent_option(ctx, models.get("agent_spec"))))
    click.echo(f"{doc['passed']}/{doc['n']} scenarios passed")
    write_json(doc, json_path, also_stdout=False)
    if doc["passed"] < doc["n"]:
        sys.exit(1)


@click.command("chat-bench")
@click.option("--repeat", type=int, default=3, show_default=True,
              help="Runs of every dialogue (replies are sampled at the configured temperature).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report.")
@model_options
@click.pass_context
def chat_bench(ctx, repeat, json_path, **models) -> None:
    """Benchmark everyday conversation: right answers, memory of earlier turns, spoken prose, speed, memory."""
    from agent.benches.chat import main as run_chat
    from agent.benches.chat import summary_lines

    if repeat < 1:
        fail("--repeat must be at least 1")
    cfg = config(ctx, **overrides(**models))
    doc = run(run_chat(cfg, repeat, progress=progress))
    for line in summary_lines(doc):
        click.echo(line)
    write_json(doc, json_path, also_stdout=False)


@click.command("narrowband-bench")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report.")
@click.option("--stt-model", help="tiny.en (default), base, or a CTranslate2 directory.")
@click.pass_context
def narrowband_bench(ctx, json_path, stt_model) -> None:
    """Whisper's word error rate after a G.711 phone leg (8 kHz μ-law/A-law) vs at 16 kHz."""
    from agent.benches.narrowband import run_narrowband
    from stt.engines import load_stt

    cfg = config(ctx, **{"stt.model": stt_model})
    doc = run_narrowband(load_stt(cfg.stt), progress=progress)
    w = doc["wer_percent"]
    click.echo(f"WER over {doc['n_clips']} clips ({doc['words']} words): 16 kHz {w['wide']}%, "
               f"8 kHz μ-law {w['ulaw']}%, A-law {w['alaw']}%")
    write_json(doc, json_path, also_stdout=False)


COMMANDS = [stt_bench, tts_bench, turns_bench, bench, soak_bench, tools_bench, eval_, chat_bench, narrowband_bench]
