"""A local ad platform that speaks the custom-audience subset the ads connector uses.

    NURTURE_ADS_TOKEN=... python -m services.messaging.ads_emulator --port 8092 [--data-dir data/ads]

Shaped like the custom-audience APIs of the big ad platforms (Meta's `/{audience}/users`, Google's
Customer Match): members are SHA-256 hashes of normalised email addresses, added and removed in batches.
- `POST /v1/customaudiences/{audience}/users` and `DELETE` the same path, body
  `{"payload": {"schema": "EMAIL_SHA256", "data": ["<64 hex>", ...]}}` (at most 10,000 entries) →
  `{"audience_id", "num_received", "num_invalid_entries"}`; `Authorization: Bearer <token>` required (401).
- `GET /v1/customaudiences/{audience}` → `{"audience_id", "approximate_count", "members": [...]}`.
- Faults for tests (`POST /_emulator/faults`): `{"mode": "ok" | "fail" | "429", "status": 503, "count": N}`;
  `GET /_emulator/stats` counts requests, faults and entries received.
State survives a restart: every change is appended to `<data-dir>/ads.jsonl` and replayed at start.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
HASH = re.compile(r"[0-9a-f]{64}")
PATH = re.compile(r"/v1/customaudiences/([A-Za-z0-9_.:-]{1,128})(/users)?")
MAX_ENTRIES = 10_000


class AdsEmulator:
    def __init__(self, token: str, data_dir: Path | None = None) -> None:
        self.token = token.encode()
        self.audiences: dict[str, set[str]] = {}
        self.fault: dict[str, Any] = {"mode": "ok"}
        self.stats = {"requests": 0, "faults": 0, "received": 0}
        self._log: Path | None = None
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            self._log = data_dir / "ads.jsonl"
            if self._log.exists():
                for line in self._log.read_text().splitlines():
                    entry = json.loads(line)
                    self._apply(entry["audience"], entry["op"], entry["data"], log=False)

    def _apply(self, audience: str, op: str, data: list[str], *, log: bool = True) -> None:
        members = self.audiences.setdefault(audience, set())
        if op == "add":
            members.update(data)
        else:
            members.difference_update(data)
        if log and self._log is not None:
            with self._log.open("a") as fh:
                fh.write(json.dumps({"audience": audience, "op": op, "data": data}) + "\n")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, answer = self.handle(scope["method"], scope["path"], dict(scope.get("headers") or []), body)
        payload = json.dumps(answer).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    def handle(self, method: str, path: str, headers: dict[bytes, bytes], body: bytes) -> tuple[int, Any]:
        if path.startswith("/_emulator/"):
            return self._control(method, path, body)
        self.stats["requests"] += 1
        given = headers.get(b"authorization", b"")
        if not (given.startswith(b"Bearer ") and hmac.compare_digest(given[7:], self.token)):
            return 401, {"error": {"message": "invalid access token", "code": 190}}
        if self.fault.get("mode") in ("fail", "429") and int(self.fault.get("count", 1)) > 0:
            self.fault["count"] = int(self.fault.get("count", 1)) - 1
            self.stats["faults"] += 1
            if self.fault["mode"] == "429":
                return 429, {"error": {"message": "too many calls", "code": 17}}
            return int(self.fault.get("status", 503)), {"error": {"message": "emulated failure", "code": 2}}
        match = PATH.fullmatch(path)
        if match is None:
            return 404, {"error": {"message": f"no route {method} {path}", "code": 100}}
        audience = match.group(1)
        if method == "GET" and not match.group(2):
            members = sorted(self.audiences.get(audience, set()))
            return 200, {"audience_id": audience, "approximate_count": len(members), "members": members}
        if method not in ("POST", "DELETE") or not match.group(2):
            return 405, {"error": {"message": "use POST or DELETE on /users", "code": 100}}
        try:
            payload = json.loads(body or b"{}")["payload"]
            schema, data = payload["schema"], payload["data"]
        except (ValueError, KeyError, TypeError):
            return 400, {"error": {"message": "body must be {payload: {schema, data}}", "code": 100}}
        if schema != "EMAIL_SHA256" or not isinstance(data, list):
            return 400, {"error": {"message": "schema must be EMAIL_SHA256 and data a list", "code": 100}}
        if len(data) > MAX_ENTRIES:
            return 400, {"error": {"message": f"at most {MAX_ENTRIES} entries per call", "code": 100}}
        valid = [d for d in data if isinstance(d, str) and HASH.fullmatch(d)]
        self.stats["received"] += len(data)
        self._apply(audience, "add" if method == "POST" else "remove", valid)
        return 200, {"audience_id": audience, "num_received": len(data), "num_invalid_entries": len(data) - len(valid)}

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if path == "/_emulator/faults" and method == "POST":
            fault = json.loads(body or b"{}")
            if fault.get("mode") not in ("ok", "fail", "429"):
                return 400, {"error": {"message": "mode must be ok, fail or 429"}}
            self.fault = fault
            return 200, fault
        if path == "/_emulator/stats":
            return 200, {**self.stats, "audiences": {a: len(m) for a, m in self.audiences.items()}}
        return 404, {"error": {"message": f"no route {method} {path}"}}


def main(argv: list[str] | None = None) -> int:
    from nurture.listen import serve_asgi

    parser = argparse.ArgumentParser(prog="ads-emulator", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8092)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    token = os.environ.get("NURTURE_ADS_TOKEN", "")
    if not token:
        parser.error("NURTURE_ADS_TOKEN must hold the access token callers present")
    app = AdsEmulator(token, Path(args.data_dir) if args.data_dir else None)
    # A port in use is tried again for a few seconds (nurture.listen), then named.
    serve_asgi("ads emulator", app, args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
