"""What scoring accepts: a lead's profile fields and an event, checked before anything is written."""

from __future__ import annotations

import re
from collections.abc import Collection
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from nurture import jsoncodec
from nurture.jsontypes import JsonMapping
from services.scoring.domain.addresses import check_email
from services.scoring.domain.records import EventIn

EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]{0,63}")
LEAD_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
PROFILE_FIELDS = ("email", "first_name", "last_name", "segment", "timezone", "locale", "crm_id")
# The channels a lead consents to (those messaging asks about; `subscribed`'s channel names the same). Any
# other key was kept and read by nothing: `{"Email": true}` stored a lead that was never mailed.
CONSENT_CHANNELS = ("email", "sms", "in_app")
# Sizes a person's record can sensibly have. Names go into mail headers (SMTP lines stop at 998
# octets: a 50k-character first name made every email fail) and every lead snapshot rides on each
# bus message, so one oversized attribute slows every service; HubSpot caps a property at 65,536.
MAX_LENGTHS = {"email": 254, "first_name": 200, "last_name": 200, "locale": 35, "crm_id": 128, "timezone": 64}
MAX_ATTRIBUTE_CHARS = 65_536
MAX_ATTRIBUTES_BYTES = 262_144


def validate_profile(fields: JsonMapping, *, partial: bool, segments: Collection[str]) -> dict[str, str]:
    """Every problem of a lead's profile fields, by field. `segments`: those of the live scoring model."""
    problems: dict[str, str] = {}
    for name in PROFILE_FIELDS:
        value = fields.get(name)
        if value is not None and not isinstance(value, str):
            problems[name] = "must be a string or null"
        elif isinstance(value, str) and len(value) > MAX_LENGTHS.get(name, 200):
            problems[name] = f"must be at most {MAX_LENGTHS.get(name, 200)} characters"
    email = fields.get("email")
    if isinstance(email, str) and "email" not in problems:
        why = check_email(email)[1]
        if why:
            problems["email"] = f"is not an email address: {why}"
    segment = fields.get("segment")
    if isinstance(segment, str) and segment not in segments:
        problems["segment"] = f"must be one of {', '.join(segments)} or null (the scoring model's segments)"
    tz = fields.get("timezone")
    if isinstance(tz, str):
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            problems["timezone"] = "is not an IANA time zone"
    if "attributes" in fields and not isinstance(fields["attributes"], dict):
        problems["attributes"] = "must be an object"
    elif isinstance(fields.get("attributes"), dict):
        attrs = fields["attributes"]
        for name, value in attrs.items():
            if len(str(name)) > 200:
                problems[f"attributes.{str(name)[:40]}..."] = "attribute names are at most 200 characters"
            elif isinstance(value, str) and len(value) > MAX_ATTRIBUTE_CHARS:
                problems[f"attributes.{name}"] = f"must be at most {MAX_ATTRIBUTE_CHARS} characters"
        if len(jsoncodec.dumps(attrs, default=str)) > MAX_ATTRIBUTES_BYTES:
            problems.setdefault("attributes", f"must be at most {MAX_ATTRIBUTES_BYTES} bytes as JSON")
    consent = fields.get("consent")
    if consent is not None and (
        not isinstance(consent, dict) or not all(isinstance(v, bool) for v in consent.values())
    ):
        problems["consent"] = "must be an object of channel: true|false"
    elif isinstance(consent, dict):
        for channel in consent:
            if channel not in CONSENT_CHANNELS:
                problems[f"consent.{str(channel)[:40]}"] = f"is not a channel (one of {', '.join(CONSENT_CHANNELS)})"
    unknown = set(fields) - {*PROFILE_FIELDS, "id", "attributes", "consent"}
    for name in sorted(unknown):
        problems[name] = "is not a lead field (custom fields go in attributes)"
    return problems


def event_problem(ev: EventIn) -> str:
    if not ev.lead_id or not LEAD_ID.fullmatch(ev.lead_id):
        return "lead_id is required (1-128 letters, digits or _.:@-)"
    if not EVENT_TYPE.fullmatch(ev.type or ""):
        return "type must be a lower-case word such as page_viewed"
    if not isinstance(ev.properties, dict):
        return "properties must be an object"
    if ev.idempotency_key is not None and len(ev.idempotency_key) > 200:
        return "idempotency_key is longer than 200 characters"
    return ""
