"""Account pages: login, second factor, recovery, enrolment, sessions, charter.

Thin: checks live in throttle/factors/sessions, state changes in actions.
Every failure answers with a translated message and a stable code, never a
trace; unknown accounts answer exactly like wrong passphrases.
"""

from __future__ import annotations

import time
from typing import Any

from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.contrib.auth.hashers import check_password
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from pli.server.accounts import factors, throttle
from pli.server.accounts.actions import (
    current_charter,
    do_acknowledge_charter,
    do_activate_enrolment,
    do_finish_enrolment,
    do_record_factor,
    do_request_access,
    do_set_passphrase,
    has_second_factor,
    passphrase_login_refusal,
)
from pli.server.accounts.custody import ensure_vault_key, lock_vault, unlock_vault
from pli.server.accounts.errors import AccountError
from pli.server.accounts.forms import (
    ActivationForm,
    CharterForm,
    CodeForm,
    LoginForm,
    PassphraseForm,
    ReauthForm,
    RecoveryForm,
    RequestAccessForm,
)
from pli.server.accounts.hashers import timing_equaliser_hash
from pli.server.accounts.models import User, UserSession
from pli.server.accounts.session_auth import signed_in_user
from pli.server.accounts.sessions import (
    ENROLLING,
    LOGIN_NEXT,
    begin_second_factor,
    client_address,
    complete_login,
    current_record,
    do_revoke_session,
    local_url,
    mark_reauthenticated,
    next_page_after_login,
    pending_user,
    recently_authenticated,
    remember_next_page,
)
from pli.server.accounts.user_agents import describe_user_agent
from pli.server.audit.actions import do_record_event

#: How long an activated, unfinished enrolment stays open in the browser.
ENROLLING_SECONDS = 1800


def _error(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def _fail(
    request: HttpRequest, keys: tuple[str, ...], user: User | None, factor: str
) -> dict[str, str]:
    """Count a failure on the account and the address; audit it (and any lockout)."""
    do_record_event(
        "auth.login_failed",
        actor=user,
        request=request,
        target=f"user:{user.pk}" if user else "user:unknown",
        outcome="failure",
        detail={"factor": factor},
    )
    throttle.record_failure_audited(request, user, *keys)
    if throttle.locked(*keys):
        return _locked()
    if factor == "passphrase":
        return _error("bad_credentials", _("Adresse ou phrase secrète incorrecte."))
    return _error("bad_code", _("Code incorrect."))


#: The audit detail of each refusal of a right passphrase (passphrase_login_refusal).
_REFUSED_FACTOR = {"account_inactive": "inactive", "no_second_factor": "none"}


def _refused_login(request: HttpRequest, user: User, refusal: AccountError) -> dict[str, str]:
    do_record_event(
        "auth.login_failed",
        actor=user,
        request=request,
        target=f"user:{user.pk}",
        outcome="failure",
        detail={"factor": _REFUSED_FACTOR[refusal.code]},
    )
    return _error(refusal.code, refusal.message)


def _locked() -> dict[str, str]:
    return _error(
        "locked",
        _(
            "Trop d'essais : la connexion est bloquée pendant 15 minutes"
            " pour ce compte et cette adresse."
        ),
    )


# --- login ---------------------------------------------------------------------------------


def login_view(request: HttpRequest) -> HttpResponse:
    form = LoginForm(request.POST or None)
    error: dict[str, str] | None = None
    ended = request.GET.get("ended", "")
    # The page asked for (?next= from login_required), carried by the form's hidden field.
    wanted = local_url(request, request.POST.get("next") or request.GET.get("next"))
    if request.method == "POST" and form.is_valid():
        login = form.cleaned_data["username"].strip().lower()
        keys = (throttle.account_key(login), throttle.address_key(client_address(request)))
        if throttle.locked(*keys):
            error = _locked()
        else:
            user = User.objects.filter(username=login, is_active=True).first()
            if user is not None and user.has_usable_password():
                valid = check_password(form.cleaned_data["passphrase"], user.password)
            else:
                check_password(form.cleaned_data["passphrase"], timing_equaliser_hash())
                valid = False
            if user is None or not valid:
                error = _fail(request, keys, user, "passphrase")
            elif (refusal := passphrase_login_refusal(user)) is not None:
                error = _refused_login(request, user, refusal)
            elif not has_second_factor(user):
                # Enrolment was left half-way: the passphrase proves the activation.
                request.session.cycle_key()
                request.session[ENROLLING] = {"user": user.pk, "at": int(time.time())}
                remember_next_page(request, wanted)
                return redirect("accounts:enrol-totp")
            else:
                begin_second_factor(request, user, "passphrase")
                remember_next_page(request, wanted)
                response = redirect("accounts:second-factor")
                # The passphrase is in hand once: derive the vault key now (one Argon2id
                # run), for the browser's cookie; it opens nothing before the second factor.
                unlock_vault(request, response, user, form.cleaned_data["passphrase"])
                return response
    status = 400 if error or (request.method == "POST" and not form.is_valid()) else 200
    return render(
        request,
        "accounts/login.html",
        {"form": form, "error": error, "ended": ended, "next": wanted},
        status=status,
    )


def second_factor_view(request: HttpRequest) -> HttpResponse:
    pending = pending_user(request)
    if pending is None:
        return redirect("accounts:login")
    user, method = pending
    form = CodeForm(request.POST or None)
    error: dict[str, str] | None = None
    if request.method == "POST" and form.is_valid():
        keys = (throttle.account_key(user.username), throttle.address_key(client_address(request)))
        if throttle.locked(*keys):
            error = _locked()
        elif factors.check_totp(user, form.cleaned_data["code"]):
            complete_login(request, user, f"{method}+totp")
            return redirect(next_page_after_login(request, user))
        else:
            error = _fail(request, keys, user, "totp")
    return render(
        request,
        "accounts/second_factor.html",
        {
            "form": form,
            "error": error,
            "has_totp": factors.has_totp(user),
            "has_webauthn": user.webauthn_credentials.exists(),
        },
        status=400 if error else 200,
    )


def recovery_view(request: HttpRequest) -> HttpResponse:
    pending = pending_user(request)
    if pending is None:
        return redirect("accounts:login")
    user, method = pending
    form = RecoveryForm(request.POST or None)
    error: dict[str, str] | None = None
    if request.method == "POST" and form.is_valid():
        keys = (throttle.account_key(user.username), throttle.address_key(client_address(request)))
        if throttle.locked(*keys):
            error = _locked()
        elif factors.use_recovery_code(user, form.cleaned_data["code"]):
            complete_login(request, user, f"{method}+recovery")
            do_record_event(
                "accounts.recovery_code_used", actor=user, request=request, target=f"user:{user.pk}"
            )
            # Not the page asked for: whoever needs a recovery code has probably lost the
            # authenticator, and the factors page is where to replace it.
            request.session.pop(LOGIN_NEXT, None)
            return redirect("accounts:factors")
        else:
            error = _fail(request, keys, user, "recovery")
    return render(
        request,
        "accounts/recovery.html",
        {"form": form, "error": error},
        status=400 if error else 200,
    )


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    user = request.user
    if isinstance(user, User):
        record = current_record(request)
        if record is not None:
            do_revoke_session(user, record.pk, request)
    logout(request)
    response = redirect("accounts:login")
    lock_vault(request, response)
    return response


# --- enrolment -----------------------------------------------------------------------------


def request_access_view(request: HttpRequest) -> HttpResponse:
    form = RequestAccessForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        keys = (throttle.address_key(client_address(request)),)
        if not throttle.locked(*keys):
            # Counted like a failure: it bounds how many codes one address can make us send.
            throttle.record_failure(*keys)
            do_request_access(form.cleaned_data["address"], request)
        # The same answer whatever the address (no enumeration of the directory's accounts).
        return redirect(reverse("accounts:activate") + "?sent=1")
    return render(request, "accounts/request_access.html", {"form": form})


def activate_view(request: HttpRequest) -> HttpResponse:
    form = ActivationForm(request.POST or None)
    error: dict[str, str] | None = None
    if request.method == "POST" and form.is_valid():
        try:
            user = do_activate_enrolment(
                form.cleaned_data["address"], form.cleaned_data["code"], request
            )
        except AccountError as failure:
            error = _error(failure.code, failure.message)
        else:
            request.session.cycle_key()
            request.session[ENROLLING] = {"user": user.pk, "at": int(time.time())}
            return redirect("accounts:enrol-passphrase")
    return render(
        request,
        "accounts/activate.html",
        {"form": form, "error": error, "sent": request.GET.get("sent") == "1"},
        status=400 if error else 200,
    )


def _enrolling(request: HttpRequest) -> User | None:
    state = request.session.get(ENROLLING)
    if not isinstance(state, dict) or time.time() - state.get("at", 0) > ENROLLING_SECONDS:
        return None
    return User.objects.filter(pk=int(state.get("user") or 0), is_active=True).first()


def _enrol_step(request: HttpRequest, step: str) -> tuple[User | None, HttpResponse | None]:
    user = _enrolling(request)
    if user is None or user.enrolled_at is not None:
        # Once enrolled, factors change from the factors page, after re-authentication.
        return None, redirect("accounts:activate")
    return user, None


def enrol_passphrase_view(request: HttpRequest) -> HttpResponse:
    user, leave = _enrol_step(request, "passphrase")
    if user is None:
        return leave or redirect("accounts:activate")
    form = PassphraseForm(request.POST or None)
    error: dict[str, str] | None = None
    if request.method == "POST" and form.is_valid():
        try:
            do_set_passphrase(user, form.cleaned_data["passphrase"], request)
            # Vault custody: the mailbox key pair, certified and sealed under this passphrase.
            ensure_vault_key(user, form.cleaned_data["passphrase"], request)
        except AccountError as failure:
            error = _error(failure.code, failure.message)
        else:
            return redirect("accounts:enrol-totp")
    return render(
        request,
        "accounts/enrol_passphrase.html",
        {"form": form, "error": error, "step": 1},
        status=400 if error or (request.method == "POST" and not form.is_valid()) else 200,
    )


#: Session key of the TOTP seed shown, until a code confirms it (sealed: factors.py).
PENDING_TOTP = "pli_totp_pending"


def _totp_page(
    request: HttpRequest, user: User, template: str, done: str, extra: dict[str, Any]
) -> HttpResponse:
    form = CodeForm(request.POST or None)
    error: dict[str, str] | None = None
    # The seed shown waits in the session (sealed) until a code confirms it: only then
    # does it replace the authenticator in use, which keeps working meanwhile. Opening
    # this page changes nothing else (a link cannot strip an account of its factor).
    pending = factors.open_totp_seed(user, request.session.get(PENDING_TOTP))
    if request.method == "POST" and form.is_valid():
        keys = (throttle.account_key(user.username), throttle.address_key(client_address(request)))
        if throttle.locked(*keys):
            error = _locked()
        elif pending is not None and factors.confirm_totp(user, pending, form.cleaned_data["code"]):
            request.session.pop(PENDING_TOTP, None)
            do_record_factor(user, "totp", True, request)
            return redirect(done)
        else:
            error = _fail(request, keys, user, "totp")
    if request.method == "POST" and pending is not None:
        secret = pending  # the seed being confirmed, shown again
    else:
        secret = factors.new_totp_seed()  # each visit a new one, the last one forgotten
        request.session[PENDING_TOTP] = factors.seal_totp_seed(user, secret)
    uri = factors.provisioning_uri(user, secret)
    return render(
        request,
        template,
        {
            "form": form,
            "error": error,
            "secret": secret,
            "qr": factors.qr_svg(uri),
            **extra,
        },
        status=400 if error else 200,
    )


def enrol_totp_view(request: HttpRequest) -> HttpResponse:
    user, leave = _enrol_step(request, "totp")
    if user is None:
        return leave or redirect("accounts:activate")
    if not user.has_usable_password():
        return redirect("accounts:enrol-passphrase")
    return _totp_page(
        request, user, "accounts/enrol_totp.html", reverse("accounts:enrol-recovery"), {"step": 2}
    )


def enrol_recovery_view(request: HttpRequest) -> HttpResponse:
    user, leave = _enrol_step(request, "recovery")
    if user is None:
        return leave or redirect("accounts:activate")
    if not has_second_factor(user):
        return redirect("accounts:enrol-totp")
    if request.method == "POST":
        return redirect("accounts:enrol-charter")
    codes = factors.new_recovery_codes(user)
    return render(request, "accounts/enrol_recovery.html", {"codes": codes, "step": 3})


def enrol_charter_view(request: HttpRequest) -> HttpResponse:
    user, leave = _enrol_step(request, "charter")
    if user is None:
        return leave or redirect("accounts:activate")
    return _charter_page(request, user, enrolling=True)


def _charter_page(request: HttpRequest, user: User, *, enrolling: bool) -> HttpResponse:
    charter = current_charter()
    form = CharterForm(request.POST or None, initial={"version": charter.version if charter else 0})
    error: dict[str, str] | None = None
    if request.method == "POST" and form.is_valid():
        try:
            do_acknowledge_charter(user, form.cleaned_data["version"], request)
            if enrolling:
                do_finish_enrolment(user, request)
                complete_login(request, user, "enrolment")
        except AccountError as failure:
            error = _error(failure.code, failure.message)
        else:
            return redirect(next_page_after_login(request, user))
    lang = getattr(request, "LANGUAGE_CODE", "fr")
    text = ""
    if charter is not None:
        text = charter.text_en if lang == "en" and charter.text_en else charter.text_fr
    return render(
        request,
        "accounts/charter.html",
        {
            "form": form,
            "error": error,
            "charter": charter,
            "text": text,
            "step": 4 if enrolling else None,
        },
        status=400 if error else 200,
    )


# --- the signed-in user's pages --------------------------------------------------------------


@login_required
def charter_view(request: HttpRequest) -> HttpResponse:
    return _charter_page(request, signed_in_user(request), enrolling=False)


@login_required
def sessions_view(request: HttpRequest) -> HttpResponse:
    user = signed_in_user(request)
    current = current_record(request)
    if request.method == "POST":
        try:
            session_id = int(request.POST.get("session", ""))
        except ValueError:
            session_id = 0
        revoked = do_revoke_session(user, session_id, request)
        if revoked and current is not None and current.pk == session_id:
            logout(request)
            return redirect("accounts:login")
        if not revoked:
            return render(
                request,
                "accounts/sessions.html",
                _sessions_context(user, current, _error("not_found", _("Session introuvable."))),
                status=404,
            )
        return redirect("accounts:sessions")
    return render(request, "accounts/sessions.html", _sessions_context(user, current, None))


def _sessions_context(
    user: User, current: UserSession | None, error: dict[str, str] | None
) -> dict[str, Any]:
    sessions = UserSession.objects.filter(user=user, revoked_at__isnull=True).order_by(
        "-last_seen_at"
    )
    rows = [(session, device_label(session.user_agent)) for session in sessions]
    return {"rows": rows, "current": current.pk if current else None, "error": error}


def device_label(user_agent: str) -> str:
    """What a person recognises of a session's User-Agent string: "Chrome sur Linux"."""
    device = describe_user_agent(user_agent)
    if device.browser and device.system:
        return _("%(browser)s sur %(system)s") % device._asdict()
    if device.browser:
        return device.browser
    if device.system:
        return _("Navigateur inconnu sur %(system)s") % {"system": device.system}
    return _("Navigateur inconnu")


@login_required
def reauth_view(request: HttpRequest) -> HttpResponse:
    """Sensitive actions ask for the passphrase again (re-authentication)."""
    user = signed_in_user(request)
    form = ReauthForm(request.POST or None)
    error: dict[str, str] | None = None
    if request.method == "POST" and form.is_valid():
        keys = (throttle.account_key(user.username), throttle.address_key(client_address(request)))
        if throttle.locked(*keys):
            error = _locked()
        elif check_password(form.cleaned_data["passphrase"], user.password):
            mark_reauthenticated(request)
            wanted = request.GET.get("next", "")
            # Only back to an account page: never an open redirect.
            return redirect(
                wanted
                if wanted.startswith("/compte/") and "//" not in wanted
                else reverse("accounts:factors")
            )
        else:
            error = _fail(request, keys, user, "passphrase")
    return render(
        request,
        "accounts/reauth.html",
        {"form": form, "error": error},
        status=400 if error else 200,
    )


def _needs_reauth(request: HttpRequest) -> HttpResponse | None:
    if recently_authenticated(request):
        return None
    return HttpResponseRedirect(reverse("accounts:reauth") + "?next=" + request.path)


@login_required
def factors_view(request: HttpRequest) -> HttpResponse:
    user = signed_in_user(request)
    return render(
        request,
        "accounts/factors.html",
        {
            "has_totp": factors.has_totp(user),
            "credentials": user.webauthn_credentials.order_by("created_at"),
            "recovery_left": factors.remaining_recovery_codes(user),
        },
    )


@login_required
def recovery_codes_view(request: HttpRequest) -> HttpResponse:
    leave = _needs_reauth(request)
    if leave is not None:
        return leave
    user = signed_in_user(request)
    if request.method != "POST":
        return redirect("accounts:factors")
    codes = factors.new_recovery_codes(user)
    do_record_factor(user, "recovery_codes", True, request)
    return render(request, "accounts/enrol_recovery.html", {"codes": codes, "step": None})


@login_required
def totp_change_view(request: HttpRequest) -> HttpResponse:
    """Replace the authenticator application (a new seed, confirmed by a code)."""
    leave = _needs_reauth(request)
    if leave is not None:
        return leave
    return _totp_page(
        request,
        signed_in_user(request),
        "accounts/enrol_totp.html",
        reverse("accounts:factors"),
        {"step": None},
    )


@login_required
@require_POST
def totp_remove_view(request: HttpRequest) -> HttpResponse:
    leave = _needs_reauth(request)
    if leave is not None:
        return leave
    user = signed_in_user(request)
    if not user.webauthn_credentials.exists():
        return render(
            request,
            "accounts/factors.html",
            {
                "error": _error("last_factor", _("Gardez au moins un second facteur.")),
                "has_totp": factors.has_totp(user),
                "credentials": user.webauthn_credentials.all(),
                "recovery_left": factors.remaining_recovery_codes(user),
            },
            status=400,
        )
    user.totp.delete()
    do_record_factor(user, "totp", False, request)
    return redirect("accounts:factors")
