"""The Jinja2 filters template copy uses, so sentences hold for any profile and any send: the a/an
article, path segments from free values, paragraphs without YAML folding's whitespace, the inbox preview
line. Registered in every template environment (domain/content.py), so stored versions use them too."""

from __future__ import annotations

import re
from typing import Any

from markupsafe import Markup

# Words whose first letter misleads: a vowel letter sounding like "you"/"w" takes "a", a silent "h"
# takes "an". Lower-case prefixes of the word after the article.
_A_BEFORE = ("uni", "use", "usu", "uti", "eu", "one", "once", "ubiq", "ura")
_AN_BEFORE = ("hour", "honest", "honor", "honour", "heir")
_SMALL_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_SENTENCE = re.compile(r"(.+?[.!?])(\s|$)", re.S)


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
    """The filter `with_article`: `{{ profession | with_article }}` → "an engineer"."""
    text = str(phrase).strip()
    return f"{indefinite_article(text)} {text}" if text else ""


def children_phrase(count: int) -> str:
    """"one child", "two children", "12 children"; "" when the profile says none or nothing."""
    if count <= 0:
        return ""
    number = _SMALL_NUMBERS[count] if count < len(_SMALL_NUMBERS) else str(count)
    return f"{number} {'child' if count == 1 else 'children'}"


def slug(value: Any) -> str:
    """The filter `slug`, a path segment from a free value (a plan name, a resource id):
    `Family Plus` → `family-plus`."""
    return "-".join(re.findall(r"[a-z0-9]+", str(value).lower()))


def squash(value: Any) -> str:
    """The filter `squash`: a paragraph on one line, runs of whitespace (YAML folding's line breaks, the
    gaps a condition leaves) as one space. Markup stays markup, so the HTML part is not escaped twice."""
    if isinstance(value, Markup):
        return Markup(" ").join(value.split())
    return " ".join(str(value).split())


def first_sentence(value: Any) -> str:
    """The filter `first_sentence`, the inbox preview line: the opening sentence of the first non-empty
    paragraph (paragraphs are separated by blank lines), or that whole paragraph when it has no end."""
    paragraphs = (squash(p) for p in re.split(r"\n[^\S\n]*\n", str(value)))
    paragraph = next((p for p in paragraphs if p), "")
    match = _SENTENCE.match(paragraph)
    return match.group(1) if match else paragraph


FILTERS = {"with_article": with_article, "slug": slug, "squash": squash, "first_sentence": first_sentence}
