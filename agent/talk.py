"""`rejoinder talk`: the agent on this machine's microphone and speaker (the devices edge).

The edge (`transport/devices.py`) only moves audio; wiring it to a loaded stack is the agent's job.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.api import Agent
from agent.stack import load_stack
from pipeline.clock import RealClock
from transport.devices import DeviceMicrophone, DeviceSpeaker, check_devices


async def talk(config, input_device=None, output_device=None, progress: Callable[[str], None] = print,
               say: Callable[[str], None] = print, sd: Any = None, agent: Agent | None = None,
               record_dir: Path | None = None) -> list[dict]:
    """Converse on the local microphone and speaker until cancelled (Ctrl-C); return the turns' metrics."""
    sd = check_devices(input_device, output_device, sd)
    clock = RealClock()
    turns: list[dict] = []

    def on_event(event: dict) -> None:
        if event["type"] == "transcript" and event.get("final") and event["text"]:
            say(f"you:   {event['text']}")
        elif event["type"] == "turn":
            m = event["metrics"]
            turns.append(m)
            say(f"agent: {m['heard_text']}{' [interrupted]' if m['interrupted'] else ''}  "
                f"({m['timings_ms']['voice_to_voice']} ms voice-to-voice)")

    async with load_stack(config, progress, agent=agent, record_dir=record_dir) as stack:
        mic = DeviceMicrophone(clock, input_device, sd=sd)
        with DeviceSpeaker(output_device, sd=sd) as speaker:
            session = stack.new_session(clock, speaker.push, output_rate=speaker.rate, on_event=on_event)
            progress("listening: speak (Ctrl-C to stop; use headphones, or the agent may hear itself)")
            await session.run(mic.frames())  # until Ctrl-C cancels it
    return turns
