"""The `rejoinder` command line."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from pathlib import Path

import click

from agent.config import AgentConfig, load_config


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "openai", "aioice", "aiortc", "faster_whisper"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _progress(msg: str) -> None:
    click.echo(msg, err=True)


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


def _config(ctx: click.Context, **overrides) -> AgentConfig:
    try:
        return load_config(ctx.obj.get("config"), **overrides)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
        raise  # unreachable


def _run(coro):
    """Run a coroutine; turn the expected failures into one clear line and exit code 2."""
    from agent.llm import LLMError
    from agent.llm_server import EmbeddedLLMError
    from pipeline.assets import ModelAssetError
    from pipeline.audio import AudioFileError

    try:
        return asyncio.run(coro)
    except (LLMError, EmbeddedLLMError, ModelAssetError, AudioFileError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)


def _write_json(doc: dict, path: Path | None, also_stdout: bool) -> None:
    text = json.dumps(doc, indent=2, default=float)
    if path is not None:
        path.write_text(text + "\n")
    if also_stdout:
        click.echo(text)


@click.group()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("-v", "--verbose", is_flag=True, help="Show per-stage timings of each turn.")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """Rejoinder: a real-time conversational voice agent that runs offline on a small CPU."""
    _setup_logging(verbose)
    ctx.obj = {**(ctx.obj or {}), "config": config_path}  # `agent.run.serve` passes its Agent in obj


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


def _agent(ctx: click.Context, spec: str | None):
    """The agent to run: `--agent FILE.py:NAME`, or the one `agent.run.serve` passed, or None (the plain
    assistant). A missing file or name is a one-line error before anything loads."""
    if spec is None:
        return (ctx.obj or {}).get("agent")
    from agent.api import load_agent

    try:
        return load_agent(spec)
    except ValueError as exc:
        _fail(str(exc))


record_option = click.option(
    "--record-dir", type=click.Path(file_okay=False, path_type=Path),
    help="Record every call here: a stereo WAV (caller left, agent right) and a JSON transcript. Off by default.")


def _overrides(stt_model=None, stt_url=None, llm_url=None, llm_model=None, voice=None, rate=None,
               agent_spec=None) -> dict:
    return {"stt.model": stt_model, "stt.url": stt_url, "llm.url": llm_url, "llm.model": llm_model,
            "tts.voice": voice, "tts.rate": rate}


@main.command()
@click.option("--in", "inputs", multiple=True, required=True, type=click.Path(path_type=Path),
              help="A user turn (WAV/FLAC/OGG, any rate). Repeat for several turns.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Stereo timeline WAV (user L, agent R).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Per-turn metrics JSON.")
@click.option("--fast", is_flag=True, help="Virtual clock: skip idle waiting (compute still costs real time).")
@click.option("--gap", type=float, default=1.0, show_default=True,
              help="Seconds between the agent's reply and the next turn.")
@click.option("--interrupt-after", type=float,
              help="Start the next turn this many seconds after the agent's first audio (barge-in).")
@click.option("--echo-db", type=float, help="Mix the agent's own output back into its input at this level (e.g. -10).")
@click.option("--echo-delay-ms", type=float, default=100.0, show_default=True, help="Delay of that echo.")
@model_options
@click.pass_context
def converse(ctx, inputs, out, json_path, fast, gap, interrupt_after, echo_db, echo_delay_ms, **models) -> None:
    """A spoken conversation from WAV files: each --in is one user turn."""
    from agent.converse import converse as run_converse

    cfg = _config(ctx, **_overrides(**models))
    agent = _agent(ctx, models.get("agent_spec"))
    doc = _run(run_converse(cfg, list(inputs), out, fast=fast, gap_s=gap, progress=_progress,
                            interrupt_after_s=interrupt_after, echo_db=echo_db, echo_delay_ms=echo_delay_ms,
                            agent=agent))
    for t in doc["turns"]:
        click.echo(f"user:  {t['user_text']}\nagent: {t['heard_text']}"
                   f"{' [interrupted]' if t['interrupted'] else ''}\n"
                   f"       voice-to-voice {t['timings_ms']['voice_to_voice']} ms  {t['timings_ms']}")
    _write_json(doc, json_path, also_stdout=False)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback requires an access token.")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--ice-server", "ice_servers", multiple=True, metavar="URL",
              help="STUN/TURN server (stun:HOST:PORT, turn:USER:PASS@HOST:PORT); repeatable. Default: none.")
@click.option("--token", help="Access token for every route but the page (default: generated when --host is not "
                                "loopback; an empty one is refused there).")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer requests addressed to this host name (how clients reach the server, e.g. behind "
                   "a proxy); repeatable. Loopback names, --host and the server's own addresses always work.")
@click.option("--cert", type=click.Path(dir_okay=False, path_type=Path), help="TLS certificate (PEM) for HTTPS.")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), help="TLS private key (PEM) for HTTPS.")
@click.option("--max-sessions", type=int, default=1, show_default=True,
              help="Concurrent calls; beyond it 503 'busy'. 1 is what 2 cores serve well (README: Reliability).")
@record_option
@model_options
@click.pass_context
def serve(ctx, host, port, ice_servers, token, allow_hosts, cert, key, max_sessions, record_dir, **models) -> None:
    """Talk to the agent in a browser over WebRTC: loads the models, then prints the URL."""
    from transport.server import ServeOptions, bind_socket
    from transport.server import serve as run_server

    cfg = _config(ctx, **_overrides(**models))
    agent = _agent(ctx, models.get("agent_spec"))
    try:
        opts = ServeOptions(host=host, port=port, ice_servers=list(ice_servers), token=token, cert=cert, key=key,
                            max_sessions=max_sessions, allow_hosts=list(allow_hosts))
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    try:
        sock = bind_socket(opts.host, opts.port)  # before the models load: a busy port is known at once
    except OSError as exc:
        _fail(str(exc))
    from agent.stack import load_stack

    async def go():
        async with load_stack(cfg, _progress, agent=agent, record_dir=record_dir) as stack:
            try:
                await run_server(stack, opts, announce=click.echo, sock=sock)
            except OSError as exc:
                _fail(str(exc))

    try:
        _run(go())
    finally:
        sock.close()


@main.command()
@click.option("--input-device", help="Microphone: index or name (see --list-devices). Default: the system's.")
@click.option("--output-device", help="Speaker: index or name. Default: the system's.")
@click.option("--list-devices", is_flag=True, help="List audio devices and exit.")
@record_option
@model_options
@click.pass_context
def talk(ctx, input_device, output_device, list_devices, record_dir, **models) -> None:
    """Talk to the agent on this computer's microphone and speaker (no browser)."""
    from agent.talk import talk as run_talk
    from transport.devices import DeviceError
    from transport.devices import list_devices as devices

    as_device = lambda d: int(d) if d is not None and d.isdigit() else d  # noqa: E731
    try:
        if list_devices:
            click.echo(devices())
            return
        cfg = _config(ctx, **_overrides(**models))
        agent = _agent(ctx, models.get("agent_spec"))
        _run(run_talk(cfg, as_device(input_device), as_device(output_device), progress=_progress, say=click.echo,
                      record_dir=record_dir,
                      agent=agent))
    except DeviceError as exc:
        _fail(str(exc))


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--stt-model", help="tiny.en (default), base, or a CTranslate2 directory.")
@click.option("--stt-url", help="OpenAI-compatible transcription endpoint (…/v1) instead of local Whisper.")
@click.option("--stream", is_flag=True, help="Play the file in real time through VAD and the streaming "
              "transcriber; print interim and final transcripts with their media times.")
@click.option("--fast", is_flag=True, help="With --stream: virtual clock (compute still costs real time).")
@click.pass_context
def transcribe(ctx, file, as_json, stt_model, stt_url, stream, fast) -> None:
    """Transcribe one audio file with the configured Whisper model (or stream it, with --stream)."""
    from pipeline.audio import read_audio, resample, sanitize
    from stt.engines import load_stt

    cfg = _config(ctx, **{"stt.model": stt_model, "stt.url": stt_url})
    if stream:
        _transcribe_stream(cfg, file, as_json, fast)
        return

    async def go():
        audio, rate = read_audio(file)
        audio, _ = sanitize(audio)  # before resampling: the filter would smear a NaN over its neighbours
        audio = resample(audio, rate, 16000)
        engine = load_stt(cfg.stt)
        return engine.transcribe(audio)

    r = _run(go())
    if as_json:
        click.echo(json.dumps({"text": r.text, "model": cfg.stt.model, "audio_s": round(r.audio_s, 3),
                               "compute_ms": round(r.compute_s * 1000, 1)}))
    else:
        click.echo(r.text)


def _transcribe_stream(cfg: AgentConfig, file: Path, as_json: bool, fast: bool) -> None:
    from agent.benches.stt import stream_file
    from pipeline.clock import RealClock, VirtualClock
    from stt.engines import load_stt

    def emit(e: dict) -> None:
        if as_json:
            click.echo(json.dumps(e))
        elif e["type"] == "transcript":
            click.echo(f"{e['at']:8.3f}  {'final  ' if e['final'] else 'interim'}  {e['text']}")

    async def go():
        engine = await asyncio.to_thread(load_stt, cfg.stt)
        await stream_file(engine, file, VirtualClock() if fast else RealClock(), emit, cfg.vad)

    _run(go())


@main.command("stt-bench")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here.")
@click.option("--model", "models", multiple=True, help="Model(s) to measure (default: tiny.en and base).")
@click.option("--repeat", type=int, default=3, show_default=True, help="Plays of each clip (latency samples).")
@click.option("--baseline", is_flag=True, help="Also measure transcribing only after the endpoint (no streaming).")
def stt_bench(json_path, models, repeat, baseline) -> None:
    """Endpoint-to-final latency, WER and CPU of listening, on the shared speech clips."""
    from agent.benches.stt import run_bench, summary_lines

    doc = _run(run_bench(list(models) or ["tiny.en", "base"], repeat=repeat, baseline=baseline, progress=_progress))
    for line in summary_lines(doc):
        click.echo(line)
    _write_json(doc, json_path, also_stdout=False)


@main.command()
@click.argument("text")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the TTS metrics as JSON.")
@click.option("--voice", help="piper-joe (default) or a path to a Piper .onnx voice.")
@click.option("--rate", type=float)
@click.option("--volume", type=float)
@click.pass_context
def say(ctx, text, out, as_json, voice, rate, volume) -> None:
    """Speak TEXT into a WAV file through the streaming TTS."""
    import numpy as np
    import soundfile as sf

    from tts.engines import load_tts
    from tts.stream import StreamingTTS

    cfg = _config(ctx, **{"tts.voice": voice, "tts.rate": rate, "tts.volume": volume})

    async def go():
        engine = load_tts(cfg.tts)
        tts = StreamingTTS(engine, chunk_ms=cfg.tts.chunk_ms)
        chunks = [c async for c in tts.speak(text)]
        return engine, chunks, tts.last_metrics

    engine, chunks, metrics = _run(go())
    audio = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
    if audio.size == 0:
        click.echo("note: nothing speakable in the text; wrote an empty WAV", err=True)
    sf.write(str(out), audio, engine.sample_rate, subtype="PCM_16")
    if as_json:
        click.echo(json.dumps(metrics.as_dict()))
    else:
        click.echo(f"wrote {out} ({len(audio) / engine.sample_rate:.2f} s)", err=True)


@main.command("tts-bench")
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

    cfg = _config(ctx, **{"tts.voice": voice})
    n = threads or cfg.tts.threads
    doc = _run(bench(lambda: load_tts(dataclasses.replace(cfg.tts, threads=n)), reps=reps, load=load, log=_progress))
    for line in summary_lines(doc):
        click.echo(line)
    _write_json(doc, json_path, also_stdout=False)



@main.command("turns-bench")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the figures here.")
@click.option("--delay", "delays", type=int, multiple=True, help="Echo delays in ms (default 20 80 140 200).")
@model_options
@click.pass_context
def turns_bench(ctx, json_path, delays, **models) -> None:
    """Turn-taking figures on the real stack: self-interruptions under echo, barge-in, preemption."""
    from agent.benches.turns import run_turns_bench

    cfg = _config(ctx, **_overrides(**models))
    if delays:
        doc = _run(run_turns_bench(cfg, delays_ms=tuple(delays), progress=_progress))
    else:
        doc = _run(run_turns_bench(cfg, progress=_progress))
    _write_json(doc, json_path, also_stdout=True)


@main.command()
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
        _fail("--turns and --sessions must be at least 1")
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            _fail("--plot needs matplotlib: pip install 'rejoinder[bench]'")
    cfg = _config(ctx, **_overrides(**models))
    doc = _run(run_bench(cfg, turns=turns, sessions=sessions, url=url, compare=compare, fast_start=fast_start,
                         browser=browser, progress=_progress))
    for line in summary_lines(doc):
        click.echo(line)
    _write_json(doc, json_path, also_stdout=False)
    if plot_path is not None:
        plot(doc, plot_path)
        click.echo(f"wrote {plot_path}", err=True)


@main.command("soak-bench")
@click.option("--calls", type=int, default=200, show_default=True, help="Calls, one after another.")
@click.option("--warmup", type=int, default=20, show_default=True, help="Calls before the RSS baseline.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here.")
@model_options
@click.pass_context
def soak_bench(ctx, calls, warmup, json_path, **models) -> None:
    """Many short calls in a row: RSS, threads, fds, tasks and children after each (does anything leak?)."""
    from agent.benches.soak import run_soak, summary_lines

    if calls < 2 or not 1 <= warmup < calls:
        _fail("--calls must be at least 2 and --warmup between 1 and calls - 1")
    doc = _run(run_soak(_config(ctx, **_overrides(**models)), calls=calls, warmup=warmup, progress=_progress))
    for line in summary_lines(doc):
        click.echo(line)
    _write_json(doc, json_path, also_stdout=False)


@main.command("tools-bench")
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

    cfg = _config(ctx, **_overrides(**models))
    doc = _run(run_tools(cfg, [m.strip() for m in modes.split(",") if m.strip()], progress=_progress, which=which))
    for line in summary_lines(doc):
        click.echo(line)
    _write_json(doc, json_path, also_stdout=False)


@main.command("eval")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report.")
@model_options
@click.pass_context
def eval_(ctx, file, json_path, **models) -> None:
    """Run scripted calls against an agent and check what must happen (agent/evals.py)."""
    from agent.evals import EvalFile, run_eval

    cfg = _config(ctx, **_overrides(**models))
    try:
        EvalFile.load(file)  # a bad file is one line, before any model loads
    except ValueError as exc:
        _fail(str(exc))
    doc = _run(run_eval(cfg, file, progress=_progress, agent=_agent(ctx, models.get("agent_spec"))))
    click.echo(f"{doc['passed']}/{doc['n']} scenarios passed")
    _write_json(doc, json_path, also_stdout=False)
    if doc["passed"] < doc["n"]:
        sys.exit(1)


@main.command("chat-bench")
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
        _fail("--repeat must be at least 1")
    cfg = _config(ctx, **_overrides(**models))
    doc = _run(run_chat(cfg, repeat, progress=_progress))
    for line in summary_lines(doc):
        click.echo(line)
    _write_json(doc, json_path, also_stdout=False)


@main.command()
@click.option("--listen", default="127.0.0.1:5060", show_default=True, metavar="HOST:PORT",
              help="UDP address to answer SIP calls on. Anything but loopback requires --allow.")
@click.option("--max-calls", type=int, default=1, show_default=True,
              help="Concurrent calls; beyond it 486 Busy Here. 1 is what 2 cores serve well.")
@click.option("--allow", "allow", multiple=True, metavar="NET",
              help="Source addresses or networks that may call (e.g. your PBX, 192.0.2.0/24); repeatable. "
                   "Default: loopback only. Everyone else gets no answer at all.")
@record_option
@model_options
@click.pass_context
def sip(ctx, listen, max_calls, allow, record_dir, **models) -> None:
    """Answer phone calls over SIP (UDP; G.711 audio, RFC 4733 keypad digits, BYE, REFER transfers)."""
    from agent.phone import sip as run_sip
    from agent.phone import sip_options

    try:
        sip_options(listen, max_calls, list(allow))  # an unsafe address is one line, before any model loads
    except ValueError as exc:
        _fail(str(exc))
    cfg = _config(ctx, **_overrides(**models))
    agent = _agent(ctx, models.get("agent_spec"))
    try:
        _run(run_sip(cfg, listen, max_calls, list(allow), agent=agent, progress=_progress, record_dir=record_dir))
    except OSError as exc:
        _fail(f"could not listen on udp {listen}: {exc}")


@main.command("narrowband-bench")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report.")
@click.option("--stt-model", help="tiny.en (default), base, or a CTranslate2 directory.")
@click.pass_context
def narrowband_bench(ctx, json_path, stt_model) -> None:
    """Whisper's word error rate after a G.711 phone leg (8 kHz μ-law/A-law) vs at 16 kHz."""
    from agent.benches.narrowband import run_narrowband
    from stt.engines import load_stt

    cfg = _config(ctx, **{"stt.model": stt_model})
    doc = run_narrowband(load_stt(cfg.stt), progress=_progress)
    w = doc["wer_percent"]
    click.echo(f"WER over {doc['n_clips']} clips ({doc['words']} words): 16 kHz {w['wide']}%, "
               f"8 kHz μ-law {w['ulaw']}%, A-law {w['alaw']}%")
    _write_json(doc, json_path, also_stdout=False)


if __name__ == "__main__":
    main()
