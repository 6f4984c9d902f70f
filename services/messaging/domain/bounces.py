"""Bounces and complaints as they arrive by mail, and the guards over their rates. Pure.

- VERP (variable envelope return path): every message's envelope sender is
  `bounces+<message id>.<mac>@<bounce domain>`, so a bounce names the message it is about by the
  address it was sent to, whatever its body says; the MAC (HMAC of the id with the link secret) keeps a
  stranger from suppressing an address by mailing a forged bounce to a guessed id.
- `read_report` reads a delivery status notification (RFC 3464: multipart/report;
  report-type=delivery-status) and an abuse feedback report (RFC 5965, ARF: multipart/report;
  report-type=feedback-report) with the standard library's `email` package, which parses both into
  their parts (a message/delivery-status part is a list of header blocks).
- `guard` turns rolling counts into warnings and pauses by the thresholds in deliverability.yaml.
"""

from __future__ import annotations

import email
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from email import policy as email_policy
from email.message import Message
from pathlib import Path
from typing import Literal

from pydantic import Field

from nurture.datafiles import Seconds, Strict, WholeAtLeast1, load

DELIVERABILITY_FILE = Path(__file__).parents[1] / "data" / "deliverability.yaml"
Kind = Literal["hard_bounce", "soft_bounce", "complaint", "delayed"]
_VERP = re.compile(r"^bounces\+(m[0-9a-f]{32})\.([a-z0-9]{12})@", re.IGNORECASE)
_MESSAGE_HEADER = re.compile(rb"^X-Nurture-Message:\s*(m[0-9a-f]{32})\s*$", re.IGNORECASE | re.MULTILINE)
_RETURN_PATH = re.compile(rb"^Return-Path:\s*<?([^<>\s]+@[^<>\s]+)>?\s*$", re.IGNORECASE | re.MULTILINE)
# An enhanced status code (RFC 3463: class.subject.detail) as a provider's webhook quotes it in its text,
# e.g. SendGrid's reason "550 5.1.1 The email account that you tried to reach does not exist".
_ENHANCED_STATUS = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.])")


class Rates(Strict):
    complaint_rate: float = Field(ge=0, le=1)
    hard_bounce_rate: float = Field(ge=0, le=1)


class SoftBounce(Strict):
    retry_after_s: Seconds = 3600.0
    suppress_after: WholeAtLeast1 = 3
    window_days: WholeAtLeast1 = 30


class WarmupStep(Strict):
    day: WholeAtLeast1
    limit: WholeAtLeast1


class Warmup(Strict):
    domains: list[str] = []
    schedule: list[WarmupStep] = []


class DeliverabilityPolicy(Strict):
    """deliverability.yaml (its comments say what each value means)."""

    providers: dict[str, list[str]] = {}
    window_days: WholeAtLeast1 = 7
    min_sent: int = Field(default=200, ge=0)
    warn: Rates = Rates(complaint_rate=0.001, hard_bounce_rate=0.02)
    pause: Rates = Rates(complaint_rate=0.003, hard_bounce_rate=0.05)
    paused_recheck_s: Seconds = 3600.0
    soft_bounce: SoftBounce = SoftBounce()
    warmup: Warmup = Warmup()

    def provider_of(self, address: str) -> str:
        domain = address.rpartition("@")[2].strip().lower()
        for name, domains in self.providers.items():
            if domain in domains:
                return name
        return "other"

    def warming(self, domain: str) -> bool:
        return domain.lower() in {d.lower() for d in self.warmup.domains}

    def ramp_limit(self, day: int) -> int:
        """Nurture emails a warming domain may send on `day` of its ramp (1 = its first day of sending):
        the limit of the latest step on or before that day (the first step's before it); 0 = no limit,
        once the last step's day is over."""
        steps = sorted(self.warmup.schedule, key=lambda s: s.day)
        if not steps or day > steps[-1].day:
            return 0
        limit = steps[0].limit
        for step in steps:
            if step.day <= day:
                limit = step.limit
        return limit


def load_deliverability(path: Path = DELIVERABILITY_FILE) -> DeliverabilityPolicy:
    """The policy file; a DataFileError naming it and every problem when it cannot be used."""
    return load(DeliverabilityPolicy, path)


# --- VERP ------------------------------------------------------------------------------------------
def _mac(secret: str, message_id: str) -> str:
    digest = hmac.new(secret.encode(), f"verp:{message_id}".encode(), hashlib.sha256).hexdigest()
    return digest[:12]


def verp_address(message_id: str, secret: str, domain: str) -> str:
    """The envelope sender of one message (its bounces come back to it)."""
    return f"bounces+{message_id}.{_mac(secret, message_id)}@{domain}"


def verp_message(address: str, secrets: tuple[str, ...]) -> str | None:
    """The message id a bounce address names, when its MAC verifies with one of the secrets."""
    match = _VERP.match(address.strip().strip("<>"))
    if not match:
        return None
    mid, mac = match.group(1).lower(), match.group(2).lower()
    if any(secret and hmac.compare_digest(_mac(secret, mid), mac) for secret in secrets):
        return mid
    return None


# --- reports -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Report:
    """One recipient's outcome read from a report."""

    kind: Kind
    recipient: str = ""
    status: str = ""            # the enhanced status code, 5.1.1
    detail: str = ""            # the diagnostic code or feedback type, for the timeline
    message_id: str = ""        # ours, from the returned message's X-Nurture-Message header
    return_path: str = ""       # the returned message's Return-Path (our VERP address, when it is ours)


@dataclass
class ReadReport:
    reports: list[Report] = field(default_factory=list)
    problem: str = ""           # why nothing could be read (not a report, no recipient block)


def status_in(text: str) -> str:
    """The first enhanced status code quoted in `text` (a webhook's reason or diagnostic), or "": a
    webhook carries no status field of its own, and the timeline names the code where there is one."""
    match = _ENHANCED_STATUS.search(text)
    return match.group(1) if match else ""


def read_report(data: bytes) -> ReadReport:
    """The outcomes a DSN or an ARF report carries; a message of another kind reads as a problem."""
    msg = email.message_from_bytes(data, policy=email_policy.compat32)
    if msg.get_content_type() != "multipart/report":
        return ReadReport(problem=f"not a report: {msg.get_content_type()}")
    report_type = (msg.get_param("report-type") or "")
    report_type = report_type.lower() if isinstance(report_type, str) else ""
    returned = _returned_id(msg)
    if report_type == "delivery-status":
        return _dsn(msg, returned)
    if report_type == "feedback-report":
        return _arf(msg, returned)
    return ReadReport(problem=f"unknown report-type {report_type or '(none)'}")


def _returned_id(msg: Message) -> tuple[str, str]:
    """(our message id, its Return-Path) from the returned message or its headers (message/rfc822,
    text/rfc822-headers); "" for what is not there."""
    for part in msg.walk():
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers"):
            payload = part.get_payload()
            if isinstance(payload, list):
                raw = b"".join(p.as_bytes() for p in payload if isinstance(p, Message))
            else:
                decoded = part.get_payload(decode=True)
                raw = decoded if isinstance(decoded, bytes) else str(payload).encode("utf-8", "replace")
            head = raw.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
            found = _MESSAGE_HEADER.search(head)
            path = _RETURN_PATH.search(head)
            if found or path:
                return (found.group(1).decode().lower() if found else "",
                        path.group(1).decode("ascii", "replace") if path else "")
    return "", ""


def _blocks(msg: Message, content_type: str) -> list[Message]:
    for part in msg.walk():
        if part.get_content_type() == content_type:
            payload = part.get_payload()
            if isinstance(payload, list):
                return [p for p in payload if isinstance(p, Message)]
            # Some senders put the blocks in as text: parse them as header blocks ourselves.
            text = str(payload)
            return [email.message_from_string(b.strip() + "\n") for b in re.split(r"\r?\n\r?\n", text) if b.strip()]
    return []


def _value(block: Message, name: str) -> str:
    raw = block.get(name, "")
    value = str(raw).strip()
    # "rfc822; ana@example.com", "smtp; 550 5.1.1 no such user": the type prefix is not the value.
    value = value.split(";", 1)[1].strip() if ";" in value and name.lower() != "action" else value
    return value.strip("<>") if name.lower().endswith(("recipient", "rcpt-to")) else value


def _dsn(msg: Message, returned: tuple[str, str]) -> ReadReport:
    blocks = _blocks(msg, "message/delivery-status")
    out = ReadReport()
    for block in blocks[1:] if len(blocks) > 1 else blocks:   # the first block is per-message
        action = _value(block, "Action").lower()
        status = _value(block, "Status")
        recipient = _value(block, "Final-Recipient") or _value(block, "Original-Recipient")
        if not action and not recipient:
            continue
        detail = _value(block, "Diagnostic-Code") or status
        kind: Kind | None = None
        if action == "delayed":
            kind = "delayed"
        elif action == "failed":
            kind = "hard_bounce" if status.startswith("5") else "soft_bounce"
        if kind is not None:
            out.reports.append(Report(kind, recipient.lower(), status, detail[:500], *returned))
    if not out.reports:
        out.problem = "a delivery status notification without a failed or delayed recipient"
    return out


def _arf(msg: Message, returned: tuple[str, str]) -> ReadReport:
    blocks = _blocks(msg, "message/feedback-report")
    if not blocks:
        return ReadReport(problem="a feedback report without its message/feedback-report part")
    block = blocks[0]
    feedback_type = str(block.get("Feedback-Type", "")).strip().lower()
    if feedback_type not in ("abuse", "fraud", "virus", "other", "not-spam", "auth-failure"):
        return ReadReport(problem=f"unknown Feedback-Type {feedback_type or '(none)'}")
    if feedback_type == "not-spam":
        return ReadReport(problem="a not-spam report is no complaint")
    recipient = _value(block, "Original-Rcpt-To")
    return ReadReport([Report("complaint", recipient.lower(), "", f"feedback: {feedback_type}", *returned)])


# --- guards ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Counts:
    sent: int = 0
    hard: int = 0
    soft: int = 0
    complaints: int = 0

    def rate(self, n: int) -> float:
        return n / self.sent if self.sent else 0.0


@dataclass(frozen=True)
class Verdict:
    warnings: tuple[str, ...]
    pause: str              # why sends should pause, "" when they need not


def guard(counts: Counts, policy: DeliverabilityPolicy) -> Verdict:
    """Warnings above the warn thresholds, and a pause at or above the pause thresholds; nothing over
    fewer than `min_sent` sends."""
    if counts.sent < max(1, policy.min_sent):
        return Verdict((), "")
    complaint, hard = counts.rate(counts.complaints), counts.rate(counts.hard)
    warnings = []
    if complaint > policy.warn.complaint_rate:
        warnings.append(f"complaint rate {complaint:.2%} above {policy.warn.complaint_rate:.2%}")
    if hard > policy.warn.hard_bounce_rate:
        warnings.append(f"hard-bounce rate {hard:.2%} above {policy.warn.hard_bounce_rate:.2%}")
    why = ""
    if complaint >= policy.pause.complaint_rate:
        why = f"complaint rate {complaint:.2%} at or above {policy.pause.complaint_rate:.2%}"
    elif hard >= policy.pause.hard_bounce_rate:
        why = f"hard-bounce rate {hard:.2%} at or above {policy.pause.hard_bounce_rate:.2%}"
    return Verdict(tuple(warnings), why)
