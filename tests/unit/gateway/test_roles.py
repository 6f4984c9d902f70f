"""Roles: which role a request needs, which keys carry which role, and settings that name a wrong role."""

from __future__ import annotations

import pytest

from gateway import roles
from nurture.settings import SettingsError, load_settings


def test_required_role() -> None:
    assert roles.required_role("GET", "/v1/leads/x") == "viewer"
    assert roles.required_role("head", "/v1/journeys") == "viewer"
    assert roles.required_role("POST", "/v1/journeys/w/publish") == "editor"
    assert roles.required_role("DELETE", "/v1/leads/x") == "editor"
    assert roles.required_role("GET", "/v1/admin/stats") == "admin"
    assert roles.allows("admin", "editor") and roles.allows("editor", "editor")
    assert not roles.allows("viewer", "editor") and not roles.allows("nobody", "viewer")


def test_keys_and_their_roles() -> None:
    settings = load_settings(environ={"NURTURE_API_KEY": "the-operators-key",
                                      "NURTURE_API_KEYS": '{"a-viewer-key": "viewer", "an-editor-key": "editor"}'})
    # The key from before roles keeps every power it had: admin.
    assert roles.role_of(settings, "the-operators-key") == "admin"
    assert roles.role_of(settings, "a-viewer-key") == "viewer"
    assert roles.role_of(settings, "an-editor-key") == "editor"
    assert roles.role_of(settings, "") is None and roles.role_of(settings, "a-viewer-ke") is None
    assert roles.role_of(settings, "é-not-latin") is None
    assert roles.role_by_fingerprint(settings, roles.fingerprint("an-editor-key")) == "editor"
    assert roles.role_by_fingerprint(settings, roles.fingerprint("gone")) is None
    # No key configured accepts nothing, not even an empty one.
    assert roles.role_of(load_settings(environ={}), "") is None


def test_a_wrong_role_or_a_public_key_fails_at_start() -> None:
    with pytest.raises(SettingsError, match="'owner'") as caught:
        load_settings(environ={"NURTURE_API_KEYS": '{"k-123456789": "owner"}'})
    assert "k-123456789" not in str(caught.value)  # never the key in an error
    exposed = {"NURTURE_BIND_HOST": "0.0.0.0", "NURTURE_SECRET": "s" * 20, "NURTURE_API_KEY": "k" * 20,
               "NURTURE_MESH_TOKEN": "m" * 20, "NURTURE_CRM_TOKENS": '{"c": "' + "c" * 20 + '"}'}
    load_settings(environ=exposed)
    with pytest.raises(SettingsError, match="NURTURE_API_KEYS"):
        load_settings(environ={**exposed, "NURTURE_API_KEYS": '{"dev-key": "viewer"}'})
    with pytest.raises(SettingsError, match="NURTURE_SESSION_SECRET"):
        load_settings(environ={**exposed, "NURTURE_SESSION_SECRET": "change-me"})
