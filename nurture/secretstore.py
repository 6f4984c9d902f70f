"""The secrets `nurture up` generates on first start and reuses after: `<data dir>/secrets.json`, mode 0600.

One random value each for the link-signing secret, the API key, the local CRM's token, the mesh key, the
local ad platform's token, the embedded Redis's password and the console's session-signing key
(`secrets.token_urlsafe(32)`: 256 bits).
A value set in the environment or by a flag wins over the stored one; the file only fills what is
missing. The file is created with O_EXCL at mode 0600 (never readable by others, not even for an
instant) and put back to 0600 when found wider. Losing it means new secrets on the next start: links
in mail already sent stop verifying (set the old value as NURTURE_SECRET_PREVIOUS to keep them) and the
CRM needs the new token.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from nurture.settings import Settings

FILE_NAME = "secrets.json"


@dataclass(frozen=True)
class StoredSecrets:
    """The values `secrets.json` holds, one per field (the file's keys are these names)."""

    secret: str
    api_key: str
    crm_token: str
    mesh_token: str
    redis_password: str
    ads_token: str
    session_secret: str
    site_key: str  # the development site key (website tracking), for the gateway's own origin


KEYS = tuple(f.name for f in fields(StoredSecrets))
LOCAL_CRM = "local-crm"  # the name the local CRM's token is filed under in NURTURE_CRM_TOKENS


class SecretStoreError(OSError):
    """The secrets file exists but cannot be read as one."""


def load_or_create(data_dir: Path) -> StoredSecrets:
    """The stored secrets under `data_dir`, generating the file (or any value it lacks) first."""
    path = data_dir / FILE_NAME
    stored: dict[str, str] = {}
    if path.exists():
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(0o600)
        try:
            loaded = json.loads(path.read_text())
        except ValueError as exc:
            raise SecretStoreError(f"{path} is not JSON ({exc}); move it away to generate new secrets") from exc
        if not isinstance(loaded, dict):
            raise SecretStoreError(f"{path} is not a JSON object; move it away to generate new secrets")
        stored = {str(k): str(v) for k, v in loaded.items() if v}
    missing = [k for k in KEYS if not stored.get(k)]
    if missing:
        stored.update({k: secrets.token_urlsafe(32) for k in missing})
        _write(path, stored)  # keys this version does not know are kept
    return StoredSecrets(**{k: stored[k] for k in KEYS})


def _write(path: Path, values: dict[str, str]) -> None:
    """Write atomically: a new 0600 file beside it, then rename over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(values, out, indent=2, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fill(settings: Settings, stored: StoredSecrets) -> Settings:
    """`settings` with every missing secret taken from the store (explicit values are kept)."""
    changes: dict[str, object] = {}
    for name in ("secret", "api_key", "mesh_token", "ads_token", "session_secret"):
        if not getattr(settings, name):
            changes[name] = getattr(stored, name)
    if not settings.crm_tokens:
        changes["crm_tokens"] = {LOCAL_CRM: stored.crm_token}
    if not settings.site_keys:
        public = urlsplit(settings.public_url)
        origins = sorted({f"{public.scheme}://{public.netloc}".lower(), f"http://127.0.0.1:{settings.http_port}",
                          f"http://localhost:{settings.http_port}"})
        changes["site_keys"] = json.dumps({stored.site_key: {"origins": origins}})
    return settings.with_overrides(**changes) if changes else settings
