"""An order-status line: look an order up by its spoken number, transfer to a person, say goodbye.

    rejoinder serve --agent demos/order_desk.py:agent        # then talk to it in the browser
    python demos/order_desk.py                                # the same

The orders live in a real SQLite database, made on first use (`ORDER_DESK_DB`, default
~/.cache/rejoinder/order_desk.sqlite). The agent can only state what `lookup_order` returned: a
number the caller did not say cannot be looked up (agent/decide.py), and a transfer happens on
request or after two failed lookups in one call.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

from agent import Agent, Call, Digits, serve, transfer_to

DB = Path(os.environ.get("ORDER_DESK_DB", Path.home() / ".cache" / "rejoinder" / "order_desk.sqlite"))
ORDERS = [  # order id, status, delivery date, item
    ("4712", "shipped", "Friday the twelfth", "a blue bicycle helmet"),
    ("88231", "being packed", "next Tuesday", "two bike lights"),
    ("55019", "delivered", "last Monday", "a repair kit"),
    ("30077", "delayed", "the end of the month", "a child seat"),
]


def database(path: Path = DB) -> sqlite3.Connection:
    """The orders database, created with the sample orders if it does not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, status TEXT, delivery TEXT, item TEXT)")
    db.executemany("INSERT OR IGNORE INTO orders VALUES (?, ?, ?, ?)", ORDERS)
    db.commit()
    return db


TEAM = "sip:orders-team@spokeandchain.example"
failed_lookups: dict[int, int] = {}  # per call: two misses and the caller gets a person


def find_order(order_id: str) -> tuple[str, str, str] | None:
    with database() as db:
        return db.execute("SELECT status, delivery, item FROM orders WHERE id = ?", (order_id,)).fetchone()


async def lookup_order(order_id: Digits, call: Call) -> dict:
    """Look up the status and delivery date of an order by its order number.

    Args:
        order_id: the order number, digits only
    """
    row = await asyncio.to_thread(find_order, order_id)
    if row is None:
        misses = failed_lookups[id(call)] = failed_lookups.get(id(call), 0) + 1
        if misses >= 2 and call is not None and await call.transfer(TEAM):
            return {"say": "I still can't find that order, so I'm passing you to a colleague. Please hold.",
                    "hang_up": True}
        return {"found": False, "order_id": order_id,
                "say": f"I couldn't find order {' '.join(order_id)}. Could you say the number again, digit by digit?"}
    status, delivery, item = row
    # the answer is made from the row itself, so no word of it can be invented; the model only
    # decides when to look (an LLM-phrased answer is what a tool without "say" gets)
    when = "arrived" if status == "delivered" else "should arrive"
    return {"found": True, "order_id": order_id, "item": item, "status": status, "delivery": delivery,
            "say": f"Order {' '.join(order_id)}, {item}, is {status}; it {when} {delivery}. Anything else?"}


agent = Agent(
    instructions="You answer the phone for the order desk of Spoke and Chain, a bike shop. You help callers "
                 "with the status of their orders. Ask for the order number if you need it.",
    greeting="Hi, thanks for calling Spoke and Chain. What's your order number?",
    tools=[lookup_order, transfer_to(TEAM)],
    flow=Path(__file__).with_name("order_desk.flow.toml"),  # the steps of the call: edit that file
)

if __name__ == "__main__":
    serve(agent)
