"""JSON login for API clients: the ``pli`` command line, the SDK, practice software (REQ-LPS).

The same two steps as the web login (``views.login_view`` then
``views.second_factor_view``), through the same functions, so that the API is
no weaker door: the same throttles on the account and the source address,
the same audit events (``auth.login_failed``, ``auth.lockout``,
``auth.login``), the same answer and the same time for an unknown account
as for a wrong passphrase, and a session only after the second factor
(REQ-AUTH-STRONG).

- ``GET /api/auth/csrf`` sets the CSRF cookie and returns its token;
- ``POST /api/auth/login`` ``{"username", "passphrase"}`` → ``{"next": "second_factor"}``;
- ``POST /api/auth/second-factor`` ``{"code"}`` (a TOTP code, or a recovery code)
  → the session (cookie ``pli_session``) and the new CSRF token;
- ``POST /api/auth/logout``.

CSRF stays on. Every ``POST`` carries ``X-CSRFToken`` (and, over HTTPS,
``Origin``), here as on every endpoint: django-ninja checks it for the
authenticated endpoints (``django_auth``), and these views check it
themselves because they run before there is a session — a forged login
would sign a victim's browser into the attacker's account ("login CSRF").

Differences from the web, on purpose: no vault unlock (API clients keep their
keys on the workstation and never send a key passphrase here); an account
whose enrolment is unfinished is told so (``enrolment_incomplete``) once its
passphrase is right, since enrolment happens in the browser; WebAuthn is not
offered (an authenticator needs a browser): TOTP or a recovery code.
"""

from __future__ import annotations

import re
from typing import TypeVar

from django.contrib.auth import logout
from django.contrib.auth.hashers import check_password
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.utils.translation import gettext as _
from ninja import Field, Router, Status
from ninja.security import django_auth
from ninja.utils import check_csrf
from pydantic import BaseModel, ValidationError

from pli.server.accounts import factors, throttle
from pli.server.accounts.actions import has_second_factor, passphrase_login_refusal
from pli.server.accounts.custody import lock_vault
from pli.server.accounts.hashers import timing_equaliser_hash
from pli.server.accounts.models import User
from pli.server.accounts.sessions import (
    begin_second_factor,
    client_address,
    complete_login,
    current_record,
    do_revoke_session,
    pending_user,
)
from pli.server.accounts.views import _fail, _locked
from pli.server.audit.actions import do_record_event
from pli.server.validation import StrictSchema, field_errors

router = Router(tags=["auth"], auth=None)

#: A login body is two short strings; anything far larger is not one (read no further).
MAX_BODY = 16 * 1024
#: A TOTP code is six digits (RFC 6238 as configured in factors.py); recovery codes are letters.
_TOTP = re.compile(r"[0-9]{6}")
_T = TypeVar("_T", bound=BaseModel)
_STATUS = {
    "bad_request": 422,
    "csrf_failed": 403,
    "bad_credentials": 401,
    "bad_code": 401,
    "locked": 429,
    "login_required": 401,
    "enrolment_incomplete": 403,
    "no_second_factor": 403,
    "account_inactive": 403,
}


class _Strict(StrictSchema):
    pass


class LoginIn(_Strict):
    username: str = Field(max_length=254)
    passphrase: str = Field(max_length=1024)


class CodeIn(_Strict):
    #: Six TOTP digits, or a recovery code (``XXXX-XXXX-XXXX-XXXX``, dashes optional).
    code: str = Field(max_length=64)


class CsrfOut(_Strict):
    csrf_token: str


class NextOut(_Strict):
    next: str


class LoggedInOut(_Strict):
    username: str
    method: str
    #: Logging in rotates the CSRF token (Django does, against fixation): use this one now.
    csrf_token: str


class LoggedOutOut(_Strict):
    logged_out: bool


class ErrorOut(_Strict):
    code: str
    message: str
    details: dict[str, object] = Field(default_factory=dict)


class _Refused(Exception):
    def __init__(self, code: str, message: str, details: dict[str, object] | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.message = message
        self.details = details or {}


def _answer(error: dict[str, str] | _Refused) -> Status[ErrorOut]:
    if isinstance(error, _Refused):
        code, message, details = error.code, error.message, error.details
    else:
        code, message, details = error["code"], error["message"], {}
    return Status(_STATUS.get(code, 400), ErrorOut(code=code, message=message, details=details))


def _checked_body(request: HttpRequest, model: type[_T]) -> _T:
    """CSRF first (nothing is read or counted for a forged request), then the strict body."""
    if check_csrf(request) is not None:
        raise _Refused(
            "csrf_failed",
            _("Jeton CSRF absent ou invalide : demandez-en un (GET /api/auth/csrf)."),
        )
    try:
        announced = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        announced = 0
    raw = b"" if announced > MAX_BODY else request.read(MAX_BODY + 1)
    if announced > MAX_BODY or len(raw) > MAX_BODY or request.content_type != "application/json":
        raise _Refused("bad_request", _("Requête invalide."))
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise _Refused(
            "bad_request",
            _("Requête invalide."),
            {"errors": field_errors(error)},
        ) from None


_REFUSALS: dict[int, type[ErrorOut]] = {401: ErrorOut, 403: ErrorOut, 422: ErrorOut, 429: ErrorOut}


@router.get("/csrf", response=CsrfOut, summary="Jeton CSRF (et son cookie) pour les requêtes POST")
def csrf_token(request: HttpRequest) -> CsrfOut:
    # get_token marks the cookie for the CSRF middleware, which sets it on the response.
    return CsrfOut(csrf_token=get_token(request))


@router.post(
    "/login",
    response={200: NextOut, **_REFUSALS},
    summary="Connexion, premier facteur (phrase secrète)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": LoginIn.model_json_schema()}},
        }
    },
)
def login(request: HttpRequest) -> Status[NextOut] | Status[ErrorOut]:
    try:
        body = _checked_body(request, LoginIn)
    except _Refused as refused:
        return _answer(refused)
    username = body.username.strip().lower()
    keys = (throttle.account_key(username), throttle.address_key(client_address(request)))
    if throttle.locked(*keys):
        return _answer(_locked())
    user = User.objects.filter(username=username, is_active=True).first()
    if user is not None and user.has_usable_password():
        valid = check_password(body.passphrase, user.password)
    else:
        # As long as a real check: the answer's time does not tell which accounts exist.
        check_password(body.passphrase, timing_equaliser_hash())
        valid = False
    if user is None or not valid:
        return _answer(_fail(request, keys, user, "passphrase"))
    refusal = passphrase_login_refusal(user)
    if refusal is not None:
        return _answer(_Refused(refusal.code, refusal.message))
    if not has_second_factor(user):  # an unfinished enrolment: it goes on in the browser
        return _answer(
            _Refused(
                "enrolment_incomplete",
                _("Terminez votre inscription dans le navigateur avant d'utiliser l'API."),
            )
        )
    begin_second_factor(request, user, "passphrase")
    return Status(200, NextOut(next="second_factor"))


@router.post(
    "/second-factor",
    response={200: LoggedInOut, **_REFUSALS},
    summary="Connexion, second facteur (code TOTP ou code de secours)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": CodeIn.model_json_schema()}},
        }
    },
)
def second_factor(request: HttpRequest) -> Status[LoggedInOut] | Status[ErrorOut]:
    try:
        body = _checked_body(request, CodeIn)
    except _Refused as refused:
        return _answer(refused)
    pending = pending_user(request)
    if pending is None:
        return _answer(
            _Refused(
                "login_required",
                _("Donnez d'abord votre adresse et votre phrase secrète (POST /api/auth/login)."),
            )
        )
    user, method = pending
    keys = (throttle.account_key(user.username), throttle.address_key(client_address(request)))
    if throttle.locked(*keys):
        return _answer(_locked())
    code = "".join(body.code.split())
    if _TOTP.fullmatch(code):
        if not factors.check_totp(user, code):
            return _answer(_fail(request, keys, user, "totp"))
        complete_login(request, user, f"{method}+totp")
        used = f"{method}+totp"
    else:
        if not factors.use_recovery_code(user, code):
            return _answer(_fail(request, keys, user, "recovery"))
        complete_login(request, user, f"{method}+recovery")
        do_record_event(
            "accounts.recovery_code_used", actor=user, request=request, target=f"user:{user.pk}"
        )
        used = f"{method}+recovery"
    return Status(
        200, LoggedInOut(username=user.username, method=used, csrf_token=get_token(request))
    )


@router.post(
    "/logout",
    auth=django_auth,
    response={200: LoggedOutOut},
    summary="Déconnexion (la session est révoquée)",
)
def logout_session(request: HttpRequest, response: HttpResponse) -> LoggedOutOut:
    user = request.user
    if isinstance(user, User):
        record = current_record(request)
        if record is not None:
            do_revoke_session(user, record.pk, request)
    logout(request)
    # As the web logout: a vault unlocked in a browser session of this key is forgotten too.
    lock_vault(request, response)
    return LoggedOutOut(logged_out=True)
