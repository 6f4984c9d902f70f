"""An email that speaks for the lead's salesperson comes from them, is signed by them, and its booking
button is their own meeting link; without an assigned owner the team signs, as in any email."""

from __future__ import annotations

import pytest

from services.messaging.domain.catalog import Catalog
from tests.integration.messaging.conftest import Mesh
from tests.integration.messaging.harness import make_lead

pytestmark = pytest.mark.anyio
OWNER = {"sales_owner": "ana.costa@borderbridge.example",
         "meeting_link": "https://meet.borderbridge.example/ana-costa"}


async def test_the_specialist_note_comes_from_and_is_signed_by_the_assigned_owner(mesh: Mesh) -> None:
    mesh.scoring.add(make_lead("own", attributes={"profession": "nurse", **OWNER}))
    await mesh.send("own", "high_engagement.email_05")
    await mesh.settle()
    [mail] = mesh.mails()
    assert mail["From"].addresses[0].addr_spec == "ana.costa@borderbridge.example"
    assert mail["From"].addresses[0].display_name == "Ana Costa (BorderBridge)"
    assert mail["Reply-To"].addresses[0].addr_spec == "ana.costa@borderbridge.example"
    text = mail.get_body(("plain",)).get_content()
    assert "Warm regards,\nAna Costa\nYour immigration specialist, BorderBridge" in text.replace("\r\n", "\n")
    assert "The BorderBridge team" not in text


async def test_without_an_owner_the_team_signs_and_the_platform_sends(mesh: Mesh) -> None:
    mesh.scoring.add(make_lead("none"))
    await mesh.send("none", "high_engagement.email_05")
    await mesh.settle()
    [mail] = mesh.mails()
    assert mail["From"].addresses[0].addr_spec == Catalog().sender_address
    assert "Reply-To" not in mail
    assert "The BorderBridge team" in mail.get_body(("plain",)).get_content()


def test_meeting_buttons_use_the_owners_link_when_known() -> None:
    catalog = Catalog()
    lead = make_lead("x", attributes={"profession": "nurse", **OWNER})
    consultation = next(k for k, s in catalog.specs.items() if s.cta_path == "/consultation/skilled")
    for key in ("high_engagement.email_05", consultation):
        rendered = catalog.render(key, lead)
        assert rendered.links == (OWNER["meeting_link"],), key
    plain = catalog.render("high_engagement.email_05", make_lead("y"))
    assert plain.links[0].startswith(catalog.site_url) and plain.sender is None
    # Only a web address becomes a button; an odd owner value is not a sender.
    odd = catalog.render("high_engagement.email_05", make_lead("z", attributes={
        "meeting_link": "javascript:alert(1)", "sales_owner": "x@y.example\r\nBcc: a@b.example"}))
    assert odd.links[0].startswith(catalog.site_url) and odd.sender is None


@pytest.mark.parametrize("name", ["Ana Costa (BorderBridge)", "J. Smith", 'Ana "AC" Costa', "O'Brien, Pat",
                                  "back\\slash", "Zoë Ørsted", "plain name"])
def test_display_names_survive_the_header_whatever_they_hold(name: str) -> None:
    from email import message_from_bytes, policy

    from services.messaging.domain.mime import _address

    parsed = message_from_bytes(f"To: {_address(name, 'a@example.com')}\r\n\r\n".encode(), policy=policy.default)
    assert parsed["To"].addresses[0].display_name == name
    assert parsed["To"].addresses[0].addr_spec == "a@example.com"
