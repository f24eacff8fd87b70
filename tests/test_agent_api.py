"""The Python API (agent/api.py): the README's hello world, `--agent FILE.py:NAME`, and its errors.

Fakes: `Rig` (tests/fakes.py) for the conversation; the README's own code, `load_agent`, the tools
and the turn manager are real. `test_serve_runs_an_agent_from_its_file` starts the real CLI (it
fails fast on a busy port before loading any model).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.api import Agent, load_agent
from agent.recorded_call import RecordedCall
from tests.fakes import Rig

README = Path(__file__).resolve().parents[1] / "README.md"


def hello_world() -> str:
    m = re.search(r"```python\n# shop.py\n(.*?)```", README.read_text(), re.S)
    assert m, "the README has no hello world (```python # shop.py)"
    return m.group(1)


def test_the_readme_hello_world_is_short_and_defines_an_agent_with_two_tools(tmp_path):
    code = hello_world()
    assert len(code.strip().splitlines()) <= 30
    f = tmp_path / "shop.py"
    f.write_text(code)
    shop = load_agent(f"{f}:shop")
    assert shop.greeting and "Spoke and Chain" in shop.instructions
    names = set(shop.box.tools)
    assert {"opening_hours", "repair_status", "transfer_to_human", "end_call"} <= names
    prompt = shop.system_prompt("grammar")
    assert "bike shop" in prompt and "repair_status(ticket: digits)" in prompt


async def test_the_hello_world_agent_answers_from_its_tool_in_a_conversation(tmp_path):
    f = tmp_path / "shop.py"
    f.write_text(hello_world())
    shop = load_agent(f"{f}:shop")
    call = '{"name": "repair_status", "arguments": {"ticket": "123"}}'
    async with Rig(["is my bike ready, ticket one two three"], [call, "Yes, it is ready for pick-up."],
                   tools=shop.box, call=RecordedCall()) as rig:
        await rig.user_says()
        await rig.turns.wait_reply()
    (m,) = rig.turns.turns
    assert m.tools[0]["result"] == {"ticket": "123", "status": "ready for pick-up"}
    assert m.heard_text.endswith("ready for pick-up.")


@pytest.mark.parametrize("spec,message", [
    ("nope.py:agent", "no such file"),
    ("{dir}/good.py:missing", "has no 'missing'; agents in it: agent"),
    ("{dir}/good.py:number", "is a int, not an Agent"),
    ("{dir}/broken.py:agent", "syntax error in .*broken.py line 2"),
    ("{dir}/badtool.py:agent", "tool helper: needs a docstring"),
    ("good.py", "expected FILE.py:NAME"),
])
def test_agent_specs_that_cannot_be_loaded_are_one_line_errors(tmp_path, spec, message):
    (tmp_path / "good.py").write_text("from agent import Agent\nagent = Agent(instructions='hi')\nnumber = 3\n")
    (tmp_path / "broken.py").write_text("from agent import Agent\nagent = Agent(\n")
    (tmp_path / "badtool.py").write_text("from agent import Agent\ndef helper() -> str:\n    return ''\n"
                                         "agent = Agent(instructions='hi', tools=[helper])\n")
    with pytest.raises(ValueError, match=message):
        load_agent(spec.format(dir=tmp_path))


def test_the_default_agent_has_no_tools_and_the_plain_prompt():
    from agent.prompts import SPEECH_SYSTEM_PROMPT

    plain = Agent(end_call=False)
    assert not plain.box and plain.system_prompt("grammar") == SPEECH_SYSTEM_PROMPT


def test_serve_with_a_bad_agent_fails_before_loading_models(tmp_path):
    r = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--agent", f"{tmp_path}/none.py:agent"],
                       capture_output=True, text=True, timeout=60, cwd=README.parent)
    assert r.returncode == 2 and "no such file" in r.stderr and "loading" not in r.stderr


def test_serve_runs_an_agent_from_its_file(tmp_path):
    f = tmp_path / "shop.py"
    f.write_text(hello_world())
    with socket.socket() as busy:  # a busy port: serve stops right after reading the agent
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, str(f), "--port", str(port)], capture_output=True, text=True,
                           timeout=60, cwd=README.parent, env={"PYTHONPATH": str(README.parent),
                                                               "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and str(port) in r.stderr, r.stderr
