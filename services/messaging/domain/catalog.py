"""The template catalog and its renderer.

Templates are data (`templates/catalog.yaml`): one entry per send step of the playbook with the seed's
subject, content points and call to action, plus segment and journey paragraphs. Every string is a
Jinja2 template compiled once in an immutable sandbox (template authors cannot reach Python internals),
with StrictUndefined so a typo fails the render (recorded as a failed message) instead of sending a
blank. Rendering produces the subject, an HTML part and a plain-text part; calls to action are wrapped
as tracked links by the `track` callable the caller passes in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from jinja2 import StrictUndefined, TemplateError, select_autoescape
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BeforeValidator, Field, model_validator

from nurture import times
from nurture.datafiles import Strict, load

TEMPLATES_DIR = Path(__file__).parents[1] / "data" / "templates"

COUNTRY_NAMES = {
    "CA": "Canada", "AU": "Australia", "NZ": "New Zealand", "GB": "the United Kingdom", "UK": "the United Kingdom",
    "US": "the United States", "DE": "Germany", "IE": "Ireland", "NL": "the Netherlands", "PT": "Portugal",
    "SG": "Singapore", "AE": "the United Arab Emirates", "ES": "Spain", "FR": "France", "SE": "Sweden",
    "DK": "Denmark", "NO": "Norway", "FI": "Finland", "CH": "Switzerland", "JP": "Japan",
}


class RenderError(Exception):
    """A template that is unknown or fails to render; the message is recorded as failed with this reason."""


@dataclass(frozen=True)
class TemplateSpec:
    key: str
    journey: str
    step: str
    channel: str
    category: str
    stage: str
    subject: str
    points: tuple[str, ...]
    cta_label: str
    cta_path: str
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    cta_context: str = ""   # a send-context value that, when given, is the CTA's address (e.g. join_url)
    # `owner`: the email speaks for the lead's assigned salesperson: it comes from them, is signed by
    # them, and a meeting CTA (`cta.lead_attribute: meeting_link`) is their own booking link.
    speaks_for: str = ""
    cta_lead_attribute: str = ""  # a lead attribute that, when it is a web address, is the CTA's address
    topic: str = ""   # what the piece is about (analytics groups by it); the catalog's `content` section
    format: str = ""  # what kind of piece it is (newsletter, guide, webinar, ...)


@dataclass(frozen=True)
class Sender:
    """Who an email comes from and who signs it."""

    name: str
    address: str
    signature: str       # the sign-off's name line
    title: str = ""      # the line under it
    reply_to: str = ""


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str
    variant: str
    links: tuple[str, ...]      # destinations, by link index
    sender: Sender | None = None  # None: the catalog's sender, signed by the team


def _first_sentence(paragraph: str) -> str:
    """The inbox preview line: the opening sentence of the first paragraph."""
    match = re.match(r"(.+?[.!?])(\s|$)", paragraph)
    return match.group(1) if match else paragraph


def owner_name(address: str) -> str:
    """A person's name from a work address (`ana.costa@...` → `Ana Costa`), for the sign-off."""
    local = address.split("@", 1)[0]
    parts = [p for p in local.replace("_", ".").replace("-", ".").split(".") if p]
    return " ".join(p[:1].upper() + p[1:] for p in parts) or address


Tracker = Callable[[str, int], str]


def country_name(code: str) -> str:
    return COUNTRY_NAMES.get(code.upper(), code) if len(code) <= 3 else code


def join_words(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# Words whose first letter misleads: a vowel letter sounding like "you"/"w" takes "a", a silent "h"
# takes "an". Lower-case prefixes of the word after the article.
_A_BEFORE = ("uni", "use", "usu", "uti", "eu", "one", "once", "ubiq", "ura")
_AN_BEFORE = ("hour", "honest", "honor", "honour", "heir")


def indefinite_article(phrase: str) -> str:
    """`a` or `an` for the phrase that follows it ("an engineer", "a nurse", "a UX designer" is left to
    the letter rule: acronyms read letter by letter are rare in profession names)."""
    word = phrase.strip().lower()
    if not word:
        return "a"
    if word.startswith(_AN_BEFORE):
        return "an"
    if word.startswith(_A_BEFORE):
        return "a"
    return "an" if word[0] in "aeiou" else "a"


def with_article(phrase: Any) -> str:
    """The Jinja filter `with_article`: `{{ profession | with_article }}` → "an engineer"."""
    text = str(phrase).strip()
    return f"{indefinite_article(text)} {text}" if text else ""


_SMALL_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def children_phrase(count: int) -> str:
    """"one child", "two children", "12 children"; "" when the profile says none or nothing."""
    if count <= 0:
        return ""
    number = _SMALL_NUMBERS[count] if count < len(_SMALL_NUMBERS) else str(count)
    return f"{number} {'child' if count == 1 else 'children'}"


def slug(value: Any) -> str:
    """A path segment from a free value (a plan name, a resource id): `Family Plus` → `family-plus`."""
    return "-".join(re.findall(r"[a-z0-9]+", str(value).lower()))


def choose_variant(spec: TemplateSpec, lead_id: str) -> str:
    """A stable split: the same lead always gets the same variant of a template (weights honoured)."""
    if not spec.variants:
        return ""
    names = sorted(spec.variants)
    weights = [float(spec.variants[n].get("weight", 1.0)) for n in names]
    digest = hashlib.sha256(f"{spec.key}:{lead_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(weights)
    for name, weight in zip(names, weights, strict=True):
        if point < weight:
            return name
        point -= weight
    return names[-1]


def _local(value: Any, tz: str) -> str:
    """An RFC 3339 time in the lead's zone, for sentences like 'It starts Tue 12 Jan, 18:00'."""
    if not value:
        return ""
    when = times.parse_utc(value)
    try:
        zone = ZoneInfo(tz) if tz else ZoneInfo("UTC")
    except (ValueError, KeyError):
        return str(value)
    return when.astimezone(zone).strftime("%a %d %b %Y, %H:%M") if when else str(value)


def _is_past(value: Any, now: datetime | None) -> bool:
    """Whether an RFC 3339 time is at or before `now` (False without a time or a now)."""
    if not value or now is None:
        return False
    when = times.parse_utc(value)
    return when is not None and when <= now


def profile_context(lead: Mapping[str, Any]) -> dict[str, Any]:
    """Every variable a template may use, each defined (empty when the profile lacks it)."""
    attrs: Mapping[str, Any] = lead.get("attributes") or {}
    interests: Mapping[str, Any] = lead.get("interests") or {}
    codes = attrs.get("countries_of_interest") or interests.get("countries") or []
    if isinstance(codes, str):
        codes = [c.strip() for c in codes.split(",") if c.strip()]
    countries = [country_name(str(c)) for c in codes][:4]
    children = attrs.get("children", attrs.get("number_of_children", 0))
    try:
        children = int(children or 0)
    except (TypeError, ValueError):
        children = 0
    first = (lead.get("first_name") or "").strip()
    last = (lead.get("last_name") or "").strip()
    return {
        # first_name falls back to "there" for greetings ("Hi there"); given_name stays empty so a
        # subject can leave the name out instead of reading "there, your skills...".
        "lead_id": lead.get("id", ""), "first_name": first or "there", "given_name": first, "last_name": last,
        "full_name": f"{first} {last}".strip(), "email": lead.get("email") or "",
        "segment": lead.get("segment") or "", "locale": lead.get("locale") or "en",
        "timezone": lead.get("timezone") or "UTC",
        "profession": str(attrs.get("profession") or ""), "countries": countries,
        "countries_text": join_words(countries), "children": children,
        # "two children" / "one child" / "" and the noun alone, so copy never reads "1 children".
        "children_text": children_phrase(children), "child_word": "child" if children == 1 else "children",
        "family_size": attrs.get("family_size") or "", "business_sector": str(
            attrs.get("business_sector") or attrs.get("industry") or attrs.get("business_type") or ""),
        "score": lead.get("score", 0), "grade": lead.get("grade") or "", "stage": lead.get("lifecycle_stage") or "",
    }


def _text(value: Any) -> Any:
    # A point written `- Label: text` is a YAML mapping, not a sentence: refused at load time (it
    # rendered as "{'Label': 'text'}" in the email).
    if not isinstance(value, str):
        raise ValueError(f"must be text (quote a point containing ': '), got {value!r}")
    return value


Text = Annotated[str, BeforeValidator(_text)]


class CtaEntry(Strict):
    label: str = "Learn more"
    path: str = "/"
    context: str = ""          # a send-context value that, when given, is the address (e.g. join_url)
    lead_attribute: str = ""   # a lead attribute that, when it is a web address, is the address


class TemplateEntry(Strict):
    subject: Text
    points: list[Text] = Field(default_factory=list)
    channel: str = "email"
    category: str = "nurture"
    stage: str = ""
    cta: CtaEntry = CtaEntry()
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)  # name: overrides (subject, intro, weight)
    speaks_for: str = ""
    topic: str = ""   # "": the journey's topic (content.topics)
    format: str = ""  # "": content.default_format


class ContentEntry(Strict):
    """What analytics groups content by: each journey's topic, the formats a template may name."""

    default_format: str = "newsletter"
    formats: list[str] = Field(default_factory=list)
    topics: dict[str, str] = Field(default_factory=dict)


class SenderEntry(Strict):
    name: str = "BorderBridge"
    address: str = "hello@borderbridge.example"


class SegmentEntry(Strict):
    label: str = ""
    intro: str = ""


class JourneyEntry(Strict):
    extra: str = ""


class CatalogFile(Strict):
    """templates/catalog.yaml's shape: one entry per template key (`<journey>.<step>`)."""

    site_url: str = "https://www.borderbridge.example"
    sender: SenderEntry = SenderEntry()
    segments: dict[str, SegmentEntry] = Field(default_factory=dict)
    journeys: dict[str, JourneyEntry] = Field(default_factory=dict)
    content: ContentEntry = ContentEntry()
    templates: dict[str, TemplateEntry] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_formats(self) -> CatalogFile:
        """A template's format (or the default) must be one of content.formats, when they are listed."""
        allowed = self.content.formats
        wrong = [f"{key}: format {t.format or self.content.default_format!r}" for key, t in self.templates.items()
                 if allowed and (t.format or self.content.default_format) not in allowed]
        if wrong:
            raise ValueError(f"not one of content.formats: {'; '.join(wrong)}")
        return self


class _Constant:
    """A template source without any Jinja2 syntax: renders to itself, as Jinja2 would (one trailing
    newline dropped, keep_trailing_newline being off)."""

    def __init__(self, source: str) -> None:
        self.text = source[:-1] if source.endswith("\n") else source

    def render(self, _values: Mapping[str, Any]) -> str:
        return self.text


class Catalog:
    """Loaded templates, compiled once; `render` is safe to call from many threads."""

    def __init__(self, path: Path = TEMPLATES_DIR / "catalog.yaml") -> None:
        data = load(CatalogFile, path)
        self.site_url: str = data.site_url.rstrip("/")
        self.sender_name = data.sender.name
        self.sender_address = data.sender.address
        self.specs: dict[str, TemplateSpec] = {}
        for key, raw in data.templates.items():
            journey, _, step = key.partition(".")
            self.specs[key] = TemplateSpec(
                key=key, journey=journey, step=step, channel=raw.channel, category=raw.category, stage=raw.stage,
                subject=raw.subject, points=tuple(raw.points), cta_label=raw.cta.label, cta_path=raw.cta.path,
                variants=raw.variants, cta_context=raw.cta.context, speaks_for=raw.speaks_for,
                cta_lead_attribute=raw.cta.lead_attribute,
                topic=raw.topic or data.content.topics.get(journey, ""),
                format=raw.format or data.content.default_format,
            )
        self._text_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        self._html_env = ImmutableSandboxedEnvironment(
            undefined=StrictUndefined, autoescape=select_autoescape(default=True, default_for_string=True))
        layouts = {name: (TEMPLATES_DIR / name).read_text(encoding="utf-8")
                   for name in ("layout.html.j2", "layout.txt.j2")}
        for env in (self._text_env, self._html_env):
            env.filters.update(with_article=with_article, slug=slug)
        self._html_layout = self._html_env.from_string(layouts["layout.html.j2"])
        self._text_layout = self._text_env.from_string(layouts["layout.txt.j2"])
        self._segments: dict[str, dict[str, Any]] = {
            k: {"label": v.label, "intro": self._text_env.from_string(v.intro)}
            for k, v in data.segments.items()}
        self._journeys = {k: self._text_env.from_string(v.extra) for k, v in data.journeys.items()}
        self._compiled: dict[str, Any] = {}

    def keys(self) -> list[str]:
        return list(self.specs)

    def _compile(self, source: str) -> Any:
        compiled = self._compiled.get(source)
        if compiled is None:
            # Nearly every subject and content point is plain text: rendering it through Jinja2 cost
            # a context copy per string per message for an answer known at load time.
            constant = "{" not in source and "\r" not in source
            compiled = self._compiled[source] = (_Constant(source) if constant
                                                 else self._text_env.from_string(source))
        return compiled

    def cta_destination(self, spec: TemplateSpec, values: Mapping[str, Any] | None = None) -> str:
        """The CTA's page on the site. A path may use the send's values (`/plans/{{ ctx.get('plan') |
        slug }}`) so the link is the plan's, resource's or webinar's own page; without values (a
        recommendation list) it renders with an empty send context and falls back to its default."""
        query = urlencode({"utm_source": "nurture", "utm_medium": spec.channel, "utm_campaign": spec.journey,
                           "utm_content": spec.step})
        path = spec.cta_path
        if "{" in path:
            path = self._compile(path).render(values if values is not None else {"ctx": {}}).strip()
            path = "/" + "/".join(p for p in path.split("/") if p)  # an empty value leaves no `//`
        return f"{self.site_url}{path}?{query}"

    def render(self, key: str, lead: Mapping[str, Any], *, context: Mapping[str, Any] | None = None,
               track: Tracker | None = None, pixel_url: str = "", unsubscribe_url: str = "",
               variant: str | None = None, now: datetime | None = None) -> Rendered:
        """Subject, HTML and text of template `key` for `lead`; RenderError when unknown or broken.
        `now` (the send time) tells the templates whether a webinar start or a trial end is past."""
        spec = self.specs.get(key)
        if spec is None:
            raise RenderError(f"unknown template {key!r}")
        ctx = dict(context or {})
        base = profile_context(lead)
        segment = self._segments.get(base["segment"]) or self._segments.get("") or {}
        base.update(
            segment_label=segment.get("label", ""), journey=spec.journey, step=spec.step, template=key,
            category=spec.category, ctx=ctx, site_url=self.site_url,
            starts_at_local=_local(ctx.get("starts_at"), base["timezone"]),
            ends_at_local=_local(ctx.get("ends_at"), base["timezone"]),
            starts_at_past=_is_past(ctx.get("starts_at"), now), ends_at_past=_is_past(ctx.get("ends_at"), now),
        )
        chosen = variant if variant is not None else choose_variant(spec, str(base["lead_id"]))
        overrides = spec.variants.get(chosen, {}) if chosen else {}
        # The webinar's own join link is the final reminder's button, not every webinar email's
        # (the calendar, preparation and recording emails keep their own pages).
        own = str(ctx.get(spec.cta_context) or "") if spec.cta_context else ""
        if not own.startswith(("https://", "http://")):
            own = ""  # only a web address becomes a button
        base["cta_from_context"] = spec.cta_context if own else ""
        raw_attrs = lead.get("attributes")
        attrs: Mapping[str, Any] = raw_attrs if isinstance(raw_attrs, Mapping) else {}
        personal = str(attrs.get(spec.cta_lead_attribute) or "") if spec.cta_lead_attribute else ""
        if not personal.startswith(("https://", "http://")):
            personal = ""
        sender = self._sender_for(spec, attrs)
        base.update(signature=sender.signature if sender else "The BorderBridge team",
                    signature_title=sender.title if sender else "",
                    owner_name=sender.signature if sender else "")
        try:
            destination = str(ctx.get("cta_url") or own or personal or self.cta_destination(spec, base))
            links = (destination,)
            subject = self._compile(str(overrides.get("subject", spec.subject))).render(base).strip()
            intro_tpl = overrides.get("intro")
            intro = (self._compile(str(intro_tpl)) if intro_tpl else segment.get("intro")) if (
                intro_tpl or segment) else None
            values = dict(base)
            # Paragraphs of copy: a conditional part may render to nothing, and then it is left out
            # (no empty paragraph); whitespace from YAML folding is collapsed.
            points = [text for text in (" ".join(self._compile(p).render(base).split()) for p in spec.points)
                      if text]
            values.update(
                subject=subject, preheader=_first_sentence(points[0]) if points else subject,
                intro=" ".join(intro.render(base).split()) if intro is not None else "",
                points=points,
                extra=" ".join(self._journeys[spec.journey].render(base).split())
                if spec.journey in self._journeys else "",
                cta_label=spec.cta_label, cta_url=track(destination, 0) if track else destination,
                pixel_url=pixel_url, unsubscribe_url=unsubscribe_url,
                consent_note=f"{spec.category} email",
            )
            html = self._html_layout.render(values)
            text = self._text_layout.render(values)
        except TemplateError as exc:
            raise RenderError(f"template {key!r} failed to render: {exc}") from exc
        return Rendered(subject=subject, html=html, text=text, variant=chosen, links=links, sender=sender)

    def _sender_for(self, spec: TemplateSpec, attrs: Mapping[str, Any]) -> Sender | None:
        """The person an email speaks for, when the template says so and the lead has one assigned."""
        if spec.speaks_for != "owner":
            return None
        address = str(attrs.get("sales_owner") or "")
        if "@" not in address or any(c in address for c in "\r\n<>\",;"):
            return None  # no owner yet (or not an address): the team signs, as in any other email
        name = str(attrs.get("sales_owner_name") or "") or owner_name(address)
        return Sender(name=f"{name} (BorderBridge)", address=address, signature=name,
                      title="Your immigration specialist, BorderBridge", reply_to=address)
