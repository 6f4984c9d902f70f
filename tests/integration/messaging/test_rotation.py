"""Rotating the link secret: links in mail already sent keep working while the previous secret is set,
new mail is signed with the current one, and dropping the previous one ends the old links."""

from __future__ import annotations

import re

import grpc
import pytest

from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.settings import Settings
from services.messaging.domain.tokens import Signer
from tests.conftest import mesh_channel, start_service
from tests.integration.messaging.conftest import Mesh
from tests.integration.messaging.harness import make_lead

pytestmark = pytest.mark.anyio


async def links(mesh: Mesh, lead_id: str, template: str) -> tuple[str, str]:
    """(click token, unsubscribe token) of the mail just sent to this lead."""
    await mesh.send(lead_id, template)
    await mesh.settle()
    mail = next(m for m in reversed(mesh.mails()) if m["To"].addresses[0].username == lead_id)
    text = mail.get_body(("plain",)).get_content()
    click = re.search(r"https://nurture\.example/t/c/(\S+)", text).group(1)  # type: ignore[union-attr]
    return click, mail["List-Unsubscribe"].strip("<>").rsplit("/", 1)[1]


async def track(settings: Settings, token: str) -> grpc.StatusCode:
    """Restart messaging on `settings` (same data dir, Redis, sink) and follow one click link."""
    running = await start_service("messaging", settings)
    try:
        async with mesh_channel(running.address) as ch:
            try:
                await messaging_pb2_grpc.MessagingStub(ch).Track(
                    messaging_pb2.TrackRequest(token=token, kind="click"), timeout=5)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK
    finally:
        await running.stop(0)


async def test_rotation_keeps_old_links_until_the_previous_secret_is_dropped(mesh: Mesh) -> None:
    mesh.scoring.add(make_lead("rot"))
    old_click, old_unsub = await links(mesh, "rot", "entrepreneur.email_01")
    assert Signer(mesh.settings.secret).verify(old_click, kind="click")
    await mesh.running.stop(0)

    rotated = mesh.settings.with_overrides(secret="rotated-secret", secret_previous=mesh.settings.secret)
    assert await track(rotated, old_click) == grpc.StatusCode.OK
    # New mail is signed with the current secret only.
    running = await start_service("messaging", rotated)
    ch = mesh_channel(running.address)
    mesh.stub, mesh.admin = messaging_pb2_grpc.MessagingStub(ch), type(mesh.admin)(ch)
    try:
        mesh.scoring.add(make_lead("rot2"))
        new_click, _ = await links(mesh, "rot2", "entrepreneur.email_01")
        done = await mesh.stub.Unsubscribe(messaging_pb2.UnsubscribeRequest(token=old_unsub, dry_run=True), timeout=5)
        assert done.lead_id == "rot"
    finally:
        await ch.close()
        await running.stop(0)
    assert Signer("rotated-secret").verify(new_click, kind="click")
    with pytest.raises(ValueError):
        Signer(mesh.settings.secret).verify(new_click)

    done_rotating = rotated.with_overrides(secret_previous="")
    assert await track(done_rotating, old_click) == grpc.StatusCode.INVALID_ARGUMENT
    assert await track(done_rotating, new_click) == grpc.StatusCode.OK
