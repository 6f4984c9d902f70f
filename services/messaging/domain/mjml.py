"""MJML (responsive email markup) to mail-ready HTML: compiled by mrml (the Rust port of MJML), then CSS
inlined by css-inline, as clients that drop <style> blocks need.

Template bodies are MJML with Jinja2 expressions in them. They are compiled once per stored version,
with the Jinja2 syntax passing through untouched (it is text and attribute values to MJML), and the
result is rendered per message: a send costs a Jinja2 render, not an MJML compile.
"""

from __future__ import annotations

import css_inline
import mrml

# No web fonts: a <link> to a font host is a request to a third party from the reader's mail client
# (and css-inline would fetch it while inlining).
_RENDER = mrml.RenderOptions(fonts={})
# Media queries cannot be inlined: they stay in a <style> block (what makes the columns stack on a
# phone); every other rule is moved into style attributes.
_INLINER = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)


class MjmlError(Exception):
    """Markup that does not compile; the message says where."""


def compile_mjml(source: str) -> str:
    """The HTML of an MJML document, CSS inlined; MjmlError when it does not compile."""
    if "<mjml" not in source:
        raise MjmlError("the body is not an MJML document (it must start with <mjml>)")
    try:
        output = mrml.to_html(source, render_options=_RENDER)
    except OSError as exc:   # mrml reports parse errors as OSError
        raise MjmlError(f"MJML does not compile: {exc}") from exc
    warnings = [str(w) for w in getattr(output, "warnings", [])]
    if warnings:
        raise MjmlError("MJML: " + "; ".join(warnings))
    try:
        return str(_INLINER.inline(output.content))
    except (css_inline.InlineError, ValueError) as exc:
        raise MjmlError(f"CSS does not inline: {exc}") from exc
