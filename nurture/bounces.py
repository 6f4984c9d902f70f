"""What the bus calls a hard bounce.

Messaging's own `email_hard_bounced` (a DSN or a provider's webhook), or an `email_bounced` a caller posts
(`POST /v1/events`, e.g. another sender's webhook) whose `properties.type` (or `bounce_type`) is `hard`.
Messaging suppresses the address, scoring withdraws the lead's email consent and journeys end its mail
journeys for either alike (docs/API.md, "Events" and "Deliverability").
"""

from __future__ import annotations

from collections.abc import Mapping

HARD_BOUNCED = "email_hard_bounced"


def is_hard_bounce(event_type: str, properties: Mapping[str, object]) -> bool:
    """Whether an event of this type with these properties is a hard bounce."""
    if event_type == HARD_BOUNCED:
        return True
    return event_type == "email_bounced" and str(properties.get("type") or properties.get("bounce_type")) == "hard"
