"""`rejoinder chat-bench`: its checks, and one run on a scripted LLM (no model, no server).

Fakes: a local scripted LLM (its replies chosen by the last user message) records every prompt, so
the test sees that follow-ups carry the earlier turns and the reply as heard; timings are real but
tiny. The figures themselves come from the real models (demos/chat-bench-*.json).
"""

from __future__ import annotations

import os

from agent.benches.chat import DIALOGUES, Ask, check, not_prose, rss_mb, run_chat_bench, summary_lines
from agent.prompts import PRIMER, SPEECH_SYSTEM_PROMPT


def test_there_are_enough_everyday_dialogues_with_follow_ups():
    asks = [a for _, turns in DIALOGUES for a in turns]
    assert len(asks) >= 15
    assert sum(1 for _, turns in DIALOGUES if len(turns) > 1) >= 3
    assert {"fact", "memory", "how-to", "small talk"} <= {kind for kind, _ in DIALOGUES}


def test_required_and_forbidden_words_decide_a_reply():
    australia = Ask("What's the capital of Australia?", ("canberra",), ("sydney",))
    assert check(australia, "It's Canberra.") == []
    assert check(australia, "The capital is Sydney.") == ["lacks 'canberra'", "says 'sydney'"]
    name = Ask("What's my name?", ("sam",), ("my name is sam",))
    assert check(name, "Your name is Sam.") == []
    assert check(name, "My name is Sam!") == ["says 'my name is sam'"]
    egg = Ask("How do I boil an egg?", ("water", "boil"))
    assert check(egg, "Put it in boiling water for seven minutes.") == []
    assert check(Ask("legs?", ("eight|8",)), "A spider has 8 legs.") == []


def test_prose_means_no_lists_no_markup_no_emoji():
    assert not_prose("Sure! Put the egg in boiling water for 7 minutes, then cool it.") == []
    assert not_prose("1. Boil water.\n2. Add the egg.") == ["list"]
    assert not_prose("- Boil water\n- Add the egg") == ["list"]
    assert not_prose("It is **Canberra**.") == ["'*'"]
    assert not_prose("# Tea") == ["'#'"]
    assert not_prose("Great run! 🏃") == ["emoji"]
    assert not_prose("See https://example.com") == ["url"]


class ScriptedLLM:
    """Answers by the last user message; remembers every prompt it was sent."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers, self.prompts = answers, []

    async def stream(self, messages):
        self.prompts.append(messages)
        for word in self.answers.get(messages[-1]["content"], "Okay.").split(" "):
            yield word + " "


async def test_a_run_keeps_the_history_and_counts_right_prose_and_words():
    dialogues = [
        ("memory", [Ask("My name is Sam.", none_of=("my name is sam",)),
                    Ask("What's my name?", ("sam",), ("my name is sam",))]),
        ("fact", [Ask("What's the capital of Australia?", ("canberra",), ("sydney",))]),
    ]
    llm = ScriptedLLM({"My name is Sam.": "Nice to meet you, Sam!", "What's my name?": "Your name is Sam.",
                       "What's the capital of Australia?": "**Sydney**, I think."})
    progress: list[str] = []
    doc = await run_chat_bench(llm, SPEECH_SYSTEM_PROMPT, repeat=2, progress=progress.append, dialogues=dialogues)
    assert doc["n"] == 6 and doc["repeat"] == 2 and doc["dialogues"] == 2
    assert doc["correct"] == {"right": 4, "n": 6, "rate": 0.667}
    assert doc["by_kind"]["memory"]["right"] == 4 and doc["by_kind"]["fact"]["right"] == 0
    assert doc["prose"]["right"] == 4  # the "**" reply is not
    follow_up = llm.prompts[1]
    assert follow_up[0] == {"role": "system", "content": SPEECH_SYSTEM_PROMPT}
    assert follow_up[1:3] == list(PRIMER)
    assert follow_up[3:] == [{"role": "user", "content": "My name is Sam."},
                             {"role": "assistant", "content": "Nice to meet you, Sam!"},
                             {"role": "user", "content": "What's my name?"}]
    assert len(llm.prompts[2]) == 4  # a new dialogue starts a fresh conversation
    row = doc["rows"][0]
    assert row["words"] == 5 and row["decode_tokens"] == 4 and row["first_token_ms"] is not None
    assert any("BAD" in line and "says 'sydney'" in line for line in progress)
    doc["model"] = "fake"
    assert "right 4/6 (67%)" in "\n".join(summary_lines(doc))


def test_server_memory_is_read_from_proc():
    mem = rss_mb(os.getpid())
    assert mem is not None and mem["rss_mib"] > 0 and mem["peak_mib"] >= mem["rss_mib"]
    assert rss_mb(None) is None
