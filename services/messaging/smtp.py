"""A small pool of persistent SMTP connections (smtplib), used from worker threads.

`smtp_url` is `smtp://[user:pass@]host:port[?starttls=1]` or `smtps://...`. Outcomes are classified so
the queue never stalls: 2xx sent; 4xx, refused connections and drops are transient (retried with
backoff); 5xx are permanent (recorded with the server's reason; a refused recipient is a hard bounce).
"""

from __future__ import annotations

import contextlib
import queue
import smtplib
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from urllib.parse import parse_qs, unquote, urlparse


@dataclass(frozen=True)
class SmtpResult:
    ok: bool
    permanent: bool = False
    code: int = 250
    reason: str = ""
    hard_bounce: bool = False    # the server refused the recipient permanently
    stale_connections: int = 0   # pooled connections found dead (and dropped) on the way to this result


class SmtpPool:
    """Thread-safe: each call borrows one connection, opening one when none is idle."""

    def __init__(self, url: str, *, size: int = 8, timeout: float = 15.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("smtp", "smtps"):
            raise ValueError(f"smtp_url must be smtp:// or smtps://, got {url!r}")
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or (465 if parsed.scheme == "smtps" else 25)
        self.tls = parsed.scheme == "smtps"
        self.starttls = parse_qs(parsed.query).get("starttls", ["0"])[0] in ("1", "true")
        self.user = unquote(parsed.username) if parsed.username else None
        self.password = unquote(parsed.password) if parsed.password else None
        self.size = size
        self.timeout = timeout
        self._idle: queue.LifoQueue[smtplib.SMTP] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._closed = False

    def _open(self) -> smtplib.SMTP:
        conn: smtplib.SMTP
        if self.tls:
            conn = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=ssl.create_default_context())
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            if self.starttls:
                conn.starttls(context=ssl.create_default_context())
        if self.user:
            conn.login(self.user, self.password or "")
        return conn

    def _borrow(self) -> tuple[smtplib.SMTP, bool]:
        """An idle connection (reused=True) or a new one."""
        try:
            return self._idle.get_nowait(), True
        except queue.Empty:
            return self._open(), False

    def _give_back(self, conn: smtplib.SMTP) -> None:
        if self._closed:
            _quiet_close(conn)
        else:
            self._idle.put(conn)

    def _drop_idle(self) -> int:
        """Close every idle connection: one found dead means the server restarted (or a middlebox
        forgot us), and its siblings opened before then are dead too; trying them one by one cost a
        delivery attempt each, and the backoff after it (two transactional emails went ~61 s late)."""
        dropped = 0
        while True:
            try:
                _quiet_close(self._idle.get_nowait())
            except queue.Empty:
                return dropped
            dropped += 1

    def send(self, sender: str, recipient: str, data: bytes) -> SmtpResult:
        """One SMTP transaction; never raises for delivery problems, only classifies them.

        A reused connection that fails before the server answered (closed, reset, broken pipe) was
        dead while idle: it and every other idle one are dropped and the message goes at once on a
        fresh connection, in the same attempt. A replay after a drop mid-DATA carries the same
        Message-ID, which the receiver uses to drop it."""
        stale = 0
        recipient = _ascii_domain(recipient)
        # A local part beyond ASCII (RFC 6531) needs the server's SMTPUTF8; without the option smtplib
        # raised UnicodeEncodeError mid-transaction, out of the whole batch, and no mail went at all.
        options = () if sender.isascii() and recipient.isascii() else ("SMTPUTF8",)
        while True:
            try:
                conn, reused = self._borrow()
            except (OSError, smtplib.SMTPException) as exc:
                return SmtpResult(ok=False, code=0, reason=f"connect {self.host}:{self.port}: {exc}",
                                  stale_connections=stale)
            try:
                conn.sendmail(sender, [recipient], data, mail_options=options)
            except smtplib.SMTPNotSupportedError:
                _reset(conn)
                self._give_back(conn)
                return SmtpResult(ok=False, permanent=True, code=0, stale_connections=stale,
                                  reason=f"{recipient} needs SMTPUTF8, which {self.host}:{self.port} does not offer")
            except UnicodeError as exc:   # a server without ESMTP takes no options at all
                _quiet_close(conn)
                return SmtpResult(ok=False, permanent=True, code=0, stale_connections=stale,
                                  reason=f"{recipient} cannot be sent over plain SMTP: {exc}")
            except smtplib.SMTPRecipientsRefused as exc:
                self._give_back(conn)
                code, msg = next(iter(exc.recipients.values()))
                return replace(_classify(code, msg, recipient_refused=True), stale_connections=stale)
            except smtplib.SMTPResponseException as exc:
                _reset(conn)
                self._give_back(conn)
                return replace(_classify(exc.smtp_code, exc.smtp_error, recipient_refused=False),
                               stale_connections=stale)
            except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
                _quiet_close(conn)
                if reused and stale <= 2 * self.size:  # bounded even if other threads keep giving back dead ones
                    stale += 1 + self._drop_idle()
                    continue  # only reused connections loop, and the idle queue is now empty
                return SmtpResult(ok=False, code=0, reason=f"disconnected: {exc}", stale_connections=stale)
            except (OSError, smtplib.SMTPException) as exc:
                _quiet_close(conn)
                return SmtpResult(ok=False, code=0, reason=f"smtp error: {exc}", stale_connections=stale)
            self._give_back(conn)
            return SmtpResult(ok=True, stale_connections=stale)

    def send_many(self, messages: Sequence[tuple[str, str, bytes]]) -> list[SmtpResult]:
        """(envelope sender, recipient, data) transactions one after another from one thread, in order;
        the LIFO idle queue hands the connection just given back to the next transaction, so they share
        one connection."""
        return [self.send(sender, recipient, data) for sender, recipient, data in messages]

    def close(self) -> None:
        self._closed = True
        self._drop_idle()


def _ascii_domain(address: str) -> str:
    """The address with its domain in IDNA (exämple.de → xn--exmple-cua.de): any server takes that, so
    only a local part beyond ASCII needs SMTPUTF8."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return address   # not IDNA-encodable: sent as it is, with SMTPUTF8


def _classify(code: int, message: bytes | str, *, recipient_refused: bool) -> SmtpResult:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    permanent = 500 <= code < 600
    return SmtpResult(ok=False, permanent=permanent, code=code, reason=f"{code} {text}".strip(),
                      hard_bounce=permanent and recipient_refused)


def _reset(conn: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError, smtplib.SMTPException):
        conn.rset()


def _quiet_close(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        with contextlib.suppress(OSError):
            conn.close()
