"""A local CRM that speaks the subset of HubSpot's CRM v3 objects API the connector uses.

    python -m services.crm_sync.emulator --port 8090 --data-dir data/crm

It is a real HTTP server (a plain ASGI app on uvicorn) used by `nurture up` and by the tests:
- objects `contacts`, `tasks`, `notes`, `deals`: create (`POST /crm/v3/objects/<type>`, also `/batch/create`), read
  (`GET .../<id>`, contacts also `?idProperty=email`), update (`PATCH .../<id>`, also `POST .../batch/update`
  with `inputs: [{id, properties}]`: all or nothing, an unknown id or a taken email refuses the whole batch as
  PATCH would refuse that one; each update counts as a write), archive (`DELETE .../<id>`),
  list (`GET /crm/v3/objects/<type>?limit=&after=`) and search (`POST .../search`, EQ filters);
- associations: created with the object (`associations: [{to: {id}, types: [...]}]`) or with
  `PUT /crm/v3/objects/<type>/<id>/associations/<to_type>/<to_id>/<assoc_type>`, read with
  `GET /crm/v3/objects/<type>/<id>/associations/<to_type>`;
- HubSpot's error shape (`{"status": "error", "message", "category"}`), 409 on a second contact with the same
  email ("Contact already exists. Existing ID: N"), 404 on unknown ids, 400 on malformed bodies.

Faults for tests and benchmarks (`POST /_emulator/faults`): `{"mode": "ok" | "fail" | "429" | "down" | "slow",
"status": 503, "retry_after": 2, "count": N, "delay": 1.5}`: `fail` answers `status`, `429` answers rate
limited with Retry-After, `down` accepts and never answers (the client times out; `delay`, default 60 s),
`slow` sleeps `delay` seconds first;
`count` limits the fault to the next N object requests. `GET /_emulator/stats` reports object counts and the
times of the first and last successful write; `GET /_emulator/requests` the recent request log.

State survives a restart: every write is appended to `<data-dir>/crm.jsonl` and replayed at start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

OBJECT_TYPES = ("contacts", "tasks", "notes", "deals")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class HttpError(Exception):
    def __init__(self, status: int, message: str, category: str = "VALIDATION_ERROR") -> None:
        super().__init__(message)
        self.status = status
        self.category = category


class CrmState:
    """Objects, associations and the write log."""

    def __init__(self, data_dir: Path | None) -> None:
        self.objects: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in OBJECT_TYPES}
        self.assoc: dict[tuple[str, str, str], set[str]] = {}
        self.by_email: dict[str, str] = {}
        self.next_id = 1001
        self._log = None
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            path = data_dir / "crm.jsonl"
            if path.exists():
                for line in path.read_text().splitlines():
                    if line.strip():
                        try:
                            self._apply(json.loads(line))
                        except (ValueError, KeyError):
                            break  # a torn last line after a kill: everything before it is kept
            self._log = path.open("a", buffering=1)

    def _write(self, record: dict[str, Any]) -> None:
        self._apply(record)
        if self._log is not None:
            self._log.write(json.dumps(record, separators=(",", ":")) + "\n")

    def _apply(self, r: dict[str, Any]) -> None:
        op = r["op"]
        if op == "put":
            obj = r["obj"]
            old = self.objects[r["type"]].get(obj["id"])
            self.objects[r["type"]][obj["id"]] = obj
            self.next_id = max(self.next_id, int(obj["id"]) + 1)
            if r["type"] == "contacts":
                if old and old["properties"].get("email"):
                    self.by_email.pop(str(old["properties"]["email"]).lower(), None)
                if obj["properties"].get("email") and not obj.get("archived"):
                    self.by_email[str(obj["properties"]["email"]).lower()] = obj["id"]
        elif op == "assoc":
            self.assoc.setdefault((r["from_type"], r["from_id"], r["to_type"]), set()).add(r["to_id"])
            self.assoc.setdefault((r["to_type"], r["to_id"], r["from_type"]), set()).add(r["from_id"])

    def new_id(self) -> str:
        value = self.next_id
        self.next_id += 1
        return str(value)

    def get(self, otype: str, oid: str) -> dict[str, Any]:
        obj = self.objects[otype].get(oid)
        if obj is None or obj.get("archived"):
            raise HttpError(404, f"resource not found: {otype} {oid}", "OBJECT_NOT_FOUND")
        return obj

    def create(self, otype: str, body: dict[str, Any], now: str) -> dict[str, Any]:
        props = _properties(body)
        if otype == "contacts" and props.get("email"):
            existing = self.by_email.get(str(props["email"]).lower())
            if existing is not None:
                raise HttpError(409, f"Contact already exists. Existing ID: {existing}", "CONFLICT")
        assocs = body.get("associations") or []
        targets = []
        for a in assocs if isinstance(assocs, list) else []:
            to_id = str(((a or {}).get("to") or {}).get("id", ""))
            to_type = _assoc_target_type(a)
            if to_type is None or to_id not in self.objects[to_type]:
                raise HttpError(400, f"association target {to_id} not found")
            targets.append((to_type, to_id))
        oid = self.new_id()
        obj = {"id": oid, "properties": {**props, "hs_object_id": oid, "createdate": now, "hs_lastmodifieddate": now},
               "createdAt": now, "updatedAt": now, "archived": False}
        self._write({"op": "put", "type": otype, "obj": obj})
        for to_type, to_id in targets:
            self._write({"op": "assoc", "from_type": otype, "from_id": oid, "to_type": to_type, "to_id": to_id})
        return obj

    def check_update(self, otype: str, oid: str, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The object and the properties an update would write, or the HttpError it would meet."""
        obj = self.get(otype, oid)
        props = _properties(body)
        if otype == "contacts" and props.get("email"):
            existing = self.by_email.get(str(props["email"]).lower())
            if existing is not None and existing != oid:
                raise HttpError(409, f"Contact already exists. Existing ID: {existing}", "CONFLICT")
        return obj, props

    def update(self, otype: str, oid: str, body: dict[str, Any], now: str) -> dict[str, Any]:
        obj, props = self.check_update(otype, oid, body)
        merged = {**obj["properties"], **props, "hs_lastmodifieddate": now}
        new = {**obj, "properties": merged, "updatedAt": now}
        self._write({"op": "put", "type": otype, "obj": new})
        return new

    def archive(self, otype: str, oid: str, now: str) -> None:
        obj = self.get(otype, oid)
        self._write({"op": "put", "type": otype, "obj": {**obj, "archived": True, "updatedAt": now}})

    def associate(self, otype: str, oid: str, to_type: str, to_id: str) -> None:
        self.get(otype, oid)
        self.get(to_type, to_id)
        self._write({"op": "assoc", "from_type": otype, "from_id": oid, "to_type": to_type, "to_id": to_id})


def _assoc_target_type(a: dict[str, Any]) -> str | None:
    # HubSpot identifies the target type by the association type id; the emulator also accepts an
    # explicit `toObjectType` for readability. 202/204/200-ish ids below follow HubSpot's defaults.
    explicit = a.get("toObjectType") or (a.get("to") or {}).get("type")
    if explicit in OBJECT_TYPES:
        return str(explicit)
    for t in a.get("types") or []:
        type_id = int((t or {}).get("associationTypeId", 0) or 0)
        if type_id in (202, 204):  # note→contact, task→contact
            return "contacts"
        if type_id in (228,):  # note→task (emulator extension)
            return "tasks"
    return None


def _properties(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("properties", {}), dict):
        raise HttpError(400, "Invalid input JSON: 'properties' must be an object")
    props = body.get("properties") or {}
    for key, value in props.items():
        if not isinstance(key, str) or not re.fullmatch(r"[a-z0-9_]{1,100}", key):
            raise HttpError(400, f"Property \"{key}\" does not exist")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise HttpError(400, f"Property values must be scalars: {key}")
    return {k: ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v)) for k, v in props.items()}


class Emulator:
    """The ASGI application."""

    def __init__(self, data_dir: Path | None) -> None:
        self.state = CrmState(data_dir)
        self.fault: dict[str, Any] = {"mode": "ok"}
        self.stats: dict[str, Any] = {"requests": 0, "writes": 0, "faults": 0, "first_write": None,
                                      "last_write": None}
        self.log: deque[dict[str, Any]] = deque(maxlen=2000)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
        try:
            status, payload = await self._route(method, path, query, body, headers)
        except HttpError as exc:
            status, payload = exc.status, {"status": "error", "message": str(exc), "category": exc.category}
        if not path.startswith("/_emulator"):
            self.log.append({"method": method, "path": path, "status": status, "at": time.time()})
        data = b"" if status == 204 else json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _route(
        self, method: str, path: str, query: dict[str, str], raw: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, Any]:
        if path.startswith("/_emulator/"):
            return self._control(method, path, raw)
        self.stats["requests"] += 1
        await self._inject_fault(headers)
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise HttpError(400, "Invalid input JSON on line 1") from exc
        parts = [p for p in path.split("/") if p]
        if parts[:3] != ["crm", "v3", "objects"] or len(parts) < 4 or parts[3] not in OBJECT_TYPES:
            raise HttpError(404, f"no route {method} {path}", "NOT_FOUND")
        otype, rest, now = parts[3], parts[4:], _now()
        st = self.state
        if not rest:
            if method == "POST":
                obj = st.create(otype, body, now)
                self._wrote()
                return 201, obj
            if method == "GET":
                return 200, self._list(otype, query)
        elif rest == ["search"] and method == "POST":
            return 200, self._search(otype, body)
        elif rest == ["batch", "create"] and method == "POST":
            inputs = (body or {}).get("inputs") if isinstance(body, dict) else None
            if not isinstance(inputs, list):
                raise HttpError(400, "'inputs' must be a list")
            results = [st.create(otype, i, now) for i in inputs]
            self._wrote(len(results))
            return 201, {"status": "COMPLETE", "results": results}
        elif rest == ["batch", "update"] and method == "POST":
            inputs = (body or {}).get("inputs") if isinstance(body, dict) else None
            if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
                raise HttpError(400, "'inputs' must be a list of objects")
            ids = [str(i.get("id", "")) for i in inputs]
            if len(set(ids)) != len(ids):
                raise HttpError(400, "Duplicate IDs found in batch input")
            taken: dict[str, str] = {}  # email -> the batch's contact taking it
            for oid, i in zip(ids, inputs, strict=True):  # all checked before any is written
                _, props = st.check_update(otype, oid, i)
                email = str(props.get("email") or "").lower() if otype == "contacts" else ""
                if email and taken.setdefault(email, oid) != oid:
                    raise HttpError(409, f"Contact already exists. Existing ID: {taken[email]}", "CONFLICT")
            results = [st.update(otype, oid, i, now) for oid, i in zip(ids, inputs, strict=True)]
            self._wrote(len(results))
            return 200, {"status": "COMPLETE", "results": results}
        elif len(rest) == 1:
            oid = rest[0]
            if otype == "contacts" and query.get("idProperty") == "email":
                found = st.by_email.get(oid.lower())
                if found is None:
                    raise HttpError(404, f"resource not found: contact {oid}", "OBJECT_NOT_FOUND")
                oid = found
            if method == "GET":
                return 200, st.get(otype, oid)
            if method == "PATCH":
                obj = st.update(otype, oid, body, now)
                self._wrote()
                return 200, obj
            if method == "DELETE":
                st.archive(otype, oid, now)
                self._wrote()
                return 204, None
        elif len(rest) == 3 and rest[1] == "associations" and method == "GET":
            ids = sorted(st.assoc.get((otype, rest[0], rest[2]), set()), key=int)
            return 200, {"results": [{"toObjectId": i, "associationTypes": []} for i in ids]}
        elif len(rest) == 5 and rest[1] == "associations" and method == "PUT":
            if rest[2] not in OBJECT_TYPES:
                raise HttpError(400, f"unknown object type {rest[2]}")
            st.associate(otype, rest[0], rest[2], rest[3])
            self._wrote()
            return 200, {"fromObjectId": rest[0], "toObjectId": rest[3]}
        raise HttpError(405 if parts else 404, f"no route {method} {path}", "NOT_FOUND")

    def _wrote(self, n: int = 1) -> None:
        self.stats["writes"] += n
        now = time.time()
        self.stats["first_write"] = self.stats["first_write"] or now
        self.stats["last_write"] = now

    async def _inject_fault(self, headers: list[tuple[bytes, bytes]]) -> None:
        fault = self.fault
        mode = fault.get("mode", "ok")
        if mode == "ok":
            return
        if fault.get("count") is not None:
            if fault["count"] <= 0:
                self.fault = {"mode": "ok"}
                return
            fault["count"] -= 1
        self.stats["faults"] += 1
        if mode == "slow":
            await asyncio.sleep(float(fault.get("delay", 2.0)))
            return
        if mode == "down":
            # A CRM that accepts the connection and never answers: the client's timeout decides.
            await asyncio.sleep(float(fault.get("delay", 60.0)))
            raise HttpError(504, "gateway timeout", "INTERNAL_ERROR")
        if mode == "429":
            headers.append((b"retry-after", str(fault.get("retry_after", 1)).encode()))
            raise HttpError(429, "You have reached your secondly limit.", "RATE_LIMITS")
        if mode == "fail":
            if fault.get("retry_after") is not None:
                headers.append((b"retry-after", str(fault["retry_after"]).encode()))
            raise HttpError(int(fault.get("status", 503)), "emulated failure", "INTERNAL_ERROR")

    def _control(self, method: str, path: str, raw: bytes) -> tuple[int, Any]:
        if path == "/_emulator/faults" and method == "POST":
            fault = json.loads(raw or b"{}")
            if fault.get("mode") not in ("ok", "fail", "429", "down", "slow"):
                raise HttpError(400, "mode must be ok, fail, 429, down or slow")
            self.fault = fault
            return 200, self.fault
        if path == "/_emulator/stats":
            counts = {t: sum(1 for o in objs.values() if not o.get("archived"))
                      for t, objs in self.state.objects.items()}
            return 200, {**self.stats, "objects": counts}
        if path == "/_emulator/requests":
            return 200, {"requests": list(self.log)}
        if path == "/_emulator/reset-stats" and method == "POST":
            self.stats.update(requests=0, writes=0, faults=0, first_write=None, last_write=None)
            self.log.clear()
            return 200, self.stats
        raise HttpError(404, f"no route {method} {path}", "NOT_FOUND")

    def _list(self, otype: str, query: dict[str, str]) -> dict[str, Any]:
        limit = max(1, min(int(query.get("limit", "100") or 100), 1000))
        after = int(query.get("after", "0") or 0)
        live = sorted((o for o in self.state.objects[otype].values() if not o.get("archived")),
                      key=lambda o: int(o["id"]))
        page = [o for o in live if int(o["id"]) > after][:limit]
        out: dict[str, Any] = {"results": page}
        if len(page) == limit and int(page[-1]["id"]) < int(live[-1]["id"]):
            out["paging"] = {"next": {"after": page[-1]["id"]}}
        return out

    def _search(self, otype: str, body: Any) -> dict[str, Any]:
        groups = (body or {}).get("filterGroups") if isinstance(body, dict) else None
        if not isinstance(groups, list):
            raise HttpError(400, "'filterGroups' must be a list")
        results = []
        for obj in self.state.objects[otype].values():
            if obj.get("archived"):
                continue
            for group in groups or [{"filters": []}]:
                filters = (group or {}).get("filters") or []
                if all(f.get("operator", "EQ") == "EQ"
                       and str(obj["properties"].get(f.get("propertyName"), "")).lower() == str(f.get("value")).lower()
                       for f in filters):
                    results.append(obj)
                    break
        results.sort(key=lambda o: int(o["id"]))
        return {"total": len(results), "results": results[: int((body or {}).get("limit", 100) or 100)]}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"


def main(argv: list[str] | None = None) -> int:
    from nurture.listen import serve_asgi

    parser = argparse.ArgumentParser(prog="crm-emulator", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    app = Emulator(Path(args.data_dir) if args.data_dir else None)
    # A port in use is tried again for a few seconds (nurture.listen), then named.
    serve_asgi("crm emulator", app, args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
