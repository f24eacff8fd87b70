"""The conversation as the user experienced it: what they said, and what they *heard* the agent say."""

from __future__ import annotations

from dataclasses import dataclass, field


INTERRUPTED_NOTE = "The user interrupted you: they heard only the words above, not the rest of your reply."
INTERRUPTED_EARLY = "The user interrupted you before they heard anything of your reply."


@dataclass
class Message:
    role: str  # "user" | "assistant"
    text: str
    interrupted: bool = False


@dataclass
class Conversation:
    """History sent to the LLM. An interrupted agent turn is cut to the heard words and marked, so the
    model knows the user did not hear the rest and that they cut in."""

    system_prompt: str
    primer: tuple[dict[str, str], ...] = ()  # example exchange shown before the real history
    max_messages: int = 24  # keeps the prompt (and the first-token time) bounded
    messages: list[Message] = field(default_factory=list)

    def add_user(self, text: str) -> None:
        self.messages.append(Message("user", text))

    def add_agent(self, heard_text: str, interrupted: bool) -> None:
        if heard_text or interrupted:
            self.messages.append(Message("assistant", heard_text, interrupted))

    def for_llm(self) -> list[dict[str, str]]:
        out = [{"role": "system", "content": self.system_prompt}, *self.primer]
        for m in self.messages[-self.max_messages :]:
            out.append({"role": m.role, "content": f"{m.text}…" if m.interrupted and m.text else m.text})
            if m.interrupted:
                # a separate note, not text in the agent's mouth: small models copy whatever they
                # see in their own turns (measured: they repeated an inline "[interrupted…]" tag)
                out.append({"role": "system", "content": INTERRUPTED_NOTE if m.text else INTERRUPTED_EARLY})
        return out
