"""The `rejoinder` command line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from agent.cli_bench import COMMANDS
from agent.cli_common import (
    agent_option,
    config,
    fail,
    model_options,
    overrides,
    progress,
    record_option,
    run,
    setup_logging,
    write_json,
)
from agent.config import AgentConfig


@click.group()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("-v", "--verbose", is_flag=True, help="Show per-stage timings of each turn.")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """Rejoinder: a real-time conversational voice agent that runs offline on a small CPU."""
    setup_logging(verbose)
    ctx.obj = {**(ctx.obj or {}), "config": config_path}  # `agent.run.serve` passes its Agent in obj


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

    cfg = config(ctx, **overrides(**models))
    agent = agent_option(ctx, models.get("agent_spec"))
    doc = run(run_converse(cfg, list(inputs), out, fast=fast, gap_s=gap, progress=progress,
                            interrupt_after_s=interrupt_after, echo_db=echo_db, echo_delay_ms=echo_delay_ms,
                            agent=agent))
    for t in doc["turns"]:
        click.echo(f"user:  {t['user_text']}\nagent: {t['heard_text']}"
                   f"{' [interrupted]' if t['interrupted'] else ''}\n"
                   f"       voice-to-voice {t['timings_ms']['voice_to_voice']} ms  {t['timings_ms']}")
    write_json(doc, json_path, also_stdout=False)


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

    cfg = config(ctx, **overrides(**models))
    agent = agent_option(ctx, models.get("agent_spec"))
    try:
        opts = ServeOptions(host=host, port=port, ice_servers=list(ice_servers), token=token, cert=cert, key=key,
                            max_sessions=max_sessions, allow_hosts=list(allow_hosts))
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    try:
        sock = bind_socket(opts.host, opts.port)  # before the models load: a busy port is known at once
    except OSError as exc:
        fail(str(exc))
    from agent.stack import load_stack

    async def go():
        async with load_stack(cfg, progress, agent=agent, record_dir=record_dir) as stack:
            try:
                await run_server(stack, opts, announce=click.echo, sock=sock)
            except OSError as exc:
                fail(str(exc))

    try:
        run(go())
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
        cfg = config(ctx, **overrides(**models))
        agent = agent_option(ctx, models.get("agent_spec"))
        run(run_talk(cfg, as_device(input_device), as_device(output_device), progress=progress, say=click.echo,
                      record_dir=record_dir,
                      agent=agent))
    except DeviceError as exc:
        fail(str(exc))


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

    cfg = config(ctx, **{"stt.model": stt_model, "stt.url": stt_url})
    if stream:
        _transcribe_stream(cfg, file, as_json, fast)
        return

    async def go():
        audio, rate = read_audio(file)
        audio, _ = sanitize(audio)  # before resampling: the filter would smear a NaN over its neighbours
        audio = resample(audio, rate, 16000)
        engine = load_stt(cfg.stt)
        return engine.transcribe(audio)

    r = run(go())
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

    run(go())


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

    cfg = config(ctx, **{"tts.voice": voice, "tts.rate": rate, "tts.volume": volume})

    async def go():
        engine = load_tts(cfg.tts)
        tts = StreamingTTS(engine, chunk_ms=cfg.tts.chunk_ms)
        chunks = [c async for c in tts.speak(text)]
        return engine, chunks, tts.last_metrics

    engine, chunks, metrics = run(go())
    audio = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
    if audio.size == 0:
        click.echo("note: nothing speakable in the text; wrote an empty WAV", err=True)
    sf.write(str(out), audio, engine.sample_rate, subtype="PCM_16")
    if as_json:
        click.echo(json.dumps(metrics.as_dict()))
    else:
        click.echo(f"wrote {out} ({len(audio) / engine.sample_rate:.2f} s)", err=True)


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
        fail(str(exc))
    cfg = config(ctx, **overrides(**models))
    agent = agent_option(ctx, models.get("agent_spec"))
    try:
        run(run_sip(cfg, listen, max_calls, list(allow), agent=agent, progress=progress, record_dir=record_dir))
    except OSError as exc:
        fail(f"could not listen on udp {listen}: {exc}")


for _command in COMMANDS:  # benches and evals: agent/cli_bench.py
    main.add_command(_command)

if __name__ == "__main__":
    main()
