"""What a person sees in the web mail, in a real browser: the UI review's findings.

Each test reads the page as the doctor does (Playwright's roles, labels and
texts in headless Chromium), on pytest-django's live server, signed in as after
the login page (the vault unlocked) through the Django test client, whose
cookies the browser takes (tests/test_webmail_review_a11y.py's tabs).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from pli.server.accounts.models import User
from pli.server.directory.models import MailboxCertificate
from pli.server.messaging.models import MessageCopy
from tests.test_webmail import (  # noqa: F401 - fixtures, used by name
    A,
    B,
    ca_directory,
    compose,
    key_pool,
    operator,
    sent_id,
    unlocked,
    valid_nir,
    vault_user,
)
from tests.test_webmail_browser import READING, browser  # noqa: F401 - fixture
from tests.test_webmail_review_a11y import base_url, tabs  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db(transaction=True)

SUBJECT = "Avis cardiologique réf. 2026-117"


@pytest.fixture
def tab(tabs: Any) -> Any:  # noqa: F811 - the fixture imported above
    """Opens a browser tab for a signed-in Django test client (see the a11y tests' tabs)."""
    return tabs


@pytest.fixture
def people() -> dict[str, User]:
    return {
        "a": vault_user(A, organisation="Hôpital A", last_name="Martin", profession="Cardiologue"),
        "b": vault_user(B, organisation="Clinique B", last_name="Durand", profession="Médecin"),
    }


def test_the_patient_is_shown_as_people_read_a_nir(people: dict[str, User], tab: Any) -> None:
    message_id = sent_id(compose(unlocked(people["a"]), patient_id=valid_nir()))
    assert valid_nir() == "185057800608491"
    b = tab(unlocked(people["b"])).page
    b.goto(f"/messagerie/message/{message_id}/?boite={B}")
    headers = b.locator("dl.headers")
    expect(headers).to_contain_text("NIR 1 85 05 78 006 084 91")
    expect(headers).not_to_contain_text("nir:")
    b.get_by_role("link", name="Transférer").click()
    b.wait_for_url("**/transferer/**")
    expect(b.get_by_role("group", name="Patient concerné (facultatif)")).to_contain_text(
        re.compile(r"Patient du message transféré :\s+NIR 1 85 05 78 006 084 91")
    )


def test_deleting_from_the_trash_asks_first_and_cancel_keeps_the_message(
    people: dict[str, User], tab: Any
) -> None:
    message_id = sent_id(compose(unlocked(people["a"])))
    b = tab(unlocked(people["b"])).page
    reading = f"/messagerie/message/{message_id}/?boite={B}"
    b.goto(reading)
    b.get_by_role("button", name="Supprimer", exact=True).click()
    expect(b.get_by_role("status")).to_have_text("Message mis à la corbeille.")
    b.goto(reading)
    b.get_by_role("button", name="Supprimer définitivement").click()
    question = b.get_by_role("region", name="Supprimer définitivement ce message ?")
    expect(question).to_contain_text("Cette action est irréversible")
    expect(question).to_have_accessible_description(re.compile("Cette action est irréversible"))
    assert MessageCopy.objects.filter(mailbox__address=B, message__public_id=message_id).exists()
    # Cancel: back to the message, still in the trash.
    b.get_by_role("link", name="Annuler").click()
    b.wait_for_url(READING)
    expect(b.get_by_role("heading", level=1)).to_have_text(SUBJECT)
    copy = MessageCopy.objects.get(mailbox__address=B, message__public_id=message_id)
    assert copy.folder == "trash"
    # Confirm: gone.
    b.get_by_role("button", name="Supprimer définitivement").click()
    b.get_by_role("button", name="Confirmer la suppression définitive").click()
    expect(b.get_by_role("status")).to_have_text("Message supprimé définitivement.")
    assert not MessageCopy.objects.filter(pk=copy.pk).exists()


def test_deleting_a_message_says_delete_in_english(people: dict[str, User], tab: Any) -> None:
    message_id = sent_id(compose(unlocked(people["a"])))
    b = tab(unlocked(people["b"]), "en-GB").page
    b.goto(f"/messagerie/message/{message_id}/?boite={B}")
    actions = b.get_by_role("group", name="Actions on this message")
    expect(actions.get_by_role("button", name="Delete", exact=True)).to_be_visible()
    expect(actions.get_by_role("button", name="Remove")).to_have_count(0)
    actions.get_by_role("button", name="Delete", exact=True).click()
    expect(b.get_by_role("status")).to_have_text("Message moved to the trash.")
    b.goto(f"/messagerie/message/{message_id}/?boite={B}")
    b.get_by_role("button", name="Delete permanently").click()
    expect(b.get_by_role("heading", level=1)).to_have_text("Delete this message permanently?")
    expect(b.get_by_role("button", name="Confirm permanent deletion")).to_be_visible()
    expect(b.get_by_role("link", name="Cancel")).to_be_visible()


def test_a_recipient_without_a_valid_certificate_is_flagged_before_sending_and_named(
    people: dict[str, User], tab: Any
) -> None:
    MailboxCertificate.objects.filter(mailbox__address=B).update(revoked_at=timezone.now())
    a = tab(unlocked(people["a"])).page
    a.goto("/messagerie/nouveau/")
    recipients = a.get_by_label("À", exact=True)
    recipients.fill(B)
    recipients.press("Tab")  # the page checks the recipients as they are typed
    check = a.get_by_role("region", name="Vérification des destinataires")
    expect(check).to_contain_text("Dr Alice Durand")
    expect(check).to_contain_text("Cette boîte n'a pas de certificat valide")
    a.get_by_role("checkbox", name=re.compile("Dr Alice Durand")).check()
    a.get_by_label("Objet").fill(SUBJECT)
    a.get_by_role("button", name="Signer, chiffrer et envoyer").click()
    refused = a.get_by_role("alert")
    expect(refused).to_contain_text(
        "Ces boîtes n'ont pas de certificat valide, le message ne peut pas leur être "
        f"chiffré : {B}."
    )
    # Without the script, the page as answered says it in the check box too.
    expect(check).to_contain_text("Cette boîte n'a pas de certificat valide")


def test_a_read_receipt_is_labelled_so_in_the_thread_and_the_folder(
    people: dict[str, User], tab: Any
) -> None:
    a_client, b_client = unlocked(people["a"]), unlocked(people["b"])
    message_id = sent_id(compose(a_client))
    b_client.get(f"/messagerie/message/{message_id}/?boite={B}")  # read: a receipt goes to A
    path = f"/messagerie/message/{message_id}/repondre/?boite={B}"
    sent_id(compose(b_client, sender=B, to=A, confirm=(), subject=f"RE : {SUBJECT}", path=path))

    a = tab(a_client).page
    a.goto(f"/messagerie/message/{message_id}/?boite={A}")
    thread = a.get_by_role("region", name="Dans le même fil")
    entries = thread.get_by_role("listitem")
    expect(entries).to_have_count(2)
    expect(entries.nth(0)).to_contain_text(
        re.compile(r"^Accusé de lecture — De : Dr Alice Durand — ")
    )
    expect(entries.nth(1)).to_contain_text(
        re.compile(rf"^RE : {re.escape(SUBJECT)} — De : Dr Alice Durand — ")
    )
    expect(thread.get_by_role("link", name="Accusé de lecture")).to_have_count(1)
    expect(thread).not_to_contain_text("Message de")

    a.goto("/messagerie/")
    rows = a.get_by_role("table").get_by_role("row")
    receipt = rows.filter(has_text="Accusé de lecture :")
    expect(receipt.locator(".tag")).to_have_text("Accusé de lecture")
    # A regular expression is case-sensitive: "lectuRE : Avis" is not the reply.
    reply = rows.filter(has_text=re.compile(f"RE : {re.escape(SUBJECT)}"))
    expect(reply).to_have_count(1)
    expect(reply.locator(".tag")).to_have_count(0)


@pytest.mark.parametrize(
    ("locale", "confirmation", "sealing"),
    [
        (
            "fr-FR",
            "J'ai vérifié : Dr Alice Durand est bien le destinataire voulu",
            (
                "Le serveur signe le message avec votre clé, déverrouillée pour cette session, et "
                "le chiffre pour la boîte de chaque destinataire et pour la boîte d'envoi avant de "
                "l'enregistrer : seuls les titulaires de ces boîtes pourront le lire (vous, vos "
                "destinataires et, pour une boîte de structure, ses membres). Il n'en garde jamais "
                "de copie en clair."
            ),
        ),
        (
            "en-GB",
            "I have checked: Dr Alice Durand is the intended recipient",
            (
                "The server signs the message with your key, unlocked for this session, and "
                "encrypts it for each recipient's mailbox and for the sending mailbox before "
                "storing it: only the holders of these mailboxes can read it (you, your "
                "recipients and, for an organisation's mailbox, its members). It never keeps "
                "an unencrypted copy."
            ),
        ),
    ],
    ids=["fr", "en"],
)
def test_the_compose_page_says_who_can_read_and_asks_to_confirm_whatever_the_name(
    people: dict[str, User], tab: Any, locale: str, confirmation: str, sealing: str
) -> None:
    a = tab(unlocked(people["a"]), locale).page
    a.goto(f"/messagerie/nouveau/?a={B}")
    expect(a.get_by_text(sealing, exact=True)).to_be_visible()
    # No "que" before the name: "qu'Agnès", "qu'Hélène" never need eliding.
    expect(a.get_by_role("checkbox", name=confirmation, exact=True)).to_be_visible()
