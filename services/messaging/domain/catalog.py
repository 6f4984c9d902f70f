"""The template catalog and its renderer.

The catalog (`templates/catalog.yaml`) holds what each template is (journey, category, stage, call to
action's address, topic, format, who it speaks for) and seeds its first content version: its subject
and its points (paragraphs of copy) laid into `layout.mjml.j2` / `layout.text.j2`, giving an MJML body and a
plain text (domain/content.py), and a preheader that is the first rendered sentence. A CTA path may use
the send's values. Later versions are edited and published as data (app/templates.py). Segment and
journey paragraphs stay here. Every string is Jinja2 compiled once in an immutable sandbox (template
authors cannot reach Python internals), with StrictUndefined so a typo fails the render (recorded as a
failed message) instead of sending a blank. Rendering produces the subject, an HTML part and a
plain-text part; links are wrapped as tracked links by the `track` callable the caller passes in.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Protocol
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

from jinja2 import Environment, TemplateError
from markupsafe import escape
from pydantic import BeforeValidator, Field, model_validator

from nurture import times
from nurture.datafiles import Strict, load
from services.messaging.domain.content import (
    CTA_PATH,
    Compiled,
    ContentError,
    TemplateContent,
    Variant,
    escape_outside_jinja,
    link_tracker,
    text_env,
)
from services.messaging.domain.segments import DEFAULT, CompiledCopy, Recommendation, SegmentCopy

# Re-exported: the copy's wording rules are the catalog's as much as the filters'.
from services.messaging.domain.wording import children_phrase as children_phrase
from services.messaging.domain.wording import with_article as with_article

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
    # The interest the piece speaks to, as the website's pages name theirs (`category`: education,
    # healthcare, investment, ...): opening or clicking it is engaging with that content, so the
    # journeys' interest branches (the seed's "if engaging with education content") hear it.
    interest: str = ""


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
    version: int = 0            # the template version rendered (0: the catalog's seed, not stored)
    preheader: str = ""


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


class HasVariants(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def variants(self) -> Mapping[str, Mapping[str, Any]]: ...


def choose_variant(spec: HasVariants, lead_id: str) -> str:
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


class Attributes(dict[str, Any]):
    """A lead's attributes as templates read them: one the lead does not have reads as empty. A segment
    added as data brings fields of its own (a student's study level): a template names them without a
    variable added in code, and a lead without one gets an empty value, not a failed send."""

    def __missing__(self, key: str) -> str:
        return ""


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
        "attributes": Attributes(attrs if isinstance(attrs, Mapping) else {}),
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
    interest: str = ""  # the content category an open or click of it carries (TemplateSpec.interest)


class ContentEntry(Strict):
    """What analytics groups content by: each journey's topic, the formats a template may name."""

    default_format: str = "newsletter"
    formats: list[str] = Field(default_factory=list)
    topics: dict[str, str] = Field(default_factory=dict)


class SenderEntry(Strict):
    name: str = "BorderBridge"
    address: str = "hello@borderbridge.example"
    postal_address: str = ""   # the sender's postal address, in every email's footer (CAN-SPAM, PECR)


class RecommendationEntry(Strict):
    title: str
    path: str


class SegmentEntry(Strict):
    label: str = ""
    intro: str = ""
    recommended_content: list[RecommendationEntry] = Field(default_factory=list)


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


def with_pixel(html: str, pixel_url: str) -> str:
    """The open pixel, added to every email by the renderer rather than written in each body: it is
    measurement, not content (and an editor's canvas would fetch its placeholder)."""
    if not pixel_url:
        return html
    tag = (f'<img src="{escape(pixel_url)}" width="1" height="1" alt="" '
           'style="display:block;border:0;height:1px;width:1px;">')
    at = html.rfind("</body>")
    return html[:at] + tag + html[at:] if at >= 0 else html + tag


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
        self.postal_address = data.sender.postal_address
        self.specs: dict[str, TemplateSpec] = {}
        # What a template of a journey is about when its entry names nothing (or it has no entry).
        self.topics: dict[str, str] = dict(data.content.topics)
        self.default_format = data.content.default_format
        self.formats: tuple[str, ...] = tuple(data.content.formats)  # a version's format must be one (when listed)
        for key, raw in data.templates.items():
            journey, _, step = key.partition(".")
            self.specs[key] = TemplateSpec(
                key=key, journey=journey, step=step, channel=raw.channel, category=raw.category, stage=raw.stage,
                subject=raw.subject, points=tuple(raw.points), cta_label=raw.cta.label, cta_path=raw.cta.path,
                variants=raw.variants, cta_context=raw.cta.context, speaks_for=raw.speaks_for,
                cta_lead_attribute=raw.cta.lead_attribute,
                topic=raw.topic or data.content.topics.get(journey, ""),
                format=raw.format or data.content.default_format, interest=raw.interest,
            )
        self._text_env = text_env()
        # The seed layouts are filled at seeding time: their own tags are [[ ]] / [% %], so the Jinja2
        # tags they lay down ({{ first_name }}, ...) are kept for every send.
        seeding = Environment(block_start_string="[%", block_end_string="%]", variable_start_string="[[",
                              variable_end_string="]]", comment_start_string="[#", comment_end_string="#]",
                              autoescape=False, keep_trailing_newline=True)
        self._seed_body = seeding.from_string((TEMPLATES_DIR / "layout.mjml.j2").read_text(encoding="utf-8"))
        self._seed_text = seeding.from_string((TEMPLATES_DIR / "layout.text.j2").read_text(encoding="utf-8"))
        # Each segment's copy seeds the store's first version of it (app/segments.py); until that is
        # loaded (and for a catalog used alone: tests, tools) it is what renders. "" is `_default`.
        self._segment_seeds = {k or DEFAULT: SegmentCopy(v.label, v.intro, tuple(
            Recommendation(r.title, r.path) for r in v.recommended_content)) for k, v in data.segments.items()}
        self.segment_copy: dict[str, CompiledCopy] = {
            k: CompiledCopy(k, 0, c) for k, c in self._segment_seeds.items()}
        self._journeys = {k: self._text_env.from_string(v.extra) for k, v in data.journeys.items()}
        self._compiled: dict[str, Any] = {}
        self._seeded: dict[str, Compiled] = {}

    def keys(self) -> list[str]:
        return list(self.specs)

    def seed_segments(self) -> dict[str, SegmentCopy]:
        """segment → the copy the catalog seeds it with (`_default`: the catalog's "" entry)."""
        return dict(self._segment_seeds)

    def spec(self, key: str) -> TemplateSpec:
        """What a template is: the catalog's entry, or for a template made in the console or the API (no
        entry) a nurture email of the journey its key names, linking to the site, about that journey's
        topic (a journey the catalog's topics do not name, one added as data, is its own topic) in the
        default format, as a catalog entry naming neither is (analytics groups content by them: without,
        its sends were a row keyed '' beside the journey's other emails)."""
        found = self.specs.get(key)
        if found is not None:
            return found
        journey, _, step = key.partition(".")
        return TemplateSpec(key=key, journey=journey, step=step, channel="email", category="nurture", stage="",
                            subject="", points=(), cta_label="Learn more", cta_path="/",
                            topic=self.topics.get(journey) or journey, format=self.default_format)

    def seed_content(self, key: str) -> TemplateContent:
        """A catalog entry's first version: its subject and points laid into the seed layouts."""
        spec = self.specs[key]
        # The button says `{{ cta_label }}`: the version's own label when it names one, else the entry's
        # `cta.label` (with_version_cta), so editing the field changes the button of a seeded email too.
        body = self._seed_body.render(points=[escape_outside_jinja(p) for p in spec.points])
        text = self._seed_text.render(points=list(spec.points))
        variants = {name: Variant(subject=str(v.get("subject", "")), preheader=str(v.get("preheader", "")),
                                  intro=str(v.get("intro", "")), weight=float(v.get("weight", 1.0)))
                    for name, v in spec.variants.items()}
        return TemplateContent(subject=spec.subject, preheader=self.seed_preheader(spec),
                               body=body, text=text, variants=variants)

    @staticmethod
    def seed_preheader(spec: TemplateSpec) -> str:
        """The inbox preview of a seeded version: the first sentence of the first paragraph that renders
        non-empty at send time (a point may be wholly conditional), else the subject."""
        if not spec.points:
            return spec.subject
        # Paragraphs are separated by a Jinja2 string, not literal line breaks: the console's one-line
        # preheader field would drop those.
        return "{% filter first_sentence %}" + "{{ '\\n\\n' }}".join(spec.points) + "{% endfilter %}"

    def seeded(self, key: str) -> Compiled:
        compiled = self._seeded.get(key)
        if compiled is None:
            compiled = self._seeded[key] = Compiled(key, 0, self.seed_content(key))
        return compiled

    def _compile(self, source: str) -> Any:
        compiled = self._compiled.get(source)
        if compiled is None:
            # Nearly every subject and content point is plain text: rendering it through Jinja2 cost
            # a context copy per string per message for an answer known at load time.
            constant = "{" not in source and "\r" not in source
            compiled = self._compiled[source] = (_Constant(source) if constant
                                                 else self._text_env.from_string(source))
        return compiled

    def site_path(self, page: str) -> str | None:
        """A version's CTA page as a path on the site: a path as it is, an https address on the site as its
        path ("/" for the site itself); None for anything else (another host, http, a query)."""
        if CTA_PATH.fullmatch(page):
            return page
        site = urlsplit(self.site_url)
        found = urlsplit(page)
        if (found.scheme != "https" or found.netloc.lower() != site.netloc.lower() or found.query
                or found.fragment or found.username or found.password):
            return None
        path = found.path or "/"
        return path if CTA_PATH.fullmatch(path) else None

    def with_version_cta(self, spec: TemplateSpec, content: TemplateContent) -> TemplateSpec:
        """The spec with the version's own CTA label and page, when it names them (made through the API or
        the console: without, every such template's button said "Learn more" and led to the site root)."""
        path = self.site_path(content.cta_path) if content.cta_path else None
        if not content.cta_label and path is None:
            return spec
        # A send's own address (a webinar's join link, the owner's booking link) still comes first: it is
        # the lead's, where the page is the template's.
        return dataclasses.replace(spec, cta_label=content.cta_label or spec.cta_label,
                                   cta_path=path if path is not None else spec.cta_path)

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
               variant: str | None = None, now: datetime | None = None, content: Compiled | None = None,
               segments: Mapping[str, CompiledCopy] | None = None) -> Rendered:
        """Subject, HTML and text of template `key` for `lead`; RenderError when unknown or broken.
        `content`: the version to render (None: the catalog's seed). `now` (the send time) tells the
        templates whether a webinar start or a trial end is past. `segments`: each segment's live copy
        (None: the catalog's); a segment without copy of its own gets `_default`'s."""
        if content is None and key not in self.specs:
            raise RenderError(f"unknown template {key!r}")
        try:
            compiled = content if content is not None else self.seeded(key)
        except (ContentError, TemplateError) as exc:
            raise RenderError(f"template {key!r} failed to compile: {exc}") from exc
        spec = self.with_version_cta(self.spec(key), compiled.content)
        ctx = dict(context or {})
        base = profile_context(lead)
        copies = segments if segments is not None else self.segment_copy
        segment = copies.get(base["segment"]) or copies.get(DEFAULT)
        base.update(
            segment_label=segment.label if segment is not None else "", journey=spec.journey, step=spec.step,
            template=key, category=spec.category, ctx=ctx, site_url=self.site_url,
            starts_at_local=_local(ctx.get("starts_at"), base["timezone"]),
            ends_at_local=_local(ctx.get("ends_at"), base["timezone"]),
            starts_at_past=_is_past(ctx.get("starts_at"), now), ends_at_past=_is_past(ctx.get("ends_at"), now),
        )
        chosen = variant if variant is not None else choose_variant(compiled, str(base["lead_id"]))
        if chosen not in compiled.variants:
            chosen = ""   # a variant of an earlier version that this one no longer has: the default
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
                    owner_name=sender.signature if sender else "", postal_address=self.postal_address,
                    sender_name=sender.name if sender else self.sender_name, cta_label=spec.cta_label)
        links: list[str] = []
        try:
            destination = str(ctx.get("cta_url") or own or personal or self.cta_destination(spec, base))
            links.append(destination)
            subject = compiled.subject(chosen, base)
            intro_tpl = compiled.intro(chosen)
            if intro_tpl is None and segment is not None:
                intro_tpl = segment.intro
            values = dict(base)
            values.update(subject=subject)
            values.update(
                preheader=compiled.preheader(chosen, values),
                intro=" ".join(intro_tpl.render(base).split()) if intro_tpl is not None else "",
                extra=" ".join(self._journeys[spec.journey].render(base).split())
                if spec.journey in self._journeys else "",
                cta_url=track(destination, 0) if track else destination,
                pixel_url=pixel_url, unsubscribe_url=unsubscribe_url,
                consent_note=f"{spec.category} email", track=link_tracker(track, links),
            )
            html = with_pixel(compiled.html.render(values), pixel_url)
            text = compiled.text.render(values)
        except TemplateError as exc:
            raise RenderError(f"template {key!r} failed to render: {exc}") from exc
        return Rendered(subject=subject, html=html, text=text, variant=chosen, links=tuple(links), sender=sender,
                        version=compiled.version, preheader=str(values["preheader"]))

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
