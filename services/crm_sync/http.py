"""A small HTTP/1.1 client with a keep-alive connection pool, for the CRM connector.

httpx was measured to spend most of the push path in its connection pool bookkeeping (and a failed
module import per request); this client does only what the connector needs: JSON requests over
plain HTTP/1.1, Content-Length or chunked answers, per-request timeouts, reuse of idle connections.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from nurture import jsoncodec


class TransportError(Exception):
    """The request did not get an answer (refused, reset, closed, malformed)."""


class RequestTimeout(TransportError):
    pass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return jsoncodec.loads(self.body) if self.body else None


class HttpClient:
    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None, timeout: float = 5.0,
                 max_connections: int = 32) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise ValueError("only http:// CRM URLs are supported by the built-in client")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Host": f"{self._host}:{self._port}", "Accept": "application/json", **(headers or {})}
        self._timeout = timeout
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def request(self, method: str, path: str, body: Any = None) -> Response:
        async with self._slots:
            try:
                async with asyncio.timeout(self._timeout):
                    return await self._request(method, path, body)
            except TimeoutError as exc:
                raise RequestTimeout(f"no answer within {self._timeout:g} s") from exc

    async def _request(self, method: str, path: str, body: Any) -> Response:
        payload = b"" if body is None else jsoncodec.dumps(body).encode()
        head = [f"{method} {self._prefix}{path} HTTP/1.1"] + [f"{k}: {v}" for k, v in self._headers.items()]
        head.append(f"Content-Length: {len(payload)}")
        if payload:
            head.append("Content-Type: application/json")
        data = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
        reused = bool(self._idle)
        reader, writer = self._idle.pop() if reused else await self._connect()
        try:
            writer.write(data)
            await writer.drain()
            response, keep = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError, TransportError) as exc:
            writer.close()
            if reused:  # an idle connection the server closed meanwhile: one fresh try
                reader, writer = await self._connect()
                try:
                    writer.write(data)
                    await writer.drain()
                    response, keep = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError) as again:
                    writer.close()
                    raise TransportError(f"{type(again).__name__}: {again}") from again
            else:
                raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        if keep:
            self._idle.append((reader, writer))
        else:
            writer.close()
        return response

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_connection(self._host, self._port)
        except OSError as exc:
            raise TransportError(f"cannot connect to {self._host}:{self._port}: {exc}") from exc

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _read_response(reader: asyncio.StreamReader) -> tuple[Response, bool]:
    status_line = await reader.readline()
    if not status_line:
        raise TransportError("connection closed before an answer")
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ValueError(f"not an HTTP answer: {status_line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size)
            await reader.readline()
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif status in (204, 304):
        body = b""
    else:
        body = await reader.read()
        return Response(status, headers, body), False
    keep = headers.get("connection", "").lower() != "close"
    return Response(status, headers, body), keep
