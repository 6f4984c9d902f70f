"""Bus messages for tests, built in one place: when the message's shape changes (a typed contract
instead of a dict), this is the one function to change."""

from __future__ import annotations

from typing import Any

from nurture.busmessage import BusMessage


def bus_message(message_id: str, lead_id: str | None, etype: str, *, properties: dict[str, Any] | None = None,
                lead: dict[str, Any] | None = None, occurred_at: str | None = None,
                signals: list[str] | None = None, **extra: Any) -> BusMessage:
    """One bus message as scoring publishes it; None leaves a field out (as an older publisher would).
    Fields the contract does not name (`extra`) travel in `properties`, the message's free-form part."""
    message: dict[str, Any] = {"id": message_id, "type": etype, "properties": {**(properties or {}), **extra}}
    if lead_id is not None:
        message["lead_id"] = lead_id
    if lead is not None:
        message["lead"] = lead
    if occurred_at is not None:
        message["occurred_at"] = occurred_at
    if signals is not None:
        message["signals"] = signals
    return BusMessage.from_dict(message)
