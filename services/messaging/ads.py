"""The ads connector: audience changes reach the ad platform's custom audiences (the seed's Email +
Retargeting coordination: "conversion in either channel updates status across platforms").

Changes are rows of `messaging_ads_outbox`, written in the same transaction as the membership change or
the suppression that causes them, so none is lost. `push_due` sends them in id order, grouping each
contiguous run of one audience and direction into one call (normalised, SHA-256-hashed emails, at most
BATCH per call), as custom-audience APIs take them. A 429, a 5xx or no answer is retried with backoff;
another 4xx is dead-lettered with the platform's message. Adds and removes of one lead keep their order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import httpx

from nurture.db import Database
from services.messaging.storage import AdsJob, AdsResult, Store

log = logging.getLogger(__name__)
BATCH = 1000
MAX_ATTEMPTS = 8
BACKOFF_S = (5, 30, 120, 600, 1800, 3600, 3600)


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=BACKOFF_S[min(attempts - 1, len(BACKOFF_S) - 1)])


class AdsConnector:
    def __init__(self, *, db: Database, store: Store, base_url: str, token: str,
                 now: Callable[[], datetime], client: httpx.AsyncClient | None = None) -> None:
        self._db = db
        self._store = store
        self._base = base_url.rstrip("/")
        self._token = token
        self._now = now
        self._client = client or httpx.AsyncClient(timeout=10)

    async def close(self) -> None:
        await self._client.aclose()

    async def push_due(self, limit: int = 5000) -> int:
        """Send every change due now; returns how many were tried."""
        if not self._base:
            return 0
        now = self._now()
        jobs = await self._db.run(self._store.ads_due, now, limit)
        outcomes: list[AdsResult] = []
        run: list[AdsJob] = []
        for job in [*jobs, None]:
            if run and (job is None or (job.audience, job.op) != (run[0].audience, run[0].op)
                        or len(run) >= BATCH):
                sent = await self._send(run, now)
                outcomes += sent
                run = []
                if any(o.status == "pending" for o in sent):
                    break  # strict order: what follows waits behind the retry (ads_due stops at it too)
            if job is not None:
                run.append(job)
        await self._db.run(self._store.ads_finish, outcomes)
        return len(outcomes)

    async def _send(self, run: list[AdsJob], now: datetime) -> list[AdsResult]:
        audience, op = run[0].audience, run[0].op
        data = sorted({j.email_hash for j in run})
        url = f"{self._base}/v1/customaudiences/{audience}/users"
        body = {"payload": {"schema": "EMAIL_SHA256", "data": data}}
        error: str | None
        try:
            response = await self._client.request("POST" if op == "add" else "DELETE", url, json=body,
                                                  headers={"Authorization": f"Bearer {self._token}"})
            status, error = response.status_code, None if response.status_code < 300 else response.text[:300]
        except httpx.HTTPError as exc:
            status, error = 0, f"{type(exc).__name__}: {exc}"[:300]
        out: list[AdsResult] = []
        for j in run:
            attempts = int(j.attempts) + 1
            if status and status < 300:
                out.append(AdsResult(j.id, "done", attempts, now, None))
            elif (status == 0 or status == 429 or status >= 500) and attempts < MAX_ATTEMPTS:
                out.append(AdsResult(j.id, "pending", attempts, now + backoff(attempts), f"{status}: {error}"))
            else:
                out.append(AdsResult(j.id, "dead", attempts, now, f"{status}: {error}"))
        if status and status < 300:
            log.info("ads: %s %d to %s", op, len(data), audience)
        else:
            log.warning("ads: %s %d to %s failed (%s): %s", op, len(data), audience, status, error)
        return out
