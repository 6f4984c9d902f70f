"""An email click that lands on a tracked website carries who clicked: the redirect adds
`nurture_id=<signed token>` (gateway.tracking.linktoken) to destinations on a site key's origins, and the
snippet there identifies the visitor with it. Destinations elsewhere get nothing: the token is the
person's, not a third party's."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from gateway.tracking import linktoken
from gateway.tracking.keys import SiteKey, all_origins, url_origin


def identified_destination(url: str, lead_id: str, keys: dict[str, SiteKey], secret: str) -> str:
    if not lead_id or not secret or url_origin(url) not in all_origins(keys):
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != linktoken.PARAM]
    query.append((linktoken.PARAM, linktoken.sign(secret, lead_id, datetime.now(UTC))))
    return urlunsplit(parts._replace(query=urlencode(query)))
