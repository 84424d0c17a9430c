"""Operator roles never reach correspondence (REQ-ADMIN-LIMITS, REQ-DATA-ADMIN).

The console and the API give an operator administrator, a DPO and support
staff routing metadata at most: never a subject, a body, an attachment or an
envelope, which the server could not open anyway.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib import admin
from django.test import Client

from pli.server.accounts.models import Role
from pli.server.messaging.models import Message
from tests.accounts_support import make_account, signed_in
from tests.conftest import Pki
from tests.test_messaging_api import a_to_b, make_world, send

pytestmark = pytest.mark.django_db

#: Field names that would hold correspondence if any model had them.
_CONTENT_WORDS = ("subject", "body", "content", "attachment", "plaintext", "envelope_der")


def test_no_model_of_the_console_has_a_content_field() -> None:
    for model in admin.site._registry:
        names = [field.name for field in model._meta.get_fields()]
        assert not [n for n in names if any(word in n for word in _CONTENT_WORDS)], (
            model.__name__,
            names,
        )


@pytest.mark.requirement("REQ-ADMIN-LIMITS")
@pytest.mark.requirement("REQ-DATA-ADMIN")
@pytest.mark.parametrize("role", [Role.OPERATOR_ADMIN, Role.DPO, Role.SUPPORT])
def test_operator_roles_get_no_message_through_the_api_or_the_console(
    role: str, pki: Pki, tmp_path: Path, settings: object
) -> None:
    settings.BLOB_DIR = tmp_path / "blobs"  # type: ignore[attr-defined]
    world = make_world(pki, tmp_path / "blobs")
    sent = send(
        world.client(world.a), world.mailbox_a.address, [world.mailbox_b.address], a_to_b(world)
    )
    assert sent.status_code == 201, sent.content
    message_id = sent.json()["id"]
    operator, _ = make_account(f"{role}.limits@operator.pli.test", role=role)
    client = signed_in(operator)
    for path in (
        f"/api/messages/{message_id}",
        f"/api/messages/{message_id}/envelope",
        f"/api/mailboxes/{world.mailbox_b.address}/messages",
    ):
        assert client.get(path).status_code == 404, path
    message = Message.objects.get(public_id=message_id)
    page = client.get(f"/admin/messaging/message/{message.pk}/change/")
    # Administrators see routing metadata only; the others do not even see that.
    assert page.status_code == (200 if role == Role.OPERATOR_ADMIN else 403)
    html = page.content.decode()
    # Neither the blob id (when the envelope is in the blob store) nor its digest, nor
    # any way to download the envelope.
    for hidden in filter(None, (message.envelope_blob, message.envelope_sha256)):
        assert hidden not in html
    assert f"/api/messages/{message_id}/envelope" not in html


def test_outsiders_reach_no_console_page() -> None:
    assert Client().get("/admin/messaging/message/").status_code == 302
