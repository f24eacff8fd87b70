"""The conversation as the user experienced it: what they said, and what they *heard* the agent say."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from agent.spoken import normalize_numbers_in_transcript

_REFUSAL = re.compile(r"(i'?m|i am) sorry,? (but )?i (can'?t|cannot|am unable to|'m unable to) "
                      r"(assist|help) with (that|this)", re.IGNORECASE)

INTERRUPTED_NOTE = "The user interrupted you: they heard only the words above, not the rest of your reply."
INTERRUPTED_EARLY = "The user interrupted you before they heard anything of your reply."


@dataclass
class Message:
    role: str  # "user" | "assistant" | "tool" (a tool call and its result, shown to the model as a note)
    text: str
    interrupted: bool = False


@dataclass
class Conversation:
    """History sent to the LLM. The user's words go in with spoken digit runs written as digits
    ("four seven one two" → "4712", agent/spoken.py): small models copy figures far better. An
    interrupted agent turn is cut to the heard words and marked, so the
    model knows the user did not hear the rest and that they cut in."""

    system_prompt: str
    primer: tuple[dict[str, str], ...] = ()  # example exchange shown before the real history
    max_messages: int = 24  # keeps the prompt (and the first-token time) bounded
    step: str | None = None  # a flow's current step, told after the history (agent/flows.py)
    messages: list[Message] = field(default_factory=list)

    def add_user(self, text: str) -> None:
        self.messages = _with_user(self.messages, normalize_numbers_in_transcript(text))

    def add_tool(self, note: str) -> None:
        """A tool call and its result (`ToolResult.for_model`), in order between the user's words and
        the reply that used it; shown to the model as a system note, which every endpoint accepts."""
        self.messages.append(Message("tool", note))

    def add_agent(self, heard_text: str, interrupted: bool) -> None:
        if heard_text or interrupted:
            self.messages.append(Message("assistant", heard_text, interrupted))

    def for_model(self, m: Message) -> str:
        """An agent turn as the model is shown it: a stock refusal is kept out of its own history,
        because the 0.5B copies it into later answers (6 of 18 call-centre turns said "I'm sorry,
        but I can't assist with that." once one had). The caller heard it; the model need not."""
        if m.role == "assistant" and _REFUSAL.match(m.text.strip()):
            return "(I could not answer that.)"
        return m.text

    def for_llm(self, pending_user: str | None = None) -> list[dict[str, str]]:
        """The prompt; with `pending_user`, as if those words had been added (a speculative reply)."""
        messages = self.messages[-self.max_messages :]
        if pending_user:
            messages = _with_user(messages, normalize_numbers_in_transcript(pending_user))
        out = [{"role": "system", "content": self.system_prompt}, *self.primer]
        for m in messages:
            out.append({"role": "system" if m.role == "tool" else m.role, "content": self.for_model(m)})
            if m.interrupted:
                # a separate note, not text in the agent's mouth: small models copy whatever they
                # see in their own turns (measured: they repeated an inline "[interrupted…]" tag,
                # and a trailing "…" made Qwen 0.5B end its next replies mid-sentence with one)
                out.append({"role": "system", "content": INTERRUPTED_NOTE if m.text else INTERRUPTED_EARLY})
        if self.step:
            out.append({"role": "system", "content": self.step})
        return out


def _with_user(messages: list[Message], text: str) -> list[Message]:
    """`messages` plus the user's words; words that follow the user's own (no reply between, e.g.
    a reply cancelled before it spoke) join them, so the prompt holds one user turn."""
    if messages and messages[-1].role == "user":  # (a tool note between them keeps them apart)
        return [*messages[:-1], Message("user", f"{messages[-1].text} {text}")]
    return [*messages, Message("user", text)]
