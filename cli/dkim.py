"""DKIM keys for `nurture up` and the `nurture dkim` command.

With no key configured (`NURTURE_DKIM_KEYS`), `nurture up` makes a development key in its data dir
(`<data dir>/dkim/dev.pem`, mode 0600; never a key in the source) for the sender's domain and selector
`dev`, so local mail is signed like production mail. `nurture dkim` prints the TXT record(s) to publish.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nurture.datafiles import read_yaml
from nurture.settings import Settings, SettingsError, load_settings

CATALOG = Path(__file__).resolve().parent.parent / "services" / "messaging" / "data" / "templates" / "catalog.yaml"
DEV_SELECTOR = "dev"


def sender_domain() -> str:
    """The domain of the template catalog's sender (where mail comes from when nothing else is set)."""
    raw = read_yaml(CATALOG, empty={})
    address = str(((raw or {}).get("sender") or {}).get("address") or "")
    return address.rpartition("@")[2].lower()


def with_dev_key(settings: Settings) -> Settings:
    """The settings with a development DKIM key when none is configured (made on first use)."""
    if settings.dkim_keys:
        return settings
    from services.messaging.domain.dkim import generate_key

    path = settings.data_dir.resolve() / "dkim" / f"{DEV_SELECTOR}.pem"
    if not path.exists():
        generate_key(path)
    domain = settings.dkim_domain or sender_domain()
    return settings.with_overrides(dkim_keys={f"{domain}:{DEV_SELECTOR}": str(path)}, dkim_domain=domain)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nurture dkim", description="print the DKIM TXT records to publish")
    parser.add_argument("--data-dir", help="the data dir of `nurture up` (its development key)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(data_dir=Path(args.data_dir) if args.data_dir else None)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from services.messaging.domain.dkim import DkimError, load_signer

    settings = with_dev_key(settings)
    try:
        signer = load_signer(settings.dkim_keys, settings.dkim_selectors, settings.dkim_domain)
    except DkimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    signing = set(signer.signing.values())
    for key in sorted(signer.keys, key=lambda k: (k.domain, k not in signing, k.selector)):
        note = "signs new mail" if key in signing else "keep published until mail signed with it is delivered"
        print(f"; {key.domain} selector {key.selector}: {note}")
        print(f'{key.record_name}. IN TXT "{key.dns_txt}"')
    return 0
