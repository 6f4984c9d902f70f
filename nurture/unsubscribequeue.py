"""Unsubscribes the gateway could not hand to messaging at once: what both sides share.

An unsubscribe (the page's form, or a mailbox provider's RFC 8058 one-click POST, which is sent once and
not always retried) must never be lost to a moment when messaging is slow or away: consent wins over
every journey. So when the Unsubscribe RPC fails for such a reason, the gateway appends the request to
this stream and answers the person; messaging's reader (`services.messaging.app.unsubscribe_requests`)
applies each entry as the RPC would (verifying its signed token; the same idempotent record) and only
then removes it. One stream in one slot: unsubscribes are few, and none names a lead before messaging
has verified its token.

An entry: `k` the token as received, `s` the scope asked ("" for the message's own), `o` the source
(one_click | page), `a` when the gateway took it (RFC 3339), for the record.
"""

from __future__ import annotations

STREAM = "nurture:unsubscribe-requests"
GROUP = "messaging"
# A token longer than this is not one messaging signed: refused at the gateway, never stored.
MAX_TOKEN_CHARS = 1024
