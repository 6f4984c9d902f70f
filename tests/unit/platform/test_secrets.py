"""Secrets are never defaults, a process bound beyond loopback refuses missing or public ones, and
`nurture up`'s secret store generates them once and reuses them."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import pytest

from nurture import secretstore
from nurture.settings import Settings, SettingsError, is_loopback, load_settings

STRONG = {"NURTURE_SECRET": "s" * 43, "NURTURE_API_KEY": "k" * 43, "NURTURE_MESH_TOKEN": "m" * 43,
          "NURTURE_CRM_TOKENS": json.dumps({"crm": "c" * 43})}
ALL_FOUR = ("NURTURE_SECRET", "NURTURE_API_KEY", "NURTURE_MESH_TOKEN", "NURTURE_CRM_TOKENS")


def test_the_source_holds_no_usable_secret() -> None:
    defaults = Settings()
    assert defaults.secret == defaults.api_key == defaults.mesh_token == ""
    assert defaults.crm_tokens == {}
    assert defaults.insecure_secrets() == list(ALL_FOUR)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.4", "192.168.1.2", "nurture.example.com"])
def test_hosts_beyond_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_beyond_loopback_missing_secrets_are_refused_by_name() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({"NURTURE_BIND_HOST": "0.0.0.0"})
    for name in ALL_FOUR:
        assert name in str(err.value)


def test_beyond_loopback_the_old_public_defaults_are_refused_by_name() -> None:
    env = {**STRONG, "NURTURE_BIND_HOST": "0.0.0.0", "NURTURE_SECRET": "dev-secret-change-me",
           "NURTURE_CRM_TOKENS": json.dumps({"local-crm": "dev-crm-token", "other": "o" * 40})}
    with pytest.raises(SettingsError) as err:
        load_settings(env)
    message = str(err.value)
    assert "NURTURE_SECRET" in message and "NURTURE_CRM_TOKENS" in message
    assert "NURTURE_API_KEY" not in message and "NURTURE_MESH_TOKEN" not in message
    with pytest.raises(SettingsError, match="NURTURE_API_KEY"):
        load_settings({**STRONG, "NURTURE_API_KEY": "dev-key"}, bind_host="0.0.0.0")  # a flag, too


@pytest.mark.parametrize("name", ["NURTURE_SECRET_PREVIOUS", "NURTURE_MESH_TOKEN_PREVIOUS"])
@pytest.mark.parametrize("value", ["dev-secret-change-me", "dev-key", "  "])
def test_beyond_loopback_a_public_previous_key_is_refused_by_name(name: str, value: str) -> None:
    """A previous key is still accepted (links verify, mesh calls pass) while set: one this project
    shipped as a default, kept as the previous during a rotation away from it, is a key anyone holds."""
    with pytest.raises(SettingsError) as err:
        load_settings({**STRONG, "NURTURE_BIND_HOST": "0.0.0.0", name: value})
    assert name in str(err.value)
    assert load_settings({**STRONG, name: value}).bind_host == "127.0.0.1"  # loopback: nothing stops


def test_beyond_loopback_with_every_secret_set_starts() -> None:
    settings = load_settings({**STRONG, "NURTURE_BIND_HOST": "0.0.0.0", "NURTURE_MESH_TOKEN_PREVIOUS": "p" * 40})
    assert settings.mesh_tokens == ("m" * 43, "p" * 40)


def test_on_loopback_missing_secrets_do_not_stop_a_process() -> None:
    assert load_settings({}).bind_host == "127.0.0.1"


def test_the_store_generates_once_at_mode_0600_and_reuses(tmp_path: Path) -> None:
    first = secretstore.load_or_create(tmp_path)
    path = tmp_path / secretstore.FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values = dataclasses.asdict(first)
    assert set(values) == set(secretstore.KEYS) == set(json.loads(path.read_text()))
    assert len(set(values.values())) == len(secretstore.KEYS) and all(len(v) >= 40 for v in values.values())
    assert secretstore.load_or_create(tmp_path) == first
    path.chmod(0o644)  # widened by hand: put back
    assert secretstore.load_or_create(tmp_path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_store_fills_only_what_is_missing(tmp_path: Path) -> None:
    stored = secretstore.load_or_create(tmp_path)
    filled = secretstore.fill(load_settings({}, api_key="chosen"), stored)
    assert filled.api_key == "chosen"
    assert (filled.secret, filled.mesh_token) == (stored.secret, stored.mesh_token)
    assert filled.crm_tokens == {secretstore.LOCAL_CRM: stored.crm_token}
    assert filled.insecure_secrets() == []
    # A file from an older version lacking a value gets it added; what it had is kept.
    path = tmp_path / secretstore.FILE_NAME
    path.write_text(json.dumps({"secret": "kept", "from_a_newer_version": "also kept"}))
    again = secretstore.load_or_create(tmp_path)
    assert again.secret == "kept" and all(getattr(again, k) for k in secretstore.KEYS)
    assert json.loads(path.read_text())["from_a_newer_version"] == "also kept"


def test_a_broken_store_is_reported_not_replaced(tmp_path: Path) -> None:
    (tmp_path / secretstore.FILE_NAME).write_text("{not json")
    with pytest.raises(secretstore.SecretStoreError, match="move it away"):
        secretstore.load_or_create(tmp_path)
