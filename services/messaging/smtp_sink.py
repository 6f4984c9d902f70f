"""A local SMTP sink (aiosmtpd) that keeps what it receives as .eml files, one per Message-ID.

`python -m services.messaging.smtp_sink --host 127.0.0.1 --port 2525 --dir DIR`. A message whose
Message-ID was already received is acknowledged and not stored again (the receiving side of the
exactly-once delivery: a replay after a crash carries the same Message-ID); replays are counted in
`DIR/duplicates.log` so tests can see them. For fault tests, recipients at `reject.invalid` are refused
permanently (550) and recipients at `tempfail.invalid` are refused once (451) per message, then accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from nurture.listen import PortInUse, listening_socket_async

_MSGID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


class SinkHandler:
    """aiosmtpd handler: RCPT policy for fault tests, DATA stored once per Message-ID."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._tempfailed: set[str] = set()
        self.received = 0
        self.duplicates = 0
        self.envelopes: dict[str, str] = {}  # Message-ID → envelope sender (MAIL FROM), for tests of VERP

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        domain = address.rpartition("@")[2].lower()
        if domain == "reject.invalid":
            return "550 5.1.1 mailbox does not exist"
        if domain == "tempfail.invalid" and address not in self._tempfailed:
            self._tempfailed.add(address)
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data: bytes = envelope.original_content or b""
        head = data[: data.find(b"\r\n\r\n") + 2 if b"\r\n\r\n" in data else len(data)]
        match = _MSGID.search(head)
        ident = match.group(1) if match else hashlib.sha256(data).hexdigest().encode()
        name = hashlib.sha256(ident).hexdigest()[:32] + ".eml"
        path = self.dir / name
        with self._lock:
            self.received += 1
            self.envelopes[ident.decode("ascii", "replace")] = envelope.mail_from or ""
            if len(self.envelopes) > 100_000:   # a long-running local sink keeps only the latest
                del self.envelopes[next(iter(self.envelopes))]
            if path.exists():
                self.duplicates += 1
                with open(self.dir / "duplicates.log", "ab") as log:
                    log.write(ident + b"\n")
                return "250 OK (duplicate Message-ID, not stored again)"
            tmp = self.dir / f".{name}.tmp"
            envelope_head = f"X-Sink-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n".encode()
            with open(tmp, "wb") as out:
                out.write(envelope_head + data)
            os.replace(tmp, path)
        return "250 OK"


class SmtpSink:
    """A sink on its own thread (aiosmtpd Controller), for `make run` and tests."""

    def __init__(self, directory: Path, host: str = "127.0.0.1", port: int = 0, *, smtputf8: bool = True) -> None:
        self.handler = SinkHandler(Path(directory))
        self.smtputf8 = smtputf8   # False: a server that does not offer SMTPUTF8 (RFC 6531), for tests
        if port == 0:
            import socket

            with socket.socket() as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
        self.host = host
        self.port = port
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def start(self) -> SmtpSink:
        """Listen (again, after `stop`: a controller's loop cannot be restarted, so each start has its own)."""
        self._controller = Controller(self.handler, hostname=self.host, port=self.port, decode_data=False,
                                      server_kwargs={"data_size_limit": 10 * 1024 * 1024,
                                                     "enable_SMTPUTF8": self.smtputf8})
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def messages(self) -> list[Path]:
        return sorted(self.handler.dir.glob("*.eml"))

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local SMTP sink: stores each message under --dir")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    handler = SinkHandler(args.dir)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        # A port in use is tried again for a few seconds (nurture.listen).
        sock = await listening_socket_async("smtp sink", args.host, args.port)
        server = await loop.create_server(
            lambda: SMTP(handler, decode_data=False, data_size_limit=10 * 1024 * 1024, hostname=args.host,
                         enable_SMTPUTF8=True),
            sock=sock)
        print(f"smtp sink listening on {args.host}:{args.port}, storing in {args.dir}", flush=True)
        async with server:
            await server.serve_forever()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve())
    except PortInUse as exc:
        raise SystemExit(str(exc)) from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
