"""Simulating a stored draft of a journey and its published version side by side: the journeys
service's simulator (the Simulate RPC, as POST /v1/simulations) run twice over the same synthetic leads
(same count, days and seed), and both funnels shown step by step. Editors and admins only."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.console.guard import guarded, mesh_of
from gateway.console.render import page
from gateway.console.session import Session
from gateway.deps import ApiError, Mesh
from gateway.routes import journeys as journeys_api
from gateway.shapes import TypedDict
from nurture.api.journeys.v1 import journeys_pb2
from nurture.jsontypes import JsonObject, JsonValue
from nurture.rpc import LONG_DEADLINE_S

router = APIRouter(prefix="/console", include_in_schema=False)

MEASURES = ("entered", "sent", "opened", "clicked", "converted", "exited")
# A console click runs two simulations; kept well under the RPC's budget so the page answers in seconds.
MAX_LEADS, MAX_DAYS = 5000, 365


@dataclass(frozen=True)
class Run:
    leads: int
    days: int
    seed: int

    @classmethod
    def from_form(cls, fields: dict[str, str]) -> Run:
        problems: list[str] = []

        def number(name: str, low: int, high: int, default: str) -> int:
            raw = (fields.get(name) or default).strip()
            try:
                value = int(raw)
            except ValueError:
                problems.append(f"{name} must be a whole number")
                return low
            if not low <= value <= high:
                problems.append(f"{name} must be between {low} and {high}")
            return value
        run = cls(leads=number("leads", 1, MAX_LEADS, "200"), days=number("days", 1, MAX_DAYS, "60"),
                  seed=number("seed", 0, 2**31 - 1, "1"))
        if problems:
            raise ApiError(422, "invalid", "; ".join(problems), {"problems": problems})
        return run


async def _simulate(m: Mesh, run: Run, key: str, version: int | None) -> JsonObject:
    """The journey's funnel in the journeys service's simulation report."""
    chosen: JsonValue = {"key": key, "version": version} if version else key
    body = {"journeys": [chosen], "leads": run.leads, "days": run.days, "seed": run.seed}
    reply = await journeys_api._stub(m).Simulate(journeys_pb2.SimulateRequest(request_json=json.dumps(body)),
                                                 timeout=LONG_DEADLINE_S)
    report: JsonObject = json.loads(reply.report_json)
    empty = {"enrolled": 0, "goals": 0, "completed": 0, "exited": 0, "exit_reasons": {}, "steps": []}
    funnel: JsonObject = report["journeys"].get(key) or empty
    return funnel


class StepRow(TypedDict):
    step: str
    draft: dict[str, int]       # measure → count
    published: dict[str, int]
    only: str   # draft | published: the funnel that has this step alone; "" for both


def side_by_side(draft: JsonObject, published: JsonObject) -> list[StepRow]:
    """One row per step of either funnel (the draft's order first, then steps only the published has),
    with each measure of both."""
    mine = {s["step"]: s for s in draft["steps"]}
    theirs = {s["step"]: s for s in published["steps"]}
    order = list(mine) + [s for s in theirs if s not in mine]
    return [{"step": s, "draft": {k: int(mine.get(s, {}).get(k, 0)) for k in MEASURES},
             "published": {k: int(theirs.get(s, {}).get(k, 0)) for k in MEASURES},
             "only": "draft" if s not in theirs else "published" if s not in mine else ""} for s in order]


def conversion(funnel: JsonObject) -> float | None:
    return round(funnel["goals"] / funnel["enrolled"], 4) if funnel["enrolled"] else None


@router.post("/journeys/{key}/simulate")
async def simulate(request: Request, key: str) -> Response:
    async def handler(_request: Request, current: Session) -> Response:
        fields = request.state.form
        run = Run.from_form(fields)
        try:
            version = int(fields.get("version", ""))
        except ValueError as exc:
            raise ApiError(422, "invalid", "choose a stored version to simulate") from exc
        if not 0 < version < 2**31:
            raise ApiError(422, "invalid", "choose a stored version to simulate")
        m = mesh_of(request)
        got = await journeys_api.get_journey(key, 0, m)
        if not got["published_version"]:
            raise ApiError(409, "not_published", f"{key} has no published version to compare with")
        draft, published = await asyncio.gather(_simulate(m, run, key, version), _simulate(m, run, key, None))
        return page("simulation.html", session=current, title=f"Simulate {key}", key=key, run=run,
                    version=version, published_version=got["published_version"], draft=draft,
                    published=published, rows=side_by_side(draft, published), measures=MEASURES,
                    conversions={"draft": conversion(draft), "published": conversion(published)})
    return await guarded(request, handler, needed="editor", form=True)
