"""WebAuthn pages and the JSON endpoints of its ceremonies (REQ-AUTH-STRONG).

Plain Django views, so the session and CSRF protection are those of the
pages: the script (static/pli/passkeys.js) posts JSON with the page's CSRF
token in the ``X-CSRFToken`` header. Each ceremony has two steps: *options*
(the challenge, kept in the session) and the browser's answer. Refused
assertions are counted by ``views._fail``, exactly like wrong TOTP codes, so
they lock the account and the address too.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pli.server.accounts import factors, throttle
from pli.server.accounts.errors import AccountError
from pli.server.accounts.models import User
from pli.server.accounts.session_auth import signed_in_user
from pli.server.accounts.sessions import (
    client_address,
    complete_login,
    next_page_after_login,
    pending_user,
    recently_authenticated,
)
from pli.server.accounts.views import _enrolling, _error, _fail, _locked

#: The largest answer a browser sends (an attestation object with a certificate chain).
MAX_BODY = 64 * 1024
# ``passkeys`` (and webauthn, 6.5 MB of modules) is imported by the views that use it:
# a server process that never sees a passkey ceremony does not load it (issue 5's
# memory target).


class CeremonyIn(BaseModel):
    """The browser's answer: the PublicKeyCredential as JSON, and a name for a new key."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    credential: dict[str, Any]
    name: str = Field(default="", max_length=200)


def _json(payload: dict[str, Any], status: int = 200) -> JsonResponse:
    return JsonResponse(payload, status=status)


def _refused(error: dict[str, str], status: int = 400, **extra: str) -> JsonResponse:
    return _json({**error, **extra}, status=status)


def _options(options: str) -> HttpResponse:
    response = HttpResponse(options, content_type="application/json")
    response["Cache-Control"] = "no-store"  # a challenge is never cached
    return response


def _body(request: HttpRequest) -> CeremonyIn | None:
    if len(request.body) > MAX_BODY:
        return None
    try:
        return CeremonyIn.model_validate(json.loads(request.body))
    except (ValueError, ValidationError):
        return None


def _webauthn_failed(error: dict[str, str]) -> dict[str, str]:
    # _fail speaks of codes; a refused key gets its own words (same throttles).
    if error["code"] == "bad_code":
        return _error("webauthn_failed", _("Clé de sécurité non reconnue."))
    return error


def _status(error: dict[str, str]) -> int:
    return 429 if error["code"] == "locked" else 400


# --- login: the second step after the passphrase ---------------------------------------------


def _login_expired() -> JsonResponse:
    return _refused(
        _error(
            "login_expired", _("La connexion a expiré : saisissez à nouveau votre phrase secrète.")
        ),
        401,
        redirect=reverse("accounts:login"),
    )


def _keys(request: HttpRequest, user: User) -> tuple[str, str]:
    return throttle.account_key(user.username), throttle.address_key(client_address(request))


@require_POST
def login_options_view(request: HttpRequest) -> HttpResponse:
    pending = pending_user(request)
    if pending is None:
        return _login_expired()
    user, _method = pending
    if throttle.locked(*_keys(request, user)):
        return _refused(_locked(), 429)
    try:
        from pli.server.accounts import passkeys  # noqa: PLC0415 - webauthn on first use

        options = passkeys.authentication_options(request, user)
    except AccountError as failure:
        return _refused(_error(failure.code, failure.message))
    if options is None:
        return _refused(_error("no_credential", _("Aucune clé de sécurité n'est enregistrée.")))
    return _options(options)


@require_POST
def login_verify_view(request: HttpRequest) -> HttpResponse:
    pending = pending_user(request)
    if pending is None:
        return _login_expired()
    user, method = pending
    keys = _keys(request, user)
    if throttle.locked(*keys):
        return _refused(_locked(), 429)
    body = _body(request)
    try:
        from pli.server.accounts import passkeys  # noqa: PLC0415 - webauthn on first use

        row = passkeys.verify_passkey(request, user, body.credential) if body else None
    except AccountError as failure:  # the server cannot do WebAuthn: not the user's fault
        return _refused(_error(failure.code, failure.message))
    if row is None:
        # A refused assertion is a failed second factor like a wrong code (REQ-AUTH-STRONG).
        error = _webauthn_failed(_fail(request, keys, user, "webauthn"))
        return _refused(error, _status(error))
    complete_login(request, user, f"{method}+webauthn")
    return _json({"redirect": next_page_after_login(request, user)})


# --- registration ----------------------------------------------------------------------------


def _register(request: HttpRequest, user: User, done: str) -> JsonResponse:
    body = _body(request)
    if body is None:
        return _refused(_error("bad_request", _("Réponse du navigateur illisible.")))
    try:
        from pli.server.accounts import passkeys  # noqa: PLC0415 - webauthn on first use

        passkeys.do_register_passkey(request, user, body.credential, body.name)
    except AccountError as failure:
        return _refused(_error(failure.code, failure.message))
    return _json({"redirect": done})


def _enrolling_user(request: HttpRequest) -> User | JsonResponse:
    user = _enrolling(request)
    if user is None or user.enrolled_at is not None:
        # Once enrolled, keys are added from the factors page (after re-authentication).
        return _refused(
            _error("enrolment_expired", _("L'inscription a expiré : recommencez.")),
            401,
            redirect=reverse("accounts:activate"),
        )
    if not user.has_usable_password():
        return _refused(
            _error("enrolment_incomplete", _("Choisissez d'abord une phrase secrète.")),
            400,
            redirect=reverse("accounts:enrol-passphrase"),
        )
    return user


@require_POST
def enrol_options_view(request: HttpRequest) -> HttpResponse:
    user = _enrolling_user(request)
    if isinstance(user, JsonResponse):
        return user
    return _registration_options(request, user)


@require_POST
def enrol_verify_view(request: HttpRequest) -> HttpResponse:
    user = _enrolling_user(request)
    if isinstance(user, JsonResponse):
        return user
    return _register(request, user, reverse("accounts:enrol-recovery"))


def _registration_options(request: HttpRequest, user: User) -> HttpResponse:
    try:
        from pli.server.accounts import passkeys  # noqa: PLC0415 - webauthn on first use

        return _options(passkeys.registration_options(request, user))
    except AccountError as failure:
        return _refused(_error(failure.code, failure.message))


def _reauth_url(after: str) -> str:
    return reverse("accounts:reauth") + "?next=" + after


@login_required
def add_view(request: HttpRequest) -> HttpResponse:
    """The page that registers a new key (a sensitive action: re-authentication first)."""
    if not recently_authenticated(request):
        return HttpResponseRedirect(_reauth_url(request.path))
    return render(request, "accounts/passkeys/add.html", {})


def _signed_in_user(request: HttpRequest) -> User | JsonResponse:
    user = request.user
    if not isinstance(user, User) or not user.is_authenticated:
        return _refused(
            _error("login_required", _("Connectez-vous d'abord.")),
            401,
            redirect=reverse("accounts:login"),
        )
    if not recently_authenticated(request):
        return _refused(
            _error("reauth_required", _("Confirmez d'abord votre identité.")),
            403,
            redirect=_reauth_url(reverse("accounts:passkey-add")),
        )
    return user


@require_POST
def add_options_view(request: HttpRequest) -> HttpResponse:
    user = _signed_in_user(request)
    if isinstance(user, JsonResponse):
        return user
    return _registration_options(request, user)


@require_POST
def add_verify_view(request: HttpRequest) -> HttpResponse:
    user = _signed_in_user(request)
    if isinstance(user, JsonResponse):
        return user
    return _register(request, user, reverse("accounts:factors"))


# --- removal ---------------------------------------------------------------------------------


@login_required
@require_POST
def remove_view(request: HttpRequest, credential_id: int) -> HttpResponse:
    if not recently_authenticated(request):
        # Back to the factors page afterwards: this URL takes only POST.
        return HttpResponseRedirect(_reauth_url(reverse("accounts:factors")))
    user = signed_in_user(request)
    try:
        from pli.server.accounts import passkeys  # noqa: PLC0415 - webauthn on first use

        passkeys.do_remove_passkey(request, user, credential_id)
    except AccountError as failure:
        return render(
            request,
            "accounts/factors.html",
            {
                "error": _error(failure.code, failure.message),
                "has_totp": factors.has_totp(user),
                "credentials": user.webauthn_credentials.order_by("created_at"),
                "recovery_left": factors.remaining_recovery_codes(user),
            },
            status=404 if failure.code == "not_found" else 400,
        )
    return redirect("accounts:factors")
