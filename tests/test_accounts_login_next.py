"""The login keeps the page asked for (``?next=``) through all its steps, and only a page
of this site: never an open redirect. Without one, a professional lands on the mailbox."""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

import pyotp
import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from pli.server.accounts import factors
from pli.server.accounts.models import Role, User, UserSession
from tests.accounts_support import (
    PASSPHRASE,
    ensure_charter,
    make_account,
    make_professional,
    signed_in,
)

pytestmark = pytest.mark.django_db

LOGIN = "/compte/connexion/"
SECOND = "/compte/connexion/second-facteur/"
MAILBOX = "/messagerie/"


def _code(secret: str) -> str:
    """The code of the next time step (the current one may be used already)."""
    return pyotp.TOTP(secret).at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))


def _log_in(client: Client, username: str, secret: str, next_page: str | None) -> Any:
    data = {"username": username, "passphrase": PASSPHRASE}
    if next_page is not None:
        data["next"] = next_page
    response = client.post(LOGIN, data)
    assert response.status_code == 302 and response["Location"] == SECOND
    return client.post(SECOND, {"code": _code(secret)})


def test_the_mailbox_asked_for_logged_out_is_where_the_login_ends() -> None:
    user, secret = make_account("dr.next@cabinet.pli.test")
    client = Client()
    asked = client.get(MAILBOX + "?dossier=sent")
    assert asked.status_code == 302
    login_url = asked["Location"]
    assert login_url == LOGIN + "?next=/messagerie/%3Fdossier%3Dsent"
    page = html.unescape(client.get(login_url).content.decode())
    # The form carries it to the passphrase step (the form's action has no query string).
    assert '<input type="hidden" name="next" value="/messagerie/?dossier=sent">' in page

    response = _log_in(client, user.username, secret, "/messagerie/?dossier=sent")
    assert response.status_code == 302
    assert response["Location"] == "/messagerie/?dossier=sent"


def test_a_wrong_passphrase_keeps_the_page_asked_for_in_the_form() -> None:
    user, _secret = make_account("dr.next.retry@cabinet.pli.test")
    response = Client().post(
        LOGIN, {"username": user.username, "passphrase": "wrong" * 4, "next": "/compte/sessions/"}
    )
    assert response.status_code == 400
    hidden = '<input type="hidden" name="next" value="/compte/sessions/">'
    assert hidden in response.content.decode()


def test_without_a_page_asked_for_a_professional_lands_on_the_mailbox() -> None:
    user, secret = make_account("dr.home@cabinet.pli.test")
    response = _log_in(Client(), user.username, secret, None)
    assert response.status_code == 302 and response["Location"] == MAILBOX


def test_without_a_page_asked_for_the_operator_staff_land_on_the_directory() -> None:
    # They have no mailbox of their own.
    admin, secret = make_account("admin.home@operator.pli.test", role=Role.OPERATOR_ADMIN)
    response = _log_in(Client(), admin.username, secret, None)
    assert response.status_code == 302 and response["Location"] == reverse("directory-search")


@pytest.mark.parametrize(
    "hostile",
    [
        "https://evil.example/",
        "//evil.example/messagerie/",
        "/\\evil.example/",
        "\\\\evil.example",
        "http://testserver/messagerie/",  # even this host: only a path is a page of ours
        "javascript:alert(1)",
        "/messagerie/\nSet-Cookie: x=1",
        "messagerie/",
    ],
)
def test_an_open_redirect_attempt_lands_on_the_mailbox(hostile: str) -> None:
    user, secret = make_account("dr.phished@cabinet.pli.test")
    client = Client()
    page = client.get(LOGIN, {"next": hostile}).content.decode()
    login_form = page.split(f'action="{LOGIN}"', 1)[1].split("</form>", 1)[0]
    assert 'name="next"' not in login_form
    response = _log_in(client, user.username, secret, hostile)
    assert response.status_code == 302 and response["Location"] == MAILBOX


def test_an_earlier_attempt_leaves_no_page_asked_for_behind() -> None:
    user, secret = make_account("dr.stale@cabinet.pli.test")
    client = Client()
    client.post(LOGIN, {"username": user.username, "passphrase": PASSPHRASE, "next": "/annuaire/"})
    # Back to the login page, without a next this time (the first factor again).
    response = _log_in(client, user.username, secret, None)
    assert response["Location"] == MAILBOX


def test_the_page_asked_for_survives_an_enrolment_finished_at_login() -> None:
    """An enrolment left after the passphrase: the login goes through the remaining steps
    (authenticator, recovery codes, charter), then to the page asked for."""
    mailbox = make_professional("dr.halfway@cabinet.pli.test")
    User.objects.create_user(
        username=mailbox.address,
        email=mailbox.address,
        password=PASSPHRASE,
        professional=mailbox.professional,
    )
    client = Client()
    response = client.post(
        LOGIN,
        {"username": mailbox.address, "passphrase": PASSPHRASE, "next": "/compte/sessions/"},
    )
    assert response.status_code == 302
    assert response["Location"] == "/compte/inscription/authentificateur/"
    secret = client.get(response["Location"]).context["secret"]
    response = client.post(response["Location"], {"code": pyotp.TOTP(secret).now()})
    assert response["Location"] == "/compte/inscription/codes-de-secours/"
    client.get(response["Location"])
    response = client.post(response["Location"])
    assert response["Location"] == "/compte/inscription/charte/"
    charter = ensure_charter()
    response = client.post(response["Location"], {"version": charter.version, "accept": "on"})
    assert response.status_code == 302 and response["Location"] == "/compte/sessions/"
    assert factors.has_totp(User.objects.get(username=mailbox.address))


def test_a_recovery_code_login_goes_to_the_factors_page_whatever_was_asked() -> None:
    user, _secret = make_account("dr.lost.phone@cabinet.pli.test")
    (code, *_rest) = factors.new_recovery_codes(user)
    client = Client()
    client.post(
        LOGIN, {"username": user.username, "passphrase": PASSPHRASE, "next": "/messagerie/"}
    )
    response = client.post("/compte/connexion/secours/", {"code": code})
    assert response.status_code == 302 and response["Location"] == "/compte/facteurs/"


def test_after_an_idle_timeout_the_login_returns_to_the_page_the_person_was_on() -> None:
    user, secret = make_account("dr.next.idle@cabinet.pli.test")
    client = signed_in(user)
    assert client.get("/compte/sessions/").status_code == 200
    UserSession.objects.filter(user=user).update(
        last_seen_at=timezone.now() - dt.timedelta(minutes=16)
    )
    ended = client.get(MAILBOX + "?dossier=archive")
    assert ended.status_code == 302
    assert ended["Location"] == LOGIN + "?ended=idle&next=%2Fmessagerie%2F%3Fdossier%3Darchive"
    page = html.unescape(client.get(ended["Location"]).content.decode())
    assert '<input type="hidden" name="next" value="/messagerie/?dossier=archive">' in page
    response = _log_in(client, user.username, secret, "/messagerie/?dossier=archive")
    assert response["Location"] == "/messagerie/?dossier=archive"

    # A form sent after the timeout returns to nothing: its target may answer only a POST.
    UserSession.objects.filter(user=user).update(
        last_seen_at=timezone.now() - dt.timedelta(minutes=16)
    )
    posted = client.post("/compte/sessions/", {"session": "1"})
    assert posted["Location"] == LOGIN + "?ended=idle"
