"""A signed-in request reads its session, user, registry record and charter state in one query.

``pli.server.accounts.session_auth`` joins what Django and the session guard
asked in three queries (issue 5's ingest rate). These tests hold it to the
promise of its docstring: one query, and nothing kept from one request to the
next (a password change, a deactivation, a revocation or a new charter applies
to the very next request), and Django's own session-hash check still decides.

REQ-AUTH-STRONG, REQ-INFO-PRO.
"""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.sessions.middleware import SessionMiddleware
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils.functional import SimpleLazyObject

from pli.server.accounts.models import Charter, User, UserSession
from pli.server.accounts.session_auth import (
    _LOADED_USER,
    AuthenticationMiddleware,
    SessionStore,
    SessionUserBackend,
    signed_in_user,
)
from tests.accounts_support import PASSPHRASE, make_account, signed_in

pytestmark = [pytest.mark.django_db, pytest.mark.requirement("REQ-AUTH-STRONG")]

ME = "/api/accounts/me"


def _account(address: str) -> tuple[User, Client]:
    user, _ = make_account(address)
    client = signed_in(user)
    assert client.get(ME).status_code == 200
    return user, client


def test_an_authenticated_request_reads_session_user_record_and_charter_at_once() -> None:
    _user, client = _account("dr.une-requete@cabinet.pli.test")
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/api/uploads/limits").status_code == 200
    # The session, its user, its registry record and the charter state: one statement.
    assert len(queries.captured_queries) == 1, [q["sql"][:80] for q in queries]
    assert "django_session" in queries.captured_queries[0]["sql"]


def test_a_password_change_ends_the_session_at_the_next_request() -> None:
    user, client = _account("dr.mot-de-passe@cabinet.pli.test")
    user.set_password(PASSPHRASE + " changed")
    user.save()
    # Django's session-hash check still runs on the row read with the session.
    assert client.get(ME).status_code == 401


def test_a_deactivated_account_is_signed_out_at_the_next_request() -> None:
    user, client = _account("dr.desactive@cabinet.pli.test")
    User.objects.filter(pk=user.pk).update(is_active=False)
    assert client.get(ME).status_code == 401


def test_a_revoked_session_is_refused_at_the_next_request() -> None:
    user, client = _account("dr.revoque@cabinet.pli.test")
    UserSession.objects.filter(user=user).update(revoked_at=UserSession.objects.get().created_at)
    answer = client.get(ME)
    assert answer.status_code == 401
    assert answer.json()["code"] == "session_ended"


@pytest.mark.requirement("REQ-INFO-PRO")
def test_a_new_charter_applies_at_the_next_request() -> None:
    _user, client = _account("dr.charte@cabinet.pli.test")
    latest = Charter.objects.order_by("-version").first()
    assert latest is not None
    Charter.objects.create(version=latest.version + 1, text_fr="Charte 2", text_en="Charter 2")
    answer = client.get(ME)
    assert answer.status_code == 403
    assert answer.json()["code"] == "charter_required"


def test_the_backend_hands_over_only_the_user_of_the_asked_id() -> None:
    alice, _ = make_account("dr.alice-backend@cabinet.pli.test")
    bob, _ = make_account("dr.bob-backend@cabinet.pli.test")
    backend = SessionUserBackend()
    token = _LOADED_USER.set(alice)
    try:
        assert backend.get_user(alice.pk) is alice
        other = backend.get_user(bob.pk)  # not the row read with the session: read again
        assert other is not None and other.pk == bob.pk and other is not alice
    finally:
        _LOADED_USER.reset(token)
    # Outside a request's get_user, nothing is handed over.
    fresh = backend.get_user(alice.pk)
    assert fresh is not None and fresh is not alice


def test_an_unknown_or_expired_session_key_loads_nothing() -> None:
    store = SessionStore(session_key="x" * 32)
    assert store.load() == {}
    assert store.session_key is None  # a new key on the next save, as Django does
    assert store.loaded_user() is None


def test_a_session_opened_with_djangos_backend_still_works() -> None:
    # Sessions opened before session_auth name django.contrib.auth's ModelBackend.
    user, _ = make_account("dr.ancienne-session@cabinet.pli.test")
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    assert client.get(ME).status_code == 200


def test_a_view_is_given_the_signed_in_user_itself_not_its_lazy_proxy() -> None:
    """``signed_in_user``: the same user as ``request.user``, without the proxy (whose
    every attribute read is a call), and what the middleware read, not a second query."""
    user, client = _account("dr.sans-mandataire@cabinet.pli.test")
    request = RequestFactory().get(ME)
    request.COOKIES[settings.SESSION_COOKIE_NAME] = client.cookies[
        settings.SESSION_COOKIE_NAME
    ].value
    SessionMiddleware(lambda _request: None).process_request(request)  # type: ignore[arg-type]
    AuthenticationMiddleware(lambda _request: None).process_request(request)  # type: ignore[arg-type]
    assert isinstance(vars(request)["user"], SimpleLazyObject)
    with CaptureQueriesContext(connection) as queries:
        found = signed_in_user(request)
        assert signed_in_user(request) is found
    assert type(found) is User and found.pk == user.pk
    assert len(queries.captured_queries) == 1  # the session's one statement, read once
    # A user set on the request directly (as another middleware may) is returned as is.
    request.user = user
    assert signed_in_user(request) is user
