"""A template's content as data: subject, preheader, MJML body and plain text (each Jinja2), A/B variants;
its validation (every problem at once) and its compiled, ready-to-render form.

The variables a template may use are listed once here (`VARIABLES`): validation refuses any other name,
and the console offers these for insertion.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes, select_autoescape
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import Field, ValidationError, field_validator

from nurture.datafiles import Strict
from services.messaging.domain.mjml import MjmlError, compile_mjml
from services.messaging.domain.wording import FILTERS

MAX_SUBJECT = 400
# A preheader renders to one line, but its source may hold the conditions of the copy it quotes (a seeded
# preheader is the first sentence of the first paragraph that renders: every point's source, filtered).
MAX_PREHEADER = 8_000
MAX_BODY = 65_536   # one string of the API (nurture.limits.MAX_STRING_CHARS)
MAX_TEXT = 50_000
MAX_VARIANTS = 8
# A topic or a format is a slug as the catalog's are (careers_and_skills, cart_v2, case_study):
# analytics groups by them and its CSV names rows by them, so they are bounded and plain.
SLUG = re.compile(r"[a-z0-9_]{1,60}")
# The call to action: a button's label is a few words (the layouts' button holds one line), and its page is
# a path on the site (`/plans/family`) or an https address on the site, checked against the catalog's
# site_url by the library. A path is plain: no query or fragment (the send adds its UTM query), no `//`
# start (another host), no spaces or quotes.
MAX_CTA_LABEL = 60
MAX_CTA_PATH = 400
CTA_PATH = re.compile(r"/(?!/)[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")

# name → what it holds. Lead variables first (what "exists for a lead"), then the send's, then the
# parts every email carries.
VARIABLES: dict[str, str] = {
    "lead_id": "the lead's id", "first_name": "first name, or \"there\" when unknown",
    "given_name": "first name, empty when unknown", "last_name": "last name", "full_name": "first and last name",
    "email": "email address", "segment": "segment key (skilled_professional, family, entrepreneur, ...)",
    "segment_label": "segment name", "locale": "language (en, ...)", "timezone": "IANA time zone",
    "profession": "profession", "countries": "countries of interest (names, a list)",
    "countries_text": "countries of interest as words (\"Canada and Germany\")", "children": "number of children",
    "children_text": "the children as words (\"two children\", \"one child\", empty for none)",
    "child_word": "\"child\" for one child, else \"children\"",
    "family_size": "family size", "business_sector": "business sector",
    "attributes": "the lead's own fields, any of them ({{ attributes.study_level }}: empty when the lead has none)",
    "score": "lead score",
    "grade": "fit grade", "stage": "lifecycle stage",
    "journey": "the journey's key", "step": "the step's id", "template": "this template's key",
    "category": "nurture or transactional", "ctx": "the send's context (ctx.get('webinar_title'), ...)",
    "site_url": "the website's address", "starts_at_local": "ctx starts_at in the lead's time zone",
    "ends_at_local": "ctx ends_at in the lead's time zone", "starts_at_past": "whether starts_at is past",
    "ends_at_past": "whether ends_at is past", "cta_from_context": "the context value the button links to",
    "signature": "who signs", "signature_title": "the signer's title", "owner_name": "the lead's salesperson",
    "subject": "the rendered subject", "preheader": "the rendered preheader",
    "intro": "the segment's paragraph (or the variant's)", "extra": "the journey's paragraph",
    "cta_label": "the call to action's label", "cta_url": "the call to action's tracked link",
    "pixel_url": "the open-tracking pixel's address", "unsubscribe_url": "the unsubscribe link",
    "consent_note": "why the lead receives this email", "postal_address": "the sender's postal address",
    "sender_name": "the sender's name",
    "track": "track('https://...'): a tracked link to any address",
}
# Jinja2's own globals (range, dict, namespace, ...) are usable too.
_BUILTINS = frozenset({"range", "dict", "lipsum", "cycler", "joiner", "namespace", "loop", "true", "false", "none",
                       "True", "False", "None"})

_JINJA_SPAN = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_HREF = re.compile(r"""\bhref\s*=\s*("([^"]*)"|'([^']*)')""", re.I)
_TRACKED_HREF = re.compile(r"^\{\{-?\s*(cta_url|unsubscribe_url|track\(.*\))\s*-?\}\}$", re.S)
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.I)


class VariantInput(Strict):
    subject: str = Field("", max_length=MAX_SUBJECT)
    preheader: str = Field("", max_length=MAX_PREHEADER)
    intro: str = Field("", max_length=MAX_TEXT)
    weight: float = Field(1.0, gt=0, le=1000)


class ContentInput(Strict):
    """What a draft holds (the body of PUT /v1/templates/{key})."""

    subject: str = Field(max_length=MAX_SUBJECT)
    preheader: str = Field("", max_length=MAX_PREHEADER)
    body: str = Field(max_length=MAX_BODY)
    text: str = Field(max_length=MAX_TEXT)
    variants: dict[str, VariantInput] = Field(default_factory=dict)
    topic: str = ""    # "": the template's default (TemplateContent.topic)
    format: str = ""   # "": the template's default; one of the catalog's formats (the library checks)
    cta_label: str = Field("", max_length=MAX_CTA_LABEL)   # "": the template's default ("Learn more")
    cta_path: str = Field("", max_length=MAX_CTA_PATH)     # "": the template's default (the site root)

    @field_validator("cta_label")
    @classmethod
    def _label(cls, value: str) -> str:
        if value != value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must be one line of text without leading or trailing spaces")
        return value

    @field_validator("cta_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if value and not (CTA_PATH.fullmatch(value) or value.startswith("https://")):
            raise ValueError("must be a path on the site (/plans/family: no query, no spaces) or an https address "
                             "on the site")
        return value

    @field_validator("topic", "format")
    @classmethod
    def _slug(cls, value: str) -> str:
        if value and not SLUG.fullmatch(value):
            raise ValueError("must be 1-60 of a-z, 0-9, _ (a slug such as careers_and_skills)")
        return value

    @field_validator("variants")
    @classmethod
    def _names(cls, value: dict[str, VariantInput]) -> dict[str, VariantInput]:
        if len(value) > MAX_VARIANTS:
            raise ValueError(f"at most {MAX_VARIANTS} variants")
        bad = [n for n in value if not re.fullmatch(r"[a-z0-9_]{1,16}", n)]
        if bad:
            raise ValueError(f"variant names are 1-16 of a-z, 0-9, _: {', '.join(map(repr, bad))}")
        return value


@dataclass(frozen=True)
class Variant:
    subject: str = ""
    preheader: str = ""
    intro: str = ""
    weight: float = 1.0


@dataclass(frozen=True)
class TemplateContent:
    subject: str
    preheader: str
    body: str
    text: str
    variants: Mapping[str, Variant] = field(default_factory=dict)
    # What the version's sends are about and what kind of piece they are (analytics groups by them);
    # "": the template's own default (its catalog entry's, else its journey's topic and the default format).
    topic: str = ""
    format: str = ""
    # The call to action's label and page (a path on the site, or an https address on it); "": the
    # template's own (its catalog entry's, else "Learn more" and the site root).
    cta_label: str = ""
    cta_path: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "preheader": self.preheader, "body": self.body, "text": self.text,
                "variants": {n: {"subject": v.subject, "preheader": v.preheader, "intro": v.intro,
                                 "weight": v.weight} for n, v in sorted(self.variants.items())}}


def parse(raw: object) -> tuple[TemplateContent | None, list[str]]:
    """A TemplateContent from a JSON-like object, or the shape problems (each field's)."""
    try:
        data = ContentInput.model_validate(raw)
    except ValidationError as exc:
        return None, [f"{'.'.join(str(p) for p in e['loc']) or 'content'}: {e['msg']}" for e in exc.errors()]
    return TemplateContent(
        subject=data.subject, preheader=data.preheader, body=data.body, text=data.text,
        variants={n: Variant(v.subject, v.preheader, v.intro, v.weight) for n, v in data.variants.items()},
        topic=data.topic, format=data.format, cta_label=data.cta_label, cta_path=data.cta_path), []


def text_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    env.filters.update(FILTERS)
    return env


def html_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined,
                                        autoescape=select_autoescape(default=True, default_for_string=True))
    env.filters.update(FILTERS)
    return env


_TEXT = text_env()
_HTML = html_env()


def _names(ast: nodes.Template) -> set[str]:
    return set(meta.find_undeclared_variables(ast))


def _check_source(where: str, source: str, env: ImmutableSandboxedEnvironment, problems: list[str]
                  ) -> set[str] | None:
    """The variables `source` uses, or None (with the problem listed) when it is not valid Jinja2."""
    try:
        ast = env.parse(source)
    except TemplateSyntaxError as exc:
        problems.append(f"{where}: template syntax error at line {exc.lineno}: {exc.message}")
        return None
    used = _names(ast)
    for name in sorted(used - VARIABLES.keys() - _BUILTINS):
        problems.append(f"{where}: unknown variable {name!r}")
    return used


def check_text_source(where: str, source: str, problems: list[str]) -> None:
    """A plain-text Jinja2 source's problems (syntax, unknown variables), added to `problems`."""
    _check_source(where, source, _TEXT, problems)


def _untracked_hrefs(compiled_html: str) -> list[str]:
    out = []
    for m in _HREF.finditer(compiled_html):
        value = html.unescape(m.group(2) if m.group(2) is not None else m.group(3) or "").strip()
        if value.startswith(("mailto:", "tel:", "#")) or _TRACKED_HREF.match(value):
            continue
        out.append(value)
    return out


def validate(content: TemplateContent) -> list[str]:
    """Every problem of a template's content; [] when it may be published."""
    problems: list[str] = []
    if not content.subject.strip():
        problems.append("subject: is required")
    if not content.text.strip():
        problems.append("text: the plain-text part is required")
    _check_source("subject", content.subject, _TEXT, problems)
    _check_source("preheader", content.preheader, _TEXT, problems)
    body_used = _check_source("body", content.body, _HTML, problems)
    text_used = _check_source("text", content.text, _TEXT, problems)
    for name, v in sorted(content.variants.items()):
        for part in ("subject", "preheader", "intro"):
            _check_source(f"variants.{name}.{part}", getattr(v, part), _TEXT, problems)
    for where, used in (("body", body_used), ("text", text_used)):
        if used is None:
            continue
        if "unsubscribe_url" not in used:
            problems.append(f"{where}: no unsubscribe link ({{{{ unsubscribe_url }}}})")
        if "postal_address" not in used:
            problems.append(f"{where}: no postal address ({{{{ postal_address }}}})")
    try:
        compiled_html = compile_mjml(content.body)
    except MjmlError as exc:
        problems.append(f"body: {exc}")
    else:
        for href in _untracked_hrefs(compiled_html):
            problems.append(f"body: link not tracked: {href[:200]!r} (use {{{{ track('...') }}}} or {{{{ cta_url }}}})")
    for url in _URL.findall(_JINJA_SPAN.sub(" ", content.text)):
        problems.append(f"text: link not tracked: {url[:200]!r} (use {{{{ track('...') }}}})")
    return problems


Tracker = Callable[[str, int], str]


# Compiling is the costly part (MJML to HTML, then Jinja2's parse: milliseconds per template), and the
# same sources come back whenever a process opens its library again (a restart of the engine, every test
# that builds one, a preview of the live version): each distinct source is compiled once per process.
# Compiled Jinja2 templates are immutable, so sharing them is safe; an error is not cached.
@functools.lru_cache(maxsize=4096)
def _html_template(body: str) -> Any:
    return _HTML.from_string(compile_mjml(body))


@functools.lru_cache(maxsize=16384)
def _text_template(source: str) -> Any:
    return _TEXT.from_string(source)


class Compiled:
    """A content version ready to render: MJML compiled once, each part's Jinja2 compiled once."""

    def __init__(self, key: str, version: int, content: TemplateContent) -> None:
        self.key = key
        self.version = version
        self.content = content
        self.variants: Mapping[str, Mapping[str, Any]] = {
            n: {"weight": v.weight} for n, v in content.variants.items()}
        try:
            self.html = _html_template(content.body)
        except MjmlError as exc:
            raise ContentError(f"template {key!r} version {version}: {exc}") from exc
        self.text = _text_template(content.text)
        self._subjects = {"": _text_template(content.subject)}
        self._preheaders = {"": _text_template(content.preheader)}
        self._intros: dict[str, Any] = {}
        for name, v in content.variants.items():
            if v.subject:
                self._subjects[name] = _text_template(v.subject)
            if v.preheader:
                self._preheaders[name] = _text_template(v.preheader)
            if v.intro:
                self._intros[name] = _text_template(v.intro)

    def subject(self, variant: str, values: Mapping[str, Any]) -> str:
        return str(self._subjects.get(variant, self._subjects[""]).render(values)).strip()

    def preheader(self, variant: str, values: Mapping[str, Any]) -> str:
        return " ".join(str(self._preheaders.get(variant, self._preheaders[""]).render(values)).split())

    def intro(self, variant: str) -> Any:
        return self._intros.get(variant)


class ContentError(Exception):
    """Stored content that cannot be compiled (a render of it fails with this reason)."""


def link_tracker(track: Tracker | None, links: list[str]) -> Callable[[str], str]:
    """`track(url)` for templates: each address gets the next link index; without a tracker, as is."""
    def tracked(url: object) -> str:
        address = html.unescape(str(url)).strip()
        if not address.startswith(("https://", "http://")):
            return "#"   # only a web address becomes a link
        links.append(address)
        return track(address, len(links) - 1) if track else address
    return tracked


def escape_outside_jinja(source: str) -> str:
    """HTML-escape the literal text of a Jinja2 source, leaving its tags as they are (for the seed)."""
    out, last = [], 0
    for m in _JINJA_SPAN.finditer(source):
        out.append(html.escape(source[last:m.start()], quote=False))
        out.append(m.group(0))
        last = m.end()
    out.append(html.escape(source[last:], quote=False))
    return "".join(out)
