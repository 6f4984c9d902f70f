"""`nurture up`'s development DKIM key and `nurture dkim`: a key made once in the data dir (0600) for the
sender's domain and reused; a configured key wins; the printed record is the key's."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from cli.dkim import main, sender_domain, with_dev_key
from nurture.settings import Settings
from services.messaging.domain.dkim import generate_key, load_signer


def test_the_development_key_is_made_once_and_reused(tmp_path: Path) -> None:
    first = with_dev_key(Settings(data_dir=tmp_path))
    key = tmp_path / "dkim" / "dev.pem"
    assert first.dkim_keys == {f"{sender_domain()}:dev": str(key)} and sender_domain() == "borderbridge.example"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    pem = key.read_bytes()
    again = with_dev_key(Settings(data_dir=tmp_path))
    assert again.dkim_keys == first.dkim_keys and key.read_bytes() == pem


def test_a_configured_key_wins(tmp_path: Path) -> None:
    configured = Settings(data_dir=tmp_path, dkim_keys={"x.example:s1": "/elsewhere.pem"})
    assert with_dev_key(configured) is configured
    assert not (tmp_path / "dkim").exists()


def test_nurture_dkim_prints_every_record_the_signing_one_first(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = tmp_path / "old.pem", tmp_path / "new.pem"
    generate_key(old)
    generate_key(new)
    keys = {"x.example:s1": str(old), "x.example:s2": str(new)}
    monkeypatch.setenv("NURTURE_DKIM_KEYS", json.dumps(keys))
    monkeypatch.setenv("NURTURE_DKIM_SELECTORS", '{"x.example": "s2"}')
    assert main(["--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    signer = load_signer(keys, {"x.example": "s2"})
    by_selector = {k.selector: k for k in signer.keys}
    assert out == ["; x.example selector s2: signs new mail",
                   f's2._domainkey.x.example. IN TXT "{by_selector["s2"].dns_txt}"',
                   "; x.example selector s1: keep published until mail signed with it is delivered",
                   f's1._domainkey.x.example. IN TXT "{by_selector["s1"].dns_txt}"']
    monkeypatch.setenv("NURTURE_DKIM_SELECTORS", "{}")   # two keys, none chosen: refused, saying why
    assert main(["--data-dir", str(tmp_path)]) == 2
    assert "name the one that signs" in capsys.readouterr().err
