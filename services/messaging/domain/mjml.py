"""MJML (responsive email markup) to mail-ready HTML: compiled by mrml (the Rust port of MJML), then CSS
inlined by css-inline, as clients that drop <style> blocks need.

Template bodies are MJML with Jinja2 expressions in them. They are compiled once per stored version,
with the Jinja2 syntax passing through untouched, and the result is rendered per message: a send costs a
Jinja2 render, not an MJML compile. Each Jinja2 tag is set aside behind a placeholder while MJML compiles:
to MJML a tag is text, so a comparison in it (`{% if score >= 70 %}`) was escaped (`&gt;`) or, for `<`,
broke the parse.
"""

from __future__ import annotations

import re
import secrets

import css_inline
import mrml

# No web fonts: a <link> to a font host is a request to a third party from the reader's mail client
# (and css-inline would fetch it while inlining).
_RENDER = mrml.RenderOptions(fonts={})
# Media queries cannot be inlined: they stay in a <style> block (what makes the columns stack on a
# phone); every other rule is moved into style attributes.
_INLINER = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)


_JINJA_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)


class MjmlError(Exception):
    """Markup that does not compile; the message says where."""


def _set_aside(source: str) -> tuple[str, dict[str, str]]:
    """The source with each Jinja2 tag replaced by a placeholder of letters and digits (which MJML and the
    CSS inliner leave as they are), and the tags by placeholder."""
    nonce = secrets.token_hex(6)
    while nonce in source:
        nonce = secrets.token_hex(6)
    tags: dict[str, str] = {}

    def hold(match: re.Match[str]) -> str:
        name = f"jinja{nonce}n{len(tags)}z"
        tags[name] = match.group(0)
        return name
    return _JINJA_TAG.sub(hold, source), tags


def compile_mjml(source: str) -> str:
    """The HTML of an MJML document, CSS inlined; MjmlError when it does not compile."""
    if "<mjml" not in source:
        raise MjmlError("the body is not an MJML document (it must start with <mjml>)")
    source, tags = _set_aside(source)
    try:
        output = mrml.to_html(source, render_options=_RENDER)
    except OSError as exc:   # mrml reports parse errors as OSError
        raise MjmlError(f"MJML does not compile: {exc}") from exc
    warnings = [str(w) for w in getattr(output, "warnings", [])]
    if warnings:
        raise MjmlError("MJML: " + "; ".join(warnings))
    try:
        inlined = str(_INLINER.inline(output.content))
    except (css_inline.InlineError, ValueError) as exc:
        raise MjmlError(f"CSS does not inline: {exc}") from exc
    if not tags:
        return inlined
    names = re.compile("|".join(map(re.escape, tags)))
    return names.sub(lambda m: tags[m.group(0)], inlined)
