"""Evals (agent/evals.py): the scenario file format and the checks, on a hand-made conversation.

Pure logic (no model): the checks read a converse-style metrics document built here. The order desk's
scenario file as shipped is loaded; running it for real is `rejoinder eval` (the `models` test below).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.evals import EvalFile, Scenario

DEMOS = Path(__file__).resolve().parents[1] / "demos"


def _doc(heard: str, tools: list[dict], hung_up: str | None = None, transfers: list[str] | None = None) -> dict:
    return {"turns": [{"heard_text": heard, "tools": tools, "user_text": "x", "timings_ms": {}}],
            "summary": {"call": {"hung_up": hung_up, "transfers": transfers or []}}}


LOOKUP = {"name": "lookup_order", "arguments": {"order_id": "4712"}, "result": {"status": "shipped"}}


def test_a_scenario_passes_only_when_everything_it_expects_happened():
    sc = Scenario("x", ["t"], tool="lookup_order", arguments={"order_id": "4712"}, reply_contains=["shipped"],
                  hang_up=True, facts=["delayed"])
    assert sc.check(_doc("It has shipped.", [LOOKUP], hung_up="end_call")) == []
    problems = sc.check(_doc("It is delayed.", [{**LOOKUP, "arguments": {"order_id": "1"}}]))
    assert any("expected lookup_order" in p for p in problems)
    assert any("never heard 'shipped'" in p for p in problems)
    assert any("said 'delayed', which no tool returned" in p for p in problems)
    assert any("hang_up=True" in p for p in problems)


def test_no_tool_and_transfer_expectations():
    assert Scenario("x", ["t"], no_tool=True).check(_doc("Nine to five.", [LOOKUP]))
    assert Scenario("x", ["t"], transfer=True).check(_doc("Hold on.", [], transfers=["desk"])) == []
    assert Scenario("x", ["t"], transfer=False).check(_doc("Hold on.", [], transfers=["desk"]))


def test_the_order_desk_scenarios_load():
    ev = EvalFile.load(DEMOS / "order_desk.eval.toml")
    assert len(ev.scenarios) >= 5 and ev.agent_spec.endswith("order_desk.py:agent")


@pytest.mark.parametrize("text,message", [
    ('[[scenario]]\nturns = ["hi"]\n', "needs agent"),
    ('agent = "a.py:x"\n', "no \\[\\[scenario\\]\\]"),
    ('agent = "a.py:x"\n[[scenario]]\nname = "n"\nturns = []\n', "scenario 1 \\(n\\): turns must be"),
    ('agent = "a.py:x"\n[[scenario]]\nturns = ["hi"]\nexpect = 1\n', "unknown keys \\['expect'\\]"),
    ('agent = "a.py:x"\n[[scenario\n', "not valid TOML"),
])
def test_a_bad_scenario_file_is_a_one_line_error(tmp_path, text, message):
    f = tmp_path / "e.toml"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        EvalFile.load(f)
