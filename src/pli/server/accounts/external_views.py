"""Login pages of the professional card (REQ-AUTH-CARD): OpenID Connect and TLS certificate.

Thin: the checks live in pli.server.accounts.oidc and
pli.server.accounts.certificate_login. A method that is not configured does
not exist (404, no button). Every refusal is audited (``auth.login_failed``
with the factor and a stable reason code) and shown on the login page with a
translated message and that code; a success opens the session through
``complete_login`` like every other login.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET

from pli.server.accounts import oidc, throttle
from pli.server.accounts.certificate_login import (
    CertificateLoginError,
    authenticate_certificate,
    certificate_login_enabled,
    presented_certificate,
)
from pli.server.accounts.errors import AccountError
from pli.server.accounts.forms import LoginForm
from pli.server.accounts.models import User
from pli.server.accounts.sessions import (
    client_address,
    complete_login,
    local_url,
    next_page_after_login,
    remember_next_page,
)
from pli.server.audit.actions import do_record_event

logger = logging.getLogger(__name__)

#: Refusals that say the service, not the user, is at fault.
_UNAVAILABLE = ("oidc_unavailable", "certificate_unavailable")


def external_login_options(request: HttpRequest) -> dict[str, object]:
    """Template context: which card login methods the login page offers."""
    return {
        "pli_login_oidc": oidc.oidc_enabled(),
        "pli_login_oidc_name": settings.PLI_OIDC_PROVIDER_NAME,
        "pli_login_certificate": certificate_login_enabled(),
    }


def _address_keys(request: HttpRequest) -> tuple[str]:
    return (throttle.address_key(client_address(request)),)


def _address_locked(request: HttpRequest) -> AccountError | None:
    """Too many refused card or OpenID Connect logins from this address: wait.

    REQ-AUTH-STRONG: like the passphrase and code steps, but per address only.
    A refused card names no account an attacker could not present, and a
    certificate or an identity provider's answer cannot be guessed: the
    counter is against scanning and flooding, and must not let anybody lock
    somebody else's account.
    """
    if not throttle.locked(*_address_keys(request)):
        return None
    return AccountError(
        "locked",
        _("Trop d'essais : la connexion est bloquée pendant 15 minutes pour cette adresse."),
    )


def _refused(
    request: HttpRequest,
    error: AccountError,
    *,
    factor: str,
    user: User | None,
    fingerprint: str = "",
) -> HttpResponse:
    detail: dict[str, str | int] = {"factor": factor, "reason": error.code}
    if fingerprint:
        detail["certificate"] = fingerprint
    do_record_event(
        "auth.login_failed",
        actor=user,
        request=request,
        target=f"user:{user.pk}" if user else "user:unknown",
        outcome="failure",
        detail=detail,
    )
    if error.code not in (*_UNAVAILABLE, "locked"):
        # The service's own unavailability is not the user's failure.
        throttle.record_failure_audited(request, user, *_address_keys(request))
    status = 503 if error.code in _UNAVAILABLE else 403
    return render(
        request,
        "accounts/login.html",
        {
            "form": LoginForm(),
            "error": {"code": error.code, "message": error.message},
            "ended": "",
            "next": local_url(request, request.POST.get("next") or request.GET.get("next")),
        },
        status=status,
    )


# --- OpenID Connect ------------------------------------------------------------------------------


@require_GET
def oidc_start_view(request: HttpRequest) -> HttpResponse:
    """Off to the identity provider, with state, nonce and PKCE challenge."""
    if not oidc.oidc_enabled():
        raise Http404
    if (locked := _address_locked(request)) is not None:
        return _refused(request, locked, factor="oidc", user=None)
    # Kept in the session until the provider sends the browser back (the callback).
    remember_next_page(request, request.GET.get("next"))
    try:
        return redirect(oidc.begin_authentication(request))
    except oidc.OidcError as error:
        return _refused(request, error, factor="oidc", user=None)


@require_GET
def oidc_callback_view(request: HttpRequest) -> HttpResponse:
    """Back from the identity provider: check its answer, then open the session."""
    if not oidc.oidc_enabled():
        raise Http404
    if (locked := _address_locked(request)) is not None:
        return _refused(request, locked, factor="oidc", user=None)
    try:
        user = oidc.finish_authentication(request)
    except oidc.OidcError as error:
        return _refused(request, error, factor="oidc", user=error.user)
    complete_login(request, user, "oidc")
    return redirect(next_page_after_login(request, user))


# --- TLS client certificate ----------------------------------------------------------------------


def certificate_login_view(request: HttpRequest) -> HttpResponse:
    """The login page's card button posts here; the TLS connection carries the certificate."""
    if not certificate_login_enabled():
        raise Http404
    if request.method != "POST":
        # Logging in changes state: a POST of the login page's form (with its CSRF token).
        return redirect("accounts:login")
    if (locked := _address_locked(request)) is not None:
        return _refused(request, locked, factor="certificate", user=None)
    try:
        presented = presented_certificate(request)
    except CertificateLoginError as error:
        return _refused(request, error, factor="certificate", user=None)
    if presented.spoofed:
        # Somebody other than the configured proxy sent the certificate header: ignored.
        logger.warning(
            "certificate header from %s, which is not in PLI_TRUSTED_PROXIES: ignored",
            request.META.get("REMOTE_ADDR"),
        )
        do_record_event(
            "auth.login_failed",
            request=request,
            target="user:unknown",
            outcome="denied",
            detail={"factor": "certificate", "reason": "untrusted_proxy"},
        )
    try:
        user = authenticate_certificate(presented)
    except CertificateLoginError as error:
        return _refused(
            request, error, factor="certificate", user=error.user, fingerprint=error.fingerprint
        )
    remember_next_page(request, request.POST.get("next"))
    complete_login(request, user, "certificate")
    return redirect(next_page_after_login(request, user))
