"""messaging's Deliverability gRPC methods: proto in, application call, proto out."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from nurture import errors
from nurture.api.messaging.v1 import deliverability_pb2, deliverability_pb2_grpc
from nurture.rpcguard import guard_requests
from services.messaging.app.deliverability import Deliverability
from services.messaging.domain.bounces import Report, guard, status_in
from services.messaging.domain.dkim import DkimKey

KINDS = {"hard_bounce", "soft_bounce", "complaint", "delivered"}


def dkim_records(keys: Sequence[DkimKey], signing: Sequence[DkimKey]) -> list[deliverability_pb2.DkimRecord]:
    """Every configured key's record, the signing ones first (the others stay published in a rotation)."""
    ordered = list(signing) + [k for k in keys if k not in signing]
    return [deliverability_pb2.DkimRecord(domain=k.domain, selector=k.selector, dns_txt=k.dns_txt,
                                          signing=k in signing) for k in ordered]


@guard_requests()
class DeliverabilityServicer(deliverability_pb2_grpc.DeliverabilityServicer):
    def __init__(self, app: Deliverability, bounce_smtp: str) -> None:
        self.app = app
        self.bounce_smtp = bounce_smtp

    async def Get(self, request: deliverability_pb2.DeliverabilityRequest, context: grpc.aio.ServicerContext
                  ) -> deliverability_pb2.DeliverabilityReply:
        app = self.app
        now = app.now()
        reply = deliverability_pb2.DeliverabilityReply(
            dkim=dkim_records(app.dkim.keys, list(app.dkim.signing.values())), bounce_smtp=self.bounce_smtp,
            bounce_domain=app.bounce_domain, window_days=app.policy.window_days)
        for (domain, provider), counts in sorted((await app.rates(now)).items()):
            verdict = guard(counts, app.policy)
            reply.rates.append(deliverability_pb2.ProviderRate(
                domain=domain, provider=provider, sent=counts.sent, bounced_hard=counts.hard,
                bounced_soft=counts.soft, complaints=counts.complaints,
                complaint_rate=counts.rate(counts.complaints), hard_bounce_rate=counts.rate(counts.hard),
                warnings=list(verdict.warnings)))
        for pause in await app.pauses():
            item = reply.paused.add(provider=pause.provider, why=pause.why)
            item.since.FromDatetime(pause.since)
        for domain, day, limit, sent in await app.warmup_state(now):
            reply.warmup.add(domain=domain, day=day, limit=limit, sent_today=sent)
        return reply

    async def Resume(self, request: deliverability_pb2.ResumeRequest, context: grpc.aio.ServicerContext
                     ) -> deliverability_pb2.ResumeReply:
        if not request.provider:
            raise errors.InvalidArgument("provider is required", details={"fields": {"provider": "required"}})
        known = sorted({*self.app.policy.providers, "other"})
        if request.provider not in known:
            # A provider that is none of deliverability.yaml's is never paused: resuming it did nothing.
            raise errors.invalid_fields({"provider": f"must be one of {', '.join(known)}"})
        return deliverability_pb2.ResumeReply(was_paused=await self.app.resume(request.provider, request.by))

    async def ReportEvents(self, request: deliverability_pb2.ReportEventsRequest,
                           context: grpc.aio.ServicerContext) -> deliverability_pb2.ReportEventsReply:
        reports: list[tuple[str, Report]] = []
        ignored: list[str] = []
        for index, event in enumerate(request.events):
            if event.kind not in KINDS:
                ignored.append(f"{index}: kind must be one of {', '.join(sorted(KINDS))}")
            elif not event.message_id:
                ignored.append(f"{index}: message_id is required")
            elif event.kind != "delivered":  # delivery was recorded when our SMTP server accepted it
                detail = event.detail[:500]
                reports.append((event.message_id, Report(event.kind, event.recipient.lower(), status_in(detail),  # type: ignore[arg-type]
                                                         detail, event.message_id)))
        applied = await self.app.apply(reports, source=(request.source or "webhook")[:64]) if reports else None
        return deliverability_pb2.ReportEventsReply(
            applied=applied.applied if applied else 0, ignored=ignored + (applied.ignored if applied else []))
