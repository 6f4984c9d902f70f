"""Unsubscribes the gateway could not hand to messaging at once: what both sides share.

An unsubscribe (the page's form, or a mailbox provider's RFC 8058 one-click POST, which is sent once and
not always retried) must never be lost to a moment when messaging is slow or away: consent wins over
every journey. So when the Unsubscribe RPC fails for such a reason, the gateway appends the request to
this stream and answers the person; messaging's reader (`services.messaging.app.unsubscribe_requests`)
applies each entry as the RPC would (verifying its signed token; the same idempotent record) and only
then removes it. One stream in one slot: unsubscribes are few, and none names a lead before messaging
has verified its token.

The stream is bounded in count as in size: past MAX_ENTRIES (messaging away long, or a flood of forged
POSTs while it is) the gateway refuses with 503 and Retry-After, as the collect stream does, rather than grow
Redis without end; the sender retries, so nothing it sent is dropped unanswered. `ENQUEUE` checks and
appends in one step (one key), so concurrent gateways cannot together overshoot the bound.

An entry: `k` the token as received, `s` the scope asked ("" for the message's own), `o` the source
(one_click | page), `a` when the gateway took it (RFC 3339), for the record.
"""

from __future__ import annotations

STREAM = "nurture:unsubscribe-requests"
GROUP = "messaging"
# A token longer than this is not one messaging signed: refused at the gateway, never stored.
MAX_TOKEN_CHARS = 1024
# At most 1 KiB an entry: 100,000 entries are about 100 MiB of Redis at worst.
MAX_ENTRIES = 100_000
RETRY_AFTER_S = 30

# KEYS[1] the stream; ARGV[1] MAX_ENTRIES, then the entry's fields k, s, o, a. The new entry's id, or
# false (nil to the caller) when the stream is full.
ENQUEUE = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', 'k', ARGV[2], 's', ARGV[3], 'o', ARGV[4], 'a', ARGV[5])
"""
