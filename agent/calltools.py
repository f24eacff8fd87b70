"""The built-in call-control tools: end the call, transfer it, send keypad digits.

Each is an ordinary tool (agent/tools.py) whose work is done by the edge carrying the call
(`pipeline.stages.CallControl`): the browser ends the WebRTC call and shows a transfer or digits on
the page; a phone edge sends BYE, REFER or RFC 4733 events. A tool result with `"say"` is spoken
as is (no second LLM request), and `"hang_up": true` ends the call once that has been played.
"""

from __future__ import annotations

from typing import Any

from agent.tools import Call, Tool

GOODBYE = "Thank you for calling. Goodbye!"

# What callers say when they want a person, or are done (IVR phrasing, not fitted to a test set). The
# 0.5B model called transfer_to_human for "hello" and end_call for "can you hear me" when both were
# always offered (tools-bench); offered only after such words, it still decides, but cannot jump.
TRANSFER_CUES = ("human", "person", "agent", "operator", "representative", "someone", "somebody", "real ",
                 "staff", "manager", "supervisor", "colleague", "speak to", "talk to", "put me through",
                 "transfer", "customer service")
GOODBYE_CUES = ("bye", "that's all", "that is all", "that's it", "that's everything", "nothing else",
                "no more questions", "have a nice day", "have a good day", "hang up", "we're done",
                "i'm done", "all set")
# Said, these end the decision: the call is transferred / ended without asking the model
TRANSFER_DECISIVE = ("human", "operator", "representative", "real person", "a person", "someone real",
                     "customer service", "speak to somebody", "talk to somebody", "speak to someone",
                     "talk to someone")
GOODBYE_DECISIVE = ("bye", "goodbye", "hang up")


async def end_call(call: Call) -> dict[str, Any]:
    """End the call when the caller says goodbye, or has nothing more to ask."""
    return {"say": GOODBYE, "hang_up": True}


def transfer_to(target: str, *, name: str = "transfer_to_human",
                description: str = "Transfer the caller to a person when they ask for a human, an agent or an "
                                   "operator, or when you cannot help them.",
                say: str = "I'm transferring you to a colleague now. Please hold.") -> Tool:
    """A tool that transfers the call to `target` (a number, SIP URI or queue the edge understands)."""

    async def transfer(call: Call) -> dict[str, Any]:
        if call is None:
            return {"transferred": False, "reason": "this call cannot be transferred"}
        if await call.transfer(target):
            return {"say": say, "hang_up": True}
        return {"transferred": False, "reason": "nobody could take the call"}

    transfer.__doc__ = description
    return Tool.from_function(transfer, name=name, filler=None, cues=TRANSFER_CUES, decisive=TRANSFER_DECISIVE)


async def send_dtmf(digits: str, call: Call) -> dict[str, Any]:
    """Press keypad keys on the line (for example to reach an extension).

    Args:
        digits: the keys to press, 0-9, * and #
    """
    keys = "".join(c for c in digits.upper() if c in "0123456789*#ABCD")
    if not keys:
        return {"sent": "", "error": "no keypad digits given"}
    if call is not None:
        await call.send_dtmf(keys)
    return {"sent": keys}


END_CALL = Tool.from_function(end_call, filler=None, cues=GOODBYE_CUES, decisive=GOODBYE_DECISIVE)
SEND_DTMF = Tool.from_function(send_dtmf, filler=None)
